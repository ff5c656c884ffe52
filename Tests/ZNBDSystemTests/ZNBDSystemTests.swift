import Foundation
import Synchronization
import Testing
import TestSupport
import ZNBDSystem

#if canImport(Glibc)
    import Glibc
#endif

@Suite("ZNBDSystem: mappings, spin locks and the lock order")
struct ZNBDSystemTests {
    /// RLIMIT_MEMLOCK's soft limit in bytes (Int.max when unlimited).
    static var memoryLockLimit: Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0 else { return 0 }
        return Int(clamping: limit.rlim_cur)  // RLIM_INFINITY is all ones: Int.max
    }

    @Test("an anonymous mapping is aligned, reads zero, and reads zero again after discard")
    func anonymousMapping() throws {
        let mapping = try AnonymousMapping(byteCount: 3 * pageSize + 1, alignment: 2 << 20)
        #expect(Int(bitPattern: mapping.base) % (2 << 20) == 0)
        #expect(mapping.byteCount == 4 * pageSize)
        let bytes = UnsafeMutableRawBufferPointer(start: mapping.base, count: mapping.byteCount)
        #expect(bytes.allSatisfy { $0 == 0 })
        bytes.initializeMemory(as: UInt8.self, repeating: 0xA5)
        mapping.discard(offset: pageSize, count: 2 * pageSize)
        #expect(bytes[..<pageSize].allSatisfy { $0 == 0xA5 })
        #expect(bytes[pageSize..<(3 * pageSize)].allSatisfy { $0 == 0 })
        #expect(bytes[(3 * pageSize)...].allSatisfy { $0 == 0xA5 })
    }

    // The sanitizers' runtime replaces mlock with a no-op that returns 0.
    @Test(
        "discard gives locked pages back too (the daemon runs under mlockall)",
        .enabled(
            if: getenv("ZNBD_SANITIZER") == nil, "under a sanitizer mlock locks nothing: no locked page to discard"),
        .enabled(
            if: ZNBDSystemTests.memoryLockLimit >= 16 * pageSize,
            "RLIMIT_MEMLOCK is \(ZNBDSystemTests.memoryLockLimit) bytes here, under the 16 pages this test locks"))
    func discardOfLockedPages() throws {
        let pages = 16
        let mapping = try AnonymousMapping(byteCount: pages * pageSize)
        try #require(mlock(mapping.base, mapping.byteCount) == 0, "mlock of \(pages) pages: errno \(errno)")
        defer { munlock(mapping.base, mapping.byteCount) }
        let bytes = UnsafeMutableRawBufferPointer(start: mapping.base, count: mapping.byteCount)
        bytes.initializeMemory(as: UInt8.self, repeating: 0x5A)
        // What makes this case: the kernel refuses MADV_DONTNEED on locked pages.
        #expect(madvise(mapping.base, pageSize, MADV_DONTNEED) == -1 && errno == EINVAL)

        mapping.discard(offset: 4 * pageSize, count: 8 * pageSize)
        var resident = [UInt8](repeating: 0, count: pages)
        #expect(mincore(mapping.base, mapping.byteCount, &resident) == 0)
        let residentPages = resident.map { $0 & 1 }
        #expect(residentPages == [1, 1, 1, 1] + Array(repeating: 0, count: 8) + [1, 1, 1, 1])
        #expect(bytes[..<(4 * pageSize)].allSatisfy { $0 == 0x5A })
        #expect(bytes[(4 * pageSize)..<(12 * pageSize)].allSatisfy { $0 == 0 })
        #expect(bytes[(12 * pageSize)...].allSatisfy { $0 == 0x5A })
    }

    @Test("a bit spin lock keeps the word's other bits, refuses what `admit` refuses, and excludes")
    func bitSpinLock() {
        let word = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 1)
        word.initialize(to: Atomic(0x1234))
        defer { word.deallocate() }
        let lock = BitSpinLock(word: word, bit: 1 << 63, level: .unchecked)
        #expect(lock.lock() == 0x1234)
        #expect(lock.tryLock() == nil, "held")
        lock.unlock(storing: 0x99)
        #expect(word.pointee.load(ordering: .relaxed) == 0x99)
        #expect(lock.lock(admitting: { $0 != 0x99 }) == nil, "refused, nothing taken")
        #expect(lock.tryLock() == 0x99)
        lock.unlock()

        // Two threads add under the lock, through the word's data bits.
        runOnThreads(2) { _ in
            for _ in 0..<100_000 {
                let value = lock.lock()
                lock.unlock(storing: value + 1)
            }
        }
        #expect(word.pointee.load(ordering: .relaxed) == 0x99 + 200_000)
    }

    @Test("a reader/writer spin lock: readers share, the writer only tries")
    func readerWriterSpinLock() {
        let word = UnsafeMutablePointer<Atomic<Int32>>.allocate(capacity: 1)
        word.initialize(to: Atomic(0))
        defer { word.deallocate() }
        let lock = ReaderWriterSpinLock(word: word, level: .unchecked)
        lock.lockShared()
        lock.lockShared()
        #expect(!lock.tryLockExclusive())
        lock.unlockShared()
        lock.unlockShared()
        #expect(lock.tryLockExclusive())
        #expect(!lock.tryLockExclusive())
        lock.unlockExclusive()
        #expect(word.pointee.load(ordering: .relaxed) == 0)
    }

    @Test("the lock order allows waits downwards, tries anywhere, and ranked nesting")
    func lockOrderAllows() {
        let slot = Locked(0, level: .slot)
        let sizeClass = Locked(0, level: .sizeClass)
        let arena = Locked(0, level: .arena)
        let first = Locked(0, level: .sizeClass, rank: 1)
        let second = Locked(0, level: .sizeClass, rank: 2)
        slot.withLock { _ in sizeClass.withLock { _ in arena.withLock { _ in } } }
        first.withLock(ordered: true) { _ in second.withLock(ordered: true) { _ in } }
        // A try of a lower level never waits, so it is allowed.
        let word = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 1)
        word.initialize(to: Atomic(0))
        defer { word.deallocate() }
        let pin = BitSpinLock(word: word, bit: 1, level: .pin)
        arena.withLock { _ in
            #expect(pin.tryLock() != nil)
            #expect(LockOrder.heldCount == (LockOrder.isChecking ? 2 : 0))
            pin.unlock()
        }
        #expect(LockOrder.heldCount == 0)
    }

    @Test("waiting for a lock above one held traps in checked builds", .enabled(if: LockOrder.isChecking))
    func lockOrderTraps() async {
        await #expect(processExitsWith: .failure) {
            let sizeClass = Locked(0, level: .sizeClass)
            let slot = Locked(0, level: .slot)
            sizeClass.withLock { _ in slot.withLock { _ in } }
        }
        await #expect(processExitsWith: .failure) {
            let first = Locked(0, level: .sizeClass, rank: 1)
            let second = Locked(0, level: .sizeClass, rank: 2)
            first.withLock { _ in second.withLock { _ in } }  // same level, not ordered
        }
        await #expect(processExitsWith: .failure) {
            let word = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 1)
            word.initialize(to: Atomic(0))
            BitSpinLock(word: word, bit: 1, level: .pin).unlock()  // never taken
        }
    }
}

