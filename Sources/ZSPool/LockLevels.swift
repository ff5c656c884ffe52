public import ZNBDSystem

// The pool's locks in the one lock order (ZNBDSystem's LockLevel), outermost
// first. ZSPool.swift's LOCKS says what each guards and why the order is
// enough; docs/ARCHITECTURE.md has which thread takes which.
//
// A caller may hold locks of its own around pool calls (ZRAM's slot lock)
// only if their levels are below `LockLevel.outermostInPool`.

extension LockLevel {
    /// Per object: the handle pin, a bit spin lock in its handle entry.
    static let pin = LockLevel(order: 30, name: "pin")
    /// Per zspage: its reader/writer spin lock; migration only tries the writer side.
    static let zspage = LockLevel(order: 40, name: "zspage")
    /// Per size class: a pthread mutex over the class's lists.
    static let sizeClass = LockLevel(order: 50, name: "class")
    /// The frame arena's pthread mutex.
    static let arena = LockLevel(order: 60, name: "arena")
    /// Per CPU: a cache of free handle or zspage ids, a bit spin lock.
    static let idCache = LockLevel(order: 70, name: "id cache")
    /// The id allocators behind the caches (pthread mutex, a leaf).
    static let idAllocator = LockLevel(order: 80, name: "id allocator")

    /// The pool's outermost level: a lock held around pool calls must be
    /// below it.
    public static let outermostInPool = pin
}
