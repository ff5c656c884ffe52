#if canImport(Glibc)
    import Glibc
#endif

/// A value behind a pthread mutex that carries a lock level.
///
/// The pool's sleeping locks (class, arena, id allocators) are these rather
/// than NIO's `NIOLockedValueBox`, which the NBD and control modules use:
/// this one takes part in the lock-order check (`LockOrder`), keeps a typed
/// `throws(E)` through its closure (NIO's rethrows as `any Error`), and holds
/// `~Copyable` state. Not `Synchronization.Mutex`: on Linux (Swift 6.3.1)
/// Mutex locks through a futex inside the uninstrumented Synchronization
/// library, so ThreadSanitizer reports every access it protects as a race;
/// pthread mutexes are intercepted by TSan.
///
/// The mutex lives in its own allocation because a pthread_mutex_t must not
/// move once initialised.
public final class Locked<State: ~Copyable>: @unchecked Sendable {
    // @unchecked: `state` is only reached inside withLock, under `mutex`.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var state: State
    public let level: LockLevel
    /// Orders locks of one level for `withLock(ordered: true)`.
    public let rank: Int

    public init(_ state: consuming State, level: LockLevel = .unchecked, rank: Int = 0) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.state = state
        self.level = level
        self.rank = rank
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the state, holding the lock. `ordered`: this thread
    /// may already hold locks of the same level with lower ranks.
    @inline(__always)
    public func withLock<Result, Failure: Error>(
        ordered: Bool = false, _ body: (inout State) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        LockOrder.willWait(for: level, rank: rank, identity: mutex, ordered: ordered)
        pthread_mutex_lock(mutex)
        LockOrder.didAcquire(level, rank: rank, identity: mutex)
        defer {
            LockOrder.willRelease(level, identity: mutex)
            pthread_mutex_unlock(mutex)
        }
        return try body(&state)
    }
}
