import ZNBDSystem

// ZRAM's locks in the one lock order (ZNBDSystem's LockLevel). Both are held
// around pool calls, so both rank below the pool's outermost level
// (`LockLevel.outermostInPool`); a test checks it. CompressedBlockDevice.swift
// and Maintenance.swift say what each guards.

extension LockLevel {
    /// One maintenance pass (compaction and migration) or recompression
    /// slice at a time: a pthread mutex, around everything a pass takes.
    static let maintenance = LockLevel(order: 10, name: "maintenance")
    /// Per device page: the slot lock, a bit spin lock in the slot's meta word.
    static let slot = LockLevel(order: 20, name: "slot")
}
