import Dispatch
import Foundation
import Synchronization
import ZNBDSystem
import Testing
import ZNBDFigures
import TestSupport
@testable import ZSPool

@Suite("ZSPool under concurrency and memory return", .serialized)
struct PoolConcurrencyTests {
    /// Seconds the stress test runs; ZNBD_STRESS_SECONDS overrides (sanitizer
    /// runs may want less, soak runs more).
    static var stressSeconds: Double {
        ProcessInfo.processInfo.environment["ZNBD_STRESS_SECONDS"].flatMap(Double.init) ?? 10
    }

    @Test("2 workers allocate/write/verify/free while a third compacts and migrates frames")
    func workersWithMaintenance() throws {
        let pool = try ZSPool(.init(capacityBytes: 512 << 20, maxChain: 4))
        let deadline = Date().addingTimeInterval(Self.stressSeconds)
        let failures = Locked<[String]>([])
        let operations = Locked([0, 0])
        let maintenance = Locked((compactions: 0, framesFreed: 0, framesMigrated: 0, skipped: 0))
        let survivors = Locked<[(ZSHandle, Int, UInt64)]>([])
        let (_, baseSeed) = SeededRandom.fromEnvironment(5)
        print("workersWithMaintenance seed \(baseSeed)")

        runOnThreads(3) { role in
            if role == 2 {
                while Date() < deadline {
                    let compaction = pool.compact()
                    let migration = pool.migrateFrames()
                    maintenance.withLock {
                        $0.compactions += 1
                        $0.framesFreed += compaction.framesFreed
                        $0.framesMigrated += migration.framesMigrated
                        $0.skipped += compaction.objectsSkipped + migration.framesSkipped
                    }
                }
                return
            }
            var random = SeededRandom(seed: baseSeed &+ UInt64(role))
            var live: [(ZSHandle, Int, UInt64)] = []
            var count = 0
            func fail(_ message: String) { failures.withLock { $0.append("worker \(role): \(message)") } }
            while Date() < deadline {
                for _ in 0..<1_000 {
                    count += 1
                    let roll = Int.random(in: 0..<100, using: &random)
                    // Keep about 20,000 objects per worker, churning.
                    let wantMore = live.count < 20_000
                    if live.isEmpty || roll < (wantMore ? 60 : 30) {
                        let size = compressedPageLikeSize(&random)
                        do {
                            let handle = try pool.allocate(size: size)
                            let seed = random.next()
                            try pool.write(handle, size: size, seed: seed)
                            live.append((handle, size, seed))
                        } catch {
                            fail("allocate/write: \(error)")
                        }
                    } else {
                        let position = Int.random(in: 0..<live.count, using: &random)
                        let (handle, size, seed) = live[position]
                        do {
                            if try !pool.holds(handle, size: size, seed: seed) { fail("\(handle) corrupt") }
                        } catch {
                            fail("read: \(error)")
                        }
                        if roll < 80 {
                            live.swapAt(position, live.count - 1)
                            live.removeLast()
                            if !pool.free(handle) { fail("free \(handle) refused") }
                        }
                    }
                }
            }
            operations.withLock { $0[role] = count }
            survivors.withLock { $0.append(contentsOf: live) }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(5) })")
        let kept = survivors.withLock { $0 }
        let seeds = Dictionary(uniqueKeysWithValues: kept.map { ($0.0, ($0.1, $0.2)) })
        try pool.validate { handle, bytes in
            guard let (size, seed) = seeds[handle] else { return false }
            return matchesPattern(UnsafeRawBufferPointer(rebasing: bytes[..<size]), seed: seed)
        }
        for (handle, size, seed) in kept { #expect(try pool.holds(handle, size: size, seed: seed)) }
        let work = maintenance.withLock { $0 }
        print("workersWithMaintenance: operations \(operations.withLock { $0 }), maintenance \(work)")
        #expect(work.compactions > 0)
        #expect(work.framesFreed + work.framesMigrated > 0, "maintenance never moved anything")
    }

    @Test("after freeing half of 256 MiB, compaction and migration give the memory back")
    func memoryReallyReturned() throws {
        let pool = try ZSPool(.init(capacityBytes: 384 << 20, maxChain: 4))
        var random = SeededRandom(seed: 7)
        var objects: [(handle: ZSHandle, size: Int, seed: UInt64)] = []
        var stored = 0
        while stored < 256 << 20 {
            let size = compressedPageLikeSize(&random)
            let handle = try pool.allocate(size: size)
            let seed = random.next()
            try pool.write(handle, size: size, seed: seed)
            objects.append((handle, size, seed))
            stored += size
        }
        objects.shuffle(using: &random)
        let freed = objects.count / 2
        for object in objects[..<freed] { #expect(pool.free(object.handle)) }
        let kept = objects[freed...]
        let liveBytes = kept.reduce(0) { $0 + $1.size }

        let before = pool.figures()
        let residentBefore = residentBytes()
        let compaction = pool.compact()
        let migration = pool.migrateFrames()
        let after = pool.figures()
        let residentAfter = residentBytes()

        // Slack: one partly filled zspage per class.
        let slack = pool.sizeClasses.classes.reduce(0) { $0 + $1.framesPerZspage * ZSPool.frameSize }
        print(
            "memoryReallyReturned: live \(liveBytes >> 20) MiB, used \(before[.bytesUsed] >> 20) → \(after[.bytesUsed] >> 20) MiB, blocks resident \(before[.blocksResident]) → \(after[.blocksResident]), RSS \(residentBefore >> 20) → \(residentAfter >> 20) MiB, \(compaction), \(migration)"
        )
        #expect(Double(after[.bytesUsed]) <= Double(liveBytes) * 1.10 + Double(slack))
        let releasedBytes = (before[.blocksResident] - after[.blocksResident]) * ZSPool.blockSize
        #expect(releasedBytes >= 96 << 20, "expected most of the freed half back as whole blocks")
        #expect(Double(residentBefore - residentAfter) >= 0.8 * Double(releasedBytes))
        let seeds = Dictionary(uniqueKeysWithValues: kept.map { ($0.handle, ($0.size, $0.seed)) })
        try pool.validate { handle, bytes in
            guard let (size, seed) = seeds[handle] else { return false }
            return matchesPattern(UnsafeRawBufferPointer(rebasing: bytes[..<size]), seed: seed)
        }
    }
}
