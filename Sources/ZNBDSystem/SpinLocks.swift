#if canImport(Glibc)
    import Glibc
#endif
public import Synchronization

/// Waits politely for a lock held by another thread: spin a little, then
/// yield the CPU, since the holder may be descheduled (userspace has no
/// preempt_disable, the reason the kernel's bit spin locks are safe to spin
/// on). Every spin loop in znbd backs off through this one function.
@inline(__always)
public func backOff(_ spins: inout Int) {
    spins += 1
    if spins > 64 {
        sched_yield()
    }
}

/// A lock that is one bit of an atomic word whose other bits carry data, as
/// zram's ZRAM_LOCK and zsmalloc's HANDLE_PIN_BIT: taken with an acquiring
/// compare-exchange that sets the bit, released with a releasing operation
/// that clears it. A view over the word; the word's owner keeps it alive.
///
/// Spin locks are for short holds (copying or decompressing one page at
/// most): a waiter spins, then yields.
public struct BitSpinLock: @unchecked Sendable {
    // @unchecked: a view over an atomic word, reached only through atomic
    // operations; sharing it between threads is its purpose.
    public let word: UnsafeMutablePointer<Atomic<UInt64>>
    public let bit: UInt64
    public let level: LockLevel

    @inline(__always)
    public init(word: UnsafeMutablePointer<Atomic<UInt64>>, bit: UInt64, level: LockLevel) {
        assert(bit.nonzeroBitCount == 1, "a bit spin lock is one bit")
        self.word = word
        self.bit = bit
        self.level = level
    }

    /// Takes the lock, waiting while another thread holds it, for as long as
    /// `admit` accepts the word's other bits. Returns the word (lock bit
    /// clear) as it was when taken, or nil, holding nothing, once `admit`
    /// refuses it (a handle freed while its pinner waited).
    @inline(__always)
    public func lock(admitting admit: (UInt64) -> Bool) -> UInt64? {
        LockOrder.willWait(for: level, identity: word)
        var spins = 0
        while true {
            let value = word.pointee.load(ordering: .acquiring)
            guard admit(value) else { return nil }
            if value & bit == 0,
                word.pointee.compareExchange(expected: value, desired: value | bit, ordering: .acquiring).exchanged
            {
                LockOrder.didAcquire(level, identity: word)
                return value
            }
            backOff(&spins)
        }
    }

    /// Takes the lock, waiting while another thread holds it.
    @inline(__always)
    @discardableResult
    public func lock() -> UInt64 {
        lock(admitting: { _ in true }).unsafelyUnwrapped
    }

    /// Takes the lock only if it is free and `admit` accepts the word now;
    /// never waits. Returns the word as taken, or nil.
    @inline(__always)
    public func tryLock(admitting admit: (UInt64) -> Bool = { _ in true }) -> UInt64? {
        let value = word.pointee.load(ordering: .acquiring)
        guard value & bit == 0, admit(value),
            word.pointee.compareExchange(expected: value, desired: value | bit, ordering: .acquiring).exchanged
        else { return nil }
        LockOrder.didAcquire(level, identity: word)
        return value
    }

    @inline(__always)
    public func unlock() {
        LockOrder.willRelease(level, identity: word)
        let before = word.pointee.bitwiseAnd(~bit, ordering: .releasing).oldValue
        assert(before & bit != 0, "unlocking a bit spin lock that is not held")
    }

    /// Ends the hold by replacing the whole word with `value` (its lock bit
    /// cleared): for a holder that rewrites the data bits as it lets go.
    @inline(__always)
    public func unlock(storing value: UInt64) {
        assert(word.pointee.load(ordering: .relaxed) & bit != 0, "unlocking a bit spin lock that is not held")
        LockOrder.willRelease(level, identity: word)
        word.pointee.store(value & ~bit, ordering: .releasing)
    }
}

/// A reader/writer spin lock in one atomic 32-bit word: 0 free, n > 0 held
/// by n readers, -1 held by a writer. Readers wait; the writer only tries,
/// so a writer never makes readers wait for long and never waits itself
/// (zsmalloc's migrate lock, which migration only trylocks).
public struct ReaderWriterSpinLock: @unchecked Sendable {
    // @unchecked: as BitSpinLock, a view over an atomic word.
    public let word: UnsafeMutablePointer<Atomic<Int32>>
    public let level: LockLevel

    @inline(__always)
    public init(word: UnsafeMutablePointer<Atomic<Int32>>, level: LockLevel) {
        self.word = word
        self.level = level
    }

    /// Takes a read hold, waiting while a writer holds the lock.
    @inline(__always)
    public func lockShared() {
        LockOrder.willWait(for: level, identity: word)
        var spins = 0
        while true {
            let value = word.pointee.load(ordering: .relaxed)
            if value >= 0,
                word.pointee.compareExchange(expected: value, desired: value + 1, ordering: .acquiring).exchanged
            {
                LockOrder.didAcquire(level, identity: word)
                return
            }
            backOff(&spins)
        }
    }

    @inline(__always)
    public func unlockShared() {
        LockOrder.willRelease(level, identity: word)
        let before = word.pointee.subtract(1, ordering: .releasing).oldValue
        assert(before > 0, "releasing a read hold that is not held")
    }

    /// Takes the write hold if nobody holds the lock; never waits.
    @inline(__always)
    public func tryLockExclusive() -> Bool {
        guard word.pointee.compareExchange(expected: 0, desired: -1, ordering: .acquiring).exchanged else {
            return false
        }
        LockOrder.didAcquire(level, identity: word)
        return true
    }

    @inline(__always)
    public func unlockExclusive() {
        LockOrder.willRelease(level, identity: word)
        assert(word.pointee.load(ordering: .relaxed) == -1, "releasing a write hold that is not held")
        word.pointee.store(0, ordering: .releasing)
    }
}
