import Testing
import ZNBDFigures
import TestSupport
@testable import ZSPool

/// What the model says one live object holds.
private struct ModelObject {
    var size: Int
    var seed: UInt64
}

@Suite("ZSPool against a reference model")
struct PoolModelTests {
    @Test("1,000,000 random operations with compaction and migration, validated after every phase")
    func modelBased() throws {
        var (random, seed) = SeededRandom.fromEnvironment(3)
        print("modelBased seed \(seed)")
        let pool = try ZSPool(.init(capacityBytes: 256 << 20, maxChain: 4))
        var model: [ZSHandle: ModelObject] = [:]
        var live: [ZSHandle] = []
        let phases = 20
        let operationsPerPhase = 50_000
        var counts = [String: Int]()
        for phase in 0..<phases {
            // Alternate growing and shrinking phases so that compaction and
            // migration always have holes to work on: (allocate, free) weights
            // of (45, 25) then (20, 50), the rest rewrites and reads.
            let growing = phase % 4 < 2
            let allocateWeight = growing ? 45 : 20
            let freeWeight = growing ? 25 : 50
            for _ in 0..<operationsPerPhase {
                let roll = Int.random(in: 0..<100, using: &random)
                if roll < allocateWeight || live.isEmpty {
                    let size = compressedPageLikeSize(&random)
                    let handle = try pool.allocate(size: size)
                    #expect(model[handle] == nil, "a live handle was handed out twice")
                    let objectSeed = random.next()
                    try pool.write(handle, size: size, seed: objectSeed)
                    model[handle] = ModelObject(size: size, seed: objectSeed)
                    live.append(handle)
                    counts["allocate", default: 0] += 1
                } else if roll < allocateWeight + freeWeight {
                    let position = Int.random(in: 0..<live.count, using: &random)
                    let handle = live[position]
                    live.swapAt(position, live.count - 1)
                    live.removeLast()
                    let object = model.removeValue(forKey: handle)!
                    #expect(try pool.holds(handle, size: object.size, seed: object.seed))
                    #expect(pool.free(handle))
                    counts["free", default: 0] += 1
                } else if roll < allocateWeight + freeWeight + 10 {
                    // Rewrite an object in place, in part or whole.
                    let handle = live[Int.random(in: 0..<live.count, using: &random)]
                    let object = model[handle]!
                    let newSeed = random.next()
                    try pool.write(handle, size: object.size, seed: newSeed)
                    model[handle]!.seed = newSeed
                    counts["write", default: 0] += 1
                } else {
                    let handle = live[Int.random(in: 0..<live.count, using: &random)]
                    let object = model[handle]!
                    #expect(try pool.holds(handle, size: object.size, seed: object.seed))
                    counts["read", default: 0] += 1
                }
                if counts["allocate", default: 0] % 20_000 == 19_999 {
                    pool.compact()
                    counts["compact", default: 0] += 1
                }
            }
            switch phase % 3 {
            case 0: pool.compact()
            case 1: pool.migrateFrames()
            default:
                pool.compact()
                pool.migrateFrames()
            }
            try pool.validate { handle, bytes in
                guard let object = model[handle] else { return false }
                return matchesPattern(UnsafeRawBufferPointer(rebasing: bytes[..<object.size]), seed: object.seed)
            }
            #expect(pool.figures()[.liveObjects] == live.count)
        }
        let total = counts.filter { ["allocate", "free", "write", "read"].contains($0.key) }.values.reduce(0, +)
        #expect(total == phases * operationsPerPhase)
        #expect(total >= 1_000_000)
        let stats = pool.figures()
        #expect(stats[.pagesCompacted] > 0, "compaction never freed a frame: the test did not exercise it")
        #expect(stats[.framesMigrated] > 0, "no frame ever migrated: the test did not exercise it")
        for handle in live { #expect(pool.free(handle)) }
        try pool.validate()
        #expect(pool.figures()[.framesUsed] == 0)
        print("modelBased: \(counts), compacted \(stats[.pagesCompacted]) frames, migrated \(stats[.framesMigrated])")
    }
}
