import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// The bytes all connections of a server may hold for requests in progress:
/// write payloads not yet stored, reply data not yet handed to the socket.
/// Each connection has a budget of its own too (NBDConnectionStateMachine's
/// Limits); this one bounds their sum, so many connections that stop reading
/// cannot add up to more than it.
///
/// A connection that holds nothing may always take one request of up to
/// `alwaysAllowed` bytes, whatever the total: otherwise a few clients that
/// never read could stall every other client by holding the whole budget.
/// The worst case is therefore `limit` plus that much per connection, about
/// what the kernel already buffers per socket.
///
/// A connection refused here registers a wake-up, called (from whichever
/// thread releases bytes) once bytes are released.
final class InFlightBudget: Sendable {
    let limit: Int
    let alwaysAllowed: Int
    private let used = Atomic<Int>(0)
    private let waiting = Atomic<Bool>(false)
    private let waiters = NIOLockedValueBox<[ObjectIdentifier: @Sendable () -> Void]>([:])

    init(limit: Int, alwaysAllowed: Int = 1 << 20) {
        self.limit = limit
        self.alwaysAllowed = alwaysAllowed
    }

    /// Bytes held now, by every connection.
    var bytesInUse: Int { used.load(ordering: .relaxed) }

    /// Takes `bytes` if they fit (or if `holdsNothing` and they are few
    /// enough to be always allowed). Returns false, and registers `wake`
    /// under `owner`, when they do not.
    func acquire(
        _ bytes: Int, holdsNothing: Bool, owner: ObjectIdentifier, wake: @escaping @Sendable () -> Void
    ) -> Bool {
        if holdsNothing && bytes <= alwaysAllowed {
            used.add(bytes, ordering: .relaxed)
            return true
        }
        if tryTake(bytes) { return true }
        waiters.withLockedValue { waiters in
            waiters[owner] = wake
            waiting.store(true, ordering: .sequentiallyConsistent)
        }
        // Bytes released between the failed try and the registration have
        // not seen the waiter: try once more before sleeping.
        guard tryTake(bytes) else { return false }
        cancelWait(owner)
        return true
    }

    private func tryTake(_ bytes: Int) -> Bool {
        var current = used.load(ordering: .relaxed)
        while current + bytes <= limit {
            let (exchanged, original) = used.compareExchange(
                expected: current, desired: current + bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    func release(_ bytes: Int) {
        used.subtract(bytes, ordering: .sequentiallyConsistent)
        guard waiting.load(ordering: .sequentiallyConsistent) else { return }
        let wakes = waiters.withLockedValue { waiters in
            defer { waiters.removeAll() }
            waiting.store(false, ordering: .sequentiallyConsistent)
            return Array(waiters.values)
        }
        for wake in wakes { wake() }
    }

    /// Forgets `owner`'s wake-up (its connection closed, or it got the bytes).
    func cancelWait(_ owner: ObjectIdentifier) {
        waiters.withLockedValue { _ = $0.removeValue(forKey: owner) }
    }
}
