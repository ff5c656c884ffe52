#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex.
///
/// znbd uses this rather than `Synchronization.Mutex` for one reason:
/// ThreadSanitizer must see every lock. On Linux (Swift 6.3.1) Mutex locks
/// through a futex inside the uninstrumented Synchronization library, so TSan
/// reports every access it protects as a race (a two-thread counter under
/// Mutex reports a race and still sums correctly); pthread mutexes are
/// intercepted by TSan. `Atomic` is compiled inline and is seen, so atomics
/// stay as they are.
///
/// The mutex lives in its own allocation because a pthread_mutex_t must not
/// move once initialised.
public final class Locked<State: ~Copyable>: @unchecked Sendable {
    // @unchecked: `state` is only reached inside withLock, under `mutex`.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var state: State

    public init(_ state: consuming State) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.state = state
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the state, holding the lock.
    @inline(__always)
    public func withLock<Result, Failure: Error>(
        _ body: (inout State) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }
}
