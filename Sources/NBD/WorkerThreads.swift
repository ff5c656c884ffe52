import DequeModule
import ZNBDSystem
#if canImport(Glibc)
    import Glibc
#endif

/// A fixed set of named threads that take jobs from one FIFO queue and run
/// them: the NBD server's request workers.
///
/// Why not NIOThreadPool: it allocates a closure and a promise per job, and
/// signals its condition variable on every submission, so a burst of 32 small
/// writes costs 32 futex wakes even when every worker is already busy. Here a
/// job is a value in a Deque (no allocation once it has grown), and a
/// submission wakes a worker only if one sleeps and none has been woken for
/// it already. Under load the workers never sleep and submitting is a mutex
/// acquisition.
///
/// The queue is unbounded: callers bound what they submit (the NBD server's
/// in-flight budgets).
final class WorkerThreads<Job: Sendable>: @unchecked Sendable {
    // @unchecked: `queue`, `sleeping`, `wakesPending` and `stopping` are only
    // touched with `mutex` held; `threads` is written in init and read by
    // shutdown(), called once by the owner.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var queue = Deque<Job>()
    /// Workers waiting on `condition`.
    private var sleeping = 0
    /// Signals sent that no worker has woken up for yet: a submission wakes
    /// one more worker only while `sleeping` exceeds this.
    private var wakesPending = 0
    private var stopping = false
    /// Threads that have not yet left their loop, and who to tell when the
    /// last one has.
    private var running: Int
    private var whenStopped: (@Sendable () -> Void)?
    private var threads: [BackgroundThread] = []

    /// Starts `count` threads named `name` (15 bytes at most), each running
    /// `perform` on one job at a time, in submission order.
    init(count: Int, name: String, perform: @escaping @Sendable (Job) -> Void) {
        precondition(count > 0)
        running = count
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
        threads = (0..<count).map { _ in
            BackgroundThread(name: name) { [self] in
                while let job = take() { perform(job) }
                leave()
            }
        }
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deinitialize(count: 1)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Queues `jobs` in order, under one acquisition of the mutex, and wakes
    /// as many sleeping workers as there are new jobs, less those already
    /// woken.
    func submit(contentsOf jobs: some Collection<Job>) {
        guard !jobs.isEmpty else { return }
        pthread_mutex_lock(mutex)
        precondition(!stopping, "a job submitted after shutdown")
        for job in jobs { queue.append(job) }
        var wakes = min(jobs.count, sleeping - wakesPending)
        while wakes > 0 {
            wakesPending += 1
            pthread_cond_signal(condition)
            wakes -= 1
        }
        pthread_mutex_unlock(mutex)
    }

    /// Queues one job.
    func submit(_ job: Job) {
        submit(contentsOf: CollectionOfOne(job))
    }

    /// Runs every job already queued, then stops the threads and joins
    /// them. Suspends, rather than blocks, until the last job has returned:
    /// a job may wait for something only another task can do, and blocking
    /// a thread of the cooperative pool (two, on a two-core machine) could
    /// keep that task from ever running.
    func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            pthread_mutex_lock(mutex)
            precondition(!stopping, "shutdown called twice")
            stopping = true
            let stopped = running == 0
            if !stopped { whenStopped = { continuation.resume() } }
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
            if stopped { continuation.resume() }
        }
        // Every thread has left its loop: these joins return at once.
        for thread in threads { thread.join() }
    }

    /// A thread's loop has ended; the last one resumes shutdown().
    private func leave() {
        pthread_mutex_lock(mutex)
        running -= 1
        let resume = running == 0 ? whenStopped.take() : nil
        pthread_mutex_unlock(mutex)
        resume?()
    }

    /// The next job, waiting for one; nil once stopping and drained.
    private func take() -> Job? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if let job = queue.popFirst() { return job }
            if stopping { return nil }
            sleeping += 1
            pthread_cond_wait(condition, mutex)
            sleeping -= 1
            // A spurious wake-up may find no signal pending.
            wakesPending = max(0, wakesPending - 1)
        }
    }
}
