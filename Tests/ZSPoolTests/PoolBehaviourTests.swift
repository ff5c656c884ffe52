import Testing
import ZNBDFigures
import TestSupport
@testable import ZSPool

@Suite("ZSPool behaviour")
struct PoolBehaviourTests {
    @Test("objects spanning two frames read back whole, for every class")
    func spanningObjects() throws {
        let pool = try ZSPool(.init(capacityBytes: 64 << 20, maxChain: 4))
        var objects: [(ZSHandle, Int, UInt64)] = []
        for spec in pool.sizeClasses.classes {
            // A whole zspage of each class, so every slot, spanning or not, is used.
            for number in 0..<spec.objectsPerZspage {
                let handle = try pool.allocate(size: spec.size)
                let seed = UInt64(spec.size * 10_000 + number)
                try pool.write(handle, size: spec.size, seed: seed)
                objects.append((handle, spec.size, seed))
            }
        }
        for (handle, size, seed) in objects { #expect(try pool.holds(handle, size: size, seed: seed)) }
        try pool.validate()
        for (handle, _, _) in objects { #expect(pool.free(handle)) }
        #expect(pool.figures()[.framesUsed] == 0)
    }

    @Test("bad, double and stale frees are detected and counted, never corrupt")
    func invalidFrees() throws {
        let pool = try ZSPool(.init(capacityBytes: 8 << 20, trapOnInvalidFree: false))
        let first = try pool.allocate(size: 1000)
        try pool.write(first, size: 1000, seed: 1)
        #expect(pool.free(first))
        #expect(!pool.free(first), "double free")
        // The id is reused with a new generation: the old handle stays dead.
        let second = try pool.allocate(size: 1000)
        try pool.write(second, size: 1000, seed: 2)
        #expect(!pool.free(first), "stale handle after reuse")
        #expect(!pool.free(ZSHandle(rawValue: 0)))
        #expect(!pool.free(ZSHandle(rawValue: 0xFFFF_FFFF_FFFF)))
        #expect(try pool.holds(second, size: 1000, seed: 2))
        #expect(pool.figures()[.invalidFrees] == 4)
        #expect(throws: ZSPoolError.invalidHandle(first)) { try pool.holds(first, size: 10, seed: 0) }
        #expect(throws: ZSPoolError.invalidSize(0)) { try pool.allocate(size: 0) }
        #expect(throws: ZSPoolError.invalidSize(4097)) { try pool.allocate(size: 4097) }
        #expect(throws: ZSPoolError.self) { try pool.holds(second, size: 4096, seed: 0) }
        try pool.validate()
    }

    @Test("the memory limit stops allocation with a clear error, and can be raised at run time")
    func memLimit() throws {
        let pool = try ZSPool(.init(capacityBytes: 64 << 20, memLimitBytes: 1 << 20))
        var handles: [ZSHandle] = []
        var error: ZSPoolError?
        do {
            while true {
                let handle = try pool.allocate(size: 2000)
                try pool.write(handle, size: 2000, seed: UInt64(handles.count))
                handles.append(handle)
            }
        } catch let caught as ZSPoolError {
            error = caught
        }
        #expect(error == .memLimitReached(limitBytes: 1 << 20))
        #expect(pool.usedBytes <= 1 << 20)
        for (number, handle) in handles.enumerated() {
            #expect(try pool.holds(handle, size: 2000, seed: UInt64(number)))
        }
        pool.memLimitBytes = 2 << 20
        _ = try pool.allocate(size: 2000)
        pool.memLimitBytes = nil
        try pool.validate()
    }

    @Test("a full arena is an error; freeing makes room again")
    func arenaFull() throws {
        let pool = try ZSPool(.init(capacityBytes: 2 << 20))
        var handles: [ZSHandle] = []
        #expect(throws: ZSPoolError.arenaFull(capacityBytes: 2 << 20)) {
            while true { handles.append(try pool.allocate(size: 4096)) }
        }
        #expect(handles.count == 512)
        #expect(pool.free(handles.removeLast()))
        handles.append(try pool.allocate(size: 4096))
        try pool.validate()
    }

    @Test("migrating a frame keeps every object and the stored first-object offsets")
    func frameMigration() throws {
        let pool = try ZSPool(.init(capacityBytes: 16 << 20, maxChain: 4))
        // Class 48 has 3-frame... whatever shape: fill two zspages of it.
        let spec = pool.sizeClasses.classes[pool.sizeClasses.classIndex(forSize: 48)]
        var objects: [ZSHandle] = []
        for number in 0..<(2 * spec.objectsPerZspage) {
            let handle = try pool.allocate(size: 48)
            try pool.write(handle, size: 48, seed: UInt64(number))
            objects.append(handle)
        }
        // Fill the first block so the next frames land in the second block.
        var fillers: [ZSHandle] = []
        while pool.arena.residentBlockUsage().blocks.count < 2 { fillers.append(try pool.allocate(size: 4096)) }
        let frames = pool.arena.usedFrames(inBlock: 0).prefix(2 * spec.framesPerZspage)
        for frame in frames {
            let owner = try #require(pool.arena.owner(of: frame))
            let outcome = pool.migrate(frame: frame, toBlock: 1)
            guard case .migrated(let target) = outcome else {
                Issue.record("frame \(frame): \(outcome)")
                continue
            }
            #expect(pool.arena.owner(of: target) == owner)
            #expect(pool.arena.owner(of: frame) == nil)
            #expect(Int(owner.firstObjectOffset) == spec.firstObjectOffsets[Int(owner.index)])
        }
        #expect(pool.migrate(frame: frames.first!, toBlock: 1) == .notInUse)
        try pool.validate()
        for (number, handle) in objects.enumerated() { #expect(try pool.holds(handle, size: 48, seed: UInt64(number))) }
    }

    @Test("a reader's pin makes compaction leave the object and migration report busy")
    func busyObjectsAreSkipped() throws {
        let pool = try ZSPool(.init(capacityBytes: 16 << 20))
        var handles: [ZSHandle] = []
        for number in 0..<64 {
            let handle = try pool.allocate(size: 1000)
            try pool.write(handle, size: 1000, seed: UInt64(number))
            handles.append(handle)
        }
        // Leave two objects, in two different zspages, each otherwise empty.
        let survivor = handles[0]
        let other = try #require(
            handles.last {
                pool.handles.peek(id: $0.id)!.location.zspage != pool.handles.peek(id: survivor.id)!.location.zspage
            })
        for handle in handles where handle != survivor && handle != other { #expect(pool.free(handle)) }
        let before = try #require(pool.handles.peek(id: survivor.id)).location
        var compaction = CompactionResult()
        var migration = FrameMigrationOutcome.notInUse
        _ = try pool.withObjectBytes(survivor, count: 1000) { _ in
            // Pinned and read-locked by this reader: compaction may move the
            // other object to it but never it; its frame cannot migrate.
            compaction = pool.compact()
            let size = pool.sizeClasses.classes[pool.sizeClasses.classIndex(forSize: 1000)].size
            let frame = pool.zspages.record(before.zspage).frames[before.index * size / ZSPool.frameSize]
            migration = pool.migrate(frame: frame, toBlock: 1)
        }
        #expect(pool.handles.peek(id: survivor.id)?.location == before, "a pinned object moved")
        #expect(compaction.objectsMoved == 1, "the unpinned object joins the pinned one's zspage")
        #expect(pool.handles.peek(id: other.id)?.location.zspage == before.zspage)
        #expect(migration == .busy)
        #expect(try pool.holds(survivor, size: 1000, seed: 0))
        #expect(try pool.holds(other, size: 1000, seed: UInt64(handles.firstIndex(of: other)!)))
        try pool.validate()
    }
}
