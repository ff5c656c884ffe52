internal import CLinux

/// The levels of znbd's data-path locks, outermost first. A thread holding a
/// lock may *wait* only for locks of a higher level; it may *try* any lock
/// (a try never waits, so it cannot close a cycle). docs/ARCHITECTURE.md has
/// the table of which thread takes which.
///
///   1 maintenance  ZRAM's maintenance pass lock: one compaction and
///                  migration pass at a time (pthread mutex)
///   2 slot         ZRAM's per-page slot lock (bit spin lock)
///   3 pin          ZSPool's per-object handle pin (bit spin lock)
///   4 zspage       ZSPool's per-zspage reader/writer lock (spin; the writer only tries)
///   5 sizeClass    ZSPool's per-class lock (pthread mutex)
///   6 arena        ZSPool's frame arena lock (pthread mutex)
///   7 idCache      ZSPool's per-CPU caches of free handle and zspage ids (bit spin lock)
///   8 idAllocator  the handle and zspage id allocators behind them (pthread mutex, leaf)
///
/// `unchecked` locks take no part: they are never held while a checked lock
/// is taken (control-plane state, test bookkeeping).
public enum LockLevel: UInt8, Sendable, Comparable {
    case unchecked = 0
    case maintenance = 1
    case slot = 2
    case pin = 3
    case zspage = 4
    case sizeClass = 5
    case arena = 6
    case idCache = 7
    case idAllocator = 8

    public static func < (lhs: LockLevel, rhs: LockLevel) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A small lockdep: in checked builds (debug, or `-D ZNBD_LOCKDEP`, which
/// tools/test passes) every acquisition of a checked lock is compared with
/// the locks the thread already holds, and one that could deadlock traps at
/// once, naming both locks, whether or not the deadlock happens this time.
/// In other builds every call compiles to nothing.
///
/// Rule: a thread may wait for a lock of level L only while every lock it
/// holds has a level below L, except that locks of one level taken with
/// `ordered` nest in increasing rank (the pool's validator takes every class
/// lock in class order). Tries are always allowed and are recorded.
public enum LockOrder {
    #if DEBUG || ZNBD_LOCKDEP
        public static let isChecking = true
    #else
        public static let isChecking = false
    #endif

    /// Before waiting for a lock.
    @inline(__always)
    public static func willWait(
        for level: LockLevel, rank: Int = 0, identity: UnsafeRawPointer, ordered: Bool = false
    ) {
        #if DEBUG || ZNBD_LOCKDEP
            guard level != .unchecked else { return }
            var count: Int32 = 0
            let held = clinux_lockdep_held(&count)!
            for index in 0..<Int(count) {
                let other = held[index]
                guard let otherLevel = LockLevel(rawValue: other.level) else { continue }
                let allowed = otherLevel < level || (ordered && otherLevel == level && Int(other.rank) < rank)
                guard !allowed else { continue }
                if UInt(bitPattern: identity) == other.identity {
                    preconditionFailure(
                        "lock order: waiting for a \(level) lock this thread already holds (self-deadlock)")
                }
                preconditionFailure(
                    "lock order: waiting for a \(level) lock (rank \(rank)) while holding a \(otherLevel) lock (rank \(other.rank)); "
                        + "a thread may only wait for locks below those it holds (see LockLevel)")
            }
        #endif
    }

    /// After taking a lock, by waiting or by a successful try.
    @inline(__always)
    public static func didAcquire(_ level: LockLevel, rank: Int = 0, identity: UnsafeRawPointer) {
        #if DEBUG || ZNBD_LOCKDEP
            guard level != .unchecked else { return }
            precondition(
                clinux_lockdep_push(level.rawValue, Int32(truncatingIfNeeded: rank), UInt(bitPattern: identity)) == 0,
                "lock order: more than \(CLINUX_LOCKDEP_DEPTH) locks held by one thread")
        #endif
    }

    /// Before releasing a lock.
    @inline(__always)
    public static func willRelease(_ level: LockLevel, identity: UnsafeRawPointer) {
        #if DEBUG || ZNBD_LOCKDEP
            guard level != .unchecked else { return }
            precondition(
                clinux_lockdep_remove(UInt(bitPattern: identity)) == 0,
                "lock order: releasing a \(level) lock this thread does not hold")
        #endif
    }

    /// Checked locks the calling thread holds now (0 in unchecked builds).
    public static var heldCount: Int {
        #if DEBUG || ZNBD_LOCKDEP
            var count: Int32 = 0
            _ = clinux_lockdep_held(&count)
            return Int(count)
        #else
            return 0
        #endif
    }
}
