internal import CLinux

/// A level in the one order of the data path's locks. A thread holding a
/// lock may *wait* only for locks of a higher level; it may *try* any lock
/// (a try never waits, so it cannot close a cycle).
///
/// The modules that own locks declare their levels, outermost first, beside
/// their locks (ZRAM's and ZSPool's `LockLevels.swift`); this module only
/// compares them. A module that holds its own locks around another's calls
/// gives its levels a lower `order` than that module's outermost, and a test
/// checks it. docs/ARCHITECTURE.md has the table of which thread takes which.
///
/// `unchecked` locks take no part: they are never held while a checked lock
/// is taken (control-plane state, test bookkeeping).
public struct LockLevel: Sendable, Comparable, CustomStringConvertible {
    /// The place in the order: lower levels are taken first (outermost).
    /// 0 is `unchecked`. (Locks of one level may also carry a rank, which
    /// orders them within the level: `Locked`'s `rank`.)
    public let order: UInt8
    /// What the lock is, for the checker's messages ("slot", "class").
    public let name: StaticString

    /// A checked level; `order` must be above 0.
    public init(order: UInt8, name: StaticString) {
        precondition(order > 0, "order 0 is the unchecked level")
        self.order = order
        self.name = name
    }

    private init(uncheckedName: StaticString) {
        order = 0
        name = uncheckedName
    }

    public static let unchecked = LockLevel(uncheckedName: "unchecked")

    public var description: String { "\(name)" }

    public static func < (lhs: LockLevel, rhs: LockLevel) -> Bool { lhs.order < rhs.order }
    public static func == (lhs: LockLevel, rhs: LockLevel) -> Bool { lhs.order == rhs.order }
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
                let allowed =
                    other.level < level.order || (ordered && other.level == level.order && Int(other.rank) < rank)
                guard !allowed else { continue }
                if UInt(bitPattern: identity) == other.identity {
                    preconditionFailure(
                        "lock order: waiting for a \(level) lock this thread already holds (self-deadlock)")
                }
                let otherName = other.name.map { String(cString: $0) } ?? "?"
                preconditionFailure(
                    "lock order: waiting for a \(level) lock (rank \(rank)) while holding a \(otherName) lock "
                        + "(rank \(other.rank)); "
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
                clinux_lockdep_push(
                    level.order, level.name.utf8Start, Int32(truncatingIfNeeded: rank), UInt(bitPattern: identity))
                    == 0,
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
