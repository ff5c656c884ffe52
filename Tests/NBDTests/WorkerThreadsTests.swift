import Foundation
@testable import NBD
import Synchronization
import Testing
import ZNBDSystem

#if canImport(Glibc)
    import Glibc
#endif

@Suite("NBD: worker threads")
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
