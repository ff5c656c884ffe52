import BlockDevice
import Synchronization
import SystemPackage
import ZNBDSystem

/// What one device page holds, decoded from its slot.
enum SlotContent: Equatable {
    /// Never written, or discarded. Reads as zeroes.
    case unallocated
    /// Every 8-byte word of the page equals `fill` (zero pages: fill 0).
    case sameFilled(fill: UInt64)
    /// A pool object of `length` bytes: LZO1X-1 output, or the raw page when
    /// `huge` (length 4096).
    case object(handle: UInt64, length: Int, huge: Bool)
}

/// One slot per 4 KiB page of the device, as zram's `zram->table`: 16 bytes
/// each, in two parallel arrays.
///
///     value  (UInt64)          the pool handle, or the fill word of a
///                              same-filled page
///     meta   (Atomic<UInt64>)
///         bits  0...12   object length in bytes (0...4096)
///         bit   16       SAME      same-filled page; no object
///         bit   17       OBJECT    `value` is a live pool handle
///         bit   18       HUGE      the object is the raw page
///         bit   19       IDLE      reserved: idle tracking (zram's ZRAM_IDLE)
///         bit   20       WB        reserved: written back (ZRAM_WB)
///         bit   31       LOCK      the slot lock
///
/// The slot lock is a bit spin lock in `meta`, like zram's ZRAM_LOCK: taken
/// with an acquiring compare-exchange, dropped with a releasing store. Every
/// read of `value` and every change of a slot happens under it, so a reader
/// never sees a half-installed page. Holders keep it for one page's
/// decompression at most, and waiters back off to sched_yield.
///
/// Both arrays are anonymous mappings: a slot that was never touched costs no
/// memory, and all-zero bits are an unallocated, unlocked slot (zram's
/// vzalloc'd table). The mappings live as long as the table.
final class SlotTable: @unchecked Sendable {
    // @unchecked: `values[i]` is read and written only while holding slot i's
    // LOCK bit, whose acquire/release orders it between threads; `metas` are
    // atomics; the mappings are immutable.

    static let lengthMask: UInt64 = (1 << 13) - 1
    static let sameBit: UInt64 = 1 << 16
    static let objectBit: UInt64 = 1 << 17
    static let hugeBit: UInt64 = 1 << 18
    static let lockBit: UInt64 = 1 << 31

    let count: Int
    private let metaMapping: AnonymousMapping
    private let valueMapping: AnonymousMapping
    private let metas: UnsafeMutablePointer<Atomic<UInt64>>
    private let values: UnsafeMutablePointer<UInt64>

    init(count: Int) throws(Errno) {
        self.count = count
        metaMapping = try AnonymousMapping(byteCount: count * MemoryLayout<Atomic<UInt64>>.stride)
        valueMapping = try AnonymousMapping(byteCount: count * MemoryLayout<UInt64>.stride)
        // Zero bits are a valid Atomic<UInt64>(0) and UInt64(0): binding the
        // fresh zero pages is their initialisation.
        metas = metaMapping.base.bindMemory(to: Atomic<UInt64>.self, capacity: max(1, count))
        values = valueMapping.base.bindMemory(to: UInt64.self, capacity: max(1, count))
    }

    // MARK: The slot lock

    @inline(__always)
    private func slotLock(_ index: Int) -> BitSpinLock {
        assert(index >= 0 && index < count, "slot \(index) outside the table")
        return BitSpinLock(word: metas + index, bit: Self.lockBit, level: .slot)
    }

    /// Runs `body` holding slot `index`'s lock, waiting while another thread
    /// holds it.
    @inline(__always)
    func withLock<Result, Failure: Error>(
        _ index: Int, _ body: () throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let lock = slotLock(index)
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    // MARK: Content (caller holds the slot lock)

    func content(_ index: Int) -> SlotContent {
        let word = (metas + index).pointee.load(ordering: .relaxed)
        if word & Self.objectBit != 0 {
            return .object(
                handle: values[index], length: Int(word & Self.lengthMask), huge: word & Self.hugeBit != 0)
        }
        if word & Self.sameBit != 0 { return .sameFilled(fill: values[index]) }
        return .unallocated
    }

    /// Replaces the slot's content, keeping the lock bit set.
    func setContent(_ index: Int, _ content: SlotContent) {
        var word = Self.lockBit
        switch content {
        case .unallocated:
            values[index] = 0
        case .sameFilled(let fill):
            values[index] = fill
            word |= Self.sameBit
        case .object(let handle, let length, let huge):
            values[index] = handle
            word |= Self.objectBit | UInt64(length) & Self.lengthMask | (huge ? Self.hugeBit : 0)
        }
        (metas + index).pointee.store(word, ordering: .relaxed)
    }

    /// Whether the slot is unallocated and unlocked, read without the lock
    /// (and without writing the slot): a hint, stale once returned.
    @inline(__always)
    func isUnallocated(_ index: Int) -> Bool {
        (metas + index).pointee.load(ordering: .relaxed) == 0
    }

    // MARK: Allocation status

    /// What the page holds for `base:allocation`. Reads the flags without the
    /// lock, which is enough for every page but a same-filled one, whose fill
    /// word decides between zero and data. The answer may be stale by the
    /// time the caller uses it, as any block-status answer may.
    func allocationStatus(_ index: Int) -> AllocationStatus {
        let word = (metas + index).pointee.load(ordering: .relaxed)
        if word & Self.objectBit != 0 { return .data }
        if word & Self.sameBit == 0 { return .unallocated }
        // The page may have changed since the peek; decide under the lock.
        return withLock(index) { allocationStatusLocked(index) }
    }

    private func allocationStatusLocked(_ index: Int) -> AllocationStatus {
        switch content(index) {
        case .unallocated: .unallocated
        case .sameFilled(let fill): fill == 0 ? .zero : .data
        case .object: .data
        }
    }
}