@Suite("ZNBDSystem: worker threads")
struct WorkerThreadsTests {
    @Test("every job runs once, one worker runs them in order, and shutdown runs what is queued")
    func everyJobOnce() async {
        // Locked, not Synchronization's Mutex: ThreadSanitizer sees pthread
        // mutexes, not Mutex's futex (Locked.swift says more).
        let ran = Locked<[Int]>([])
        let single = WorkerThreads<Int>(count: 1, name: "test-worker") { job in ran.withLock { $0.append(job) } }
        // Batches and single jobs, more than the ring's first size.
        single.submit(contentsOf: 0..<100)
        for job in 100..<150 { single.submit(job) }
        single.submit(contentsOf: [Int]())
        await single.shutdown()
        #expect(ran.withLock { $0 } == Array(0..<150))

        let counts = Locked<[Int]>([Int](repeating: 0, count: 20_000))
        let pool = WorkerThreads<Int>(count: 3, name: "test-worker") { job in counts.withLock { $0[job] += 1 } }
        await withTaskGroup(of: Void.self) { group in
            for part in 0..<4 {
                group.addTask {
                    for start in stride(from: part * 5_000, to: (part + 1) * 5_000, by: 50) {
                        pool.submit(contentsOf: start..<start + 50)
                    }
                }
            }
        }
        await pool.shutdown()
        #expect(counts.withLock { $0.allSatisfy { $0 == 1 } })
    }

    @Test("shutdown suspends, not blocks, while a job waits for another task")
    func shutdownSuspends() async throws {
        // Each pool's job waits for a flag that only a task sets, after the
        // shutdowns have begun. More shutdowns than the cooperative pool has
        // threads: shutdowns that blocked their threads would leave none for
        // that task, and only the watchdog thread would end the wait.
        let released = Atomic<Int>(0)  // 1: by the task, 2: by the watchdog
        let started = Atomic<Int>(0)
        let pools = (0...ProcessInfo.processInfo.activeProcessorCount).map { _ in
            WorkerThreads<Int>(count: 1, name: "test-worker") { _ in
                started.add(1, ordering: .sequentiallyConsistent)
                while released.load(ordering: .sequentiallyConsistent) == 0 { usleep(1_000) }
            }
        }
        let watchdog = BackgroundThread(name: "test-watchdog") {
            for _ in 0..<10_000 where released.load(ordering: .sequentiallyConsistent) == 0 { usleep(1_000) }
            _ = released.compareExchange(expected: 0, desired: 2, ordering: .sequentiallyConsistent)
        }
        for pool in pools { pool.submit(1) }
        while started.load(ordering: .sequentiallyConsistent) < pools.count {
            try await Task.sleep(for: .milliseconds(1))
        }
        let stopping = pools.map { pool in Task { await pool.shutdown() } }
        try await Task.sleep(for: .milliseconds(50))
        _ = released.compareExchange(expected: 0, desired: 1, ordering: .sequentiallyConsistent)
        for task in stopping { await task.value }
        watchdog.join()
        let releasedBy = released.load(ordering: .sequentiallyConsistent)
        #expect(releasedBy == 1, "the jobs were released by the watchdog: shutdown blocked the cooperative pool")
    }
}
