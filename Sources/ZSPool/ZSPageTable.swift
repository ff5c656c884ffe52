import Synchronization
import ZNBDSystem

/// A zspage: 1...16 frames (not contiguous) holding the objects of one size
/// class, as zsmalloc's `struct zspage`, kept off-arena.
///
/// A record is a view: each field lives in its own array inside the table's
/// chunk (structure of arrays), so that a thread updating `inuse` under the
/// class lock and a reader loading `frames` under the zspage lock touch
/// different memory, not one struct (which Swift's exclusivity rules, and
/// ThreadSanitizer, would count as one variable).
///
/// Which lock guards which field:
/// - `lock` is the zspage's reader/writer lock (zsmalloc's migrate lock):
///   readers are object accessors, the writer is frame migration.
/// - `frames` change only under the write lock *and* the class lock; reading
///   them needs either.
/// - `classIndex`, `frameCount` and `objectsPerZspage` are fixed while the
///   zspage is alive (from creation to destruction, both under the class lock).
/// - Everything else (`inuse`, `freeHead`, `slots`, list links, `group`) is
///   under the class lock.
struct ZSPageRecord {
    /// Field arrays of one chunk, each `ZSPageTable.chunkSize` entries long.
    enum Layout {
        static let count = ZSPageTable.chunkSize
        static let lock = 0  // Atomic<Int32>: 0 free, n > 0 readers, -1 writer
        static let classIndex = lock + 4 * count  // UInt16
        static let inuse = classIndex + 2 * count  // UInt16
        static let objectsPerZspage = inuse + 2 * count  // UInt16
        static let frameCount = objectsPerZspage + 2 * count  // UInt8
        static let group = frameCount + count  // UInt8
        static let freeHead = group + count  // UInt32
        static let previous = freeHead + 4 * count  // UInt32
        static let next = previous + 4 * count  // UInt32
        static let slots = next + 4 * count  // UInt (pointer bits)
        static let frames = slots + 8 * count  // FrameList.capacity × UInt32
        static let chunkBytes = frames + 4 * FrameList.capacity * count
    }

    let chunk: UnsafeMutableRawPointer
    let slot: Int

    @inline(__always)
    init(chunk: UnsafeMutableRawPointer, slot: Int) {
        assert(slot >= 0 && slot < Layout.count, "zspage record slot \(slot) outside its chunk")
        self.chunk = chunk
        self.slot = slot
    }

    @inline(__always)
    private func load<T>(_ field: Int, _ type: T.Type) -> T {
        chunk.load(fromByteOffset: field + slot * MemoryLayout<T>.stride, as: T.self)
    }

    @inline(__always)
    private func store<T>(_ value: T, _ field: Int) {
        chunk.storeBytes(of: value, toByteOffset: field + slot * MemoryLayout<T>.stride, as: T.self)
    }

    var lock: UnsafeMutablePointer<Atomic<Int32>> {
        (chunk + Layout.lock).assumingMemoryBound(to: Atomic<Int32>.self) + slot
    }
    var classIndex: UInt16 {
        get { load(Layout.classIndex, UInt16.self) }
        nonmutating set { store(newValue, Layout.classIndex) }
    }
    var inuse: UInt16 {
        get { load(Layout.inuse, UInt16.self) }
        nonmutating set { store(newValue, Layout.inuse) }
    }
    var objectsPerZspage: UInt16 {
        get { load(Layout.objectsPerZspage, UInt16.self) }
        nonmutating set { store(newValue, Layout.objectsPerZspage) }
    }
    var frameCount: UInt8 {
        get { load(Layout.frameCount, UInt8.self) }
        nonmutating set { store(newValue, Layout.frameCount) }
    }
    var group: UInt8 {
        get { load(Layout.group, UInt8.self) }
        nonmutating set { store(newValue, Layout.group) }
    }
    /// Index of the first free slot, `ZSPageTable.endOfFreeList` when full.
    var freeHead: UInt32 {
        get { load(Layout.freeHead, UInt32.self) }
        nonmutating set { store(newValue, Layout.freeHead) }
    }
    var previous: UInt32 {
        get { load(Layout.previous, UInt32.self) }
        nonmutating set { store(newValue, Layout.previous) }
    }
    var next: UInt32 {
        get { load(Layout.next, UInt32.self) }
        nonmutating set { store(newValue, Layout.next) }
    }
    /// One word per object slot (allocated with the zspage):
    /// `allocatedSlot | handle id` for a live object, or the index of the next
    /// free slot. The free list lives here rather than in the objects' bytes,
    /// so no payload byte is ever read as metadata.
    var slots: UnsafeMutablePointer<UInt32>? {
        get { UnsafeMutablePointer(bitPattern: load(Layout.slots, UInt.self)) }
        nonmutating set { store(UInt(bitPattern: newValue), Layout.slots) }
    }
    var frames: FrameList { FrameList(base: chunk + Layout.frames + slot * 4 * FrameList.capacity) }

    /// The zspage's frames, by index in the zspage.
    struct FrameList {
        static let capacity = 16
        let base: UnsafeMutableRawPointer
        subscript(index: Int) -> UInt32 {
            get {
                assert(index >= 0 && index < Self.capacity, "frame index \(index) outside a zspage")
                return base.load(fromByteOffset: index * 4, as: UInt32.self)
            }
            nonmutating set {
                assert(index >= 0 && index < Self.capacity, "frame index \(index) outside a zspage")
                base.storeBytes(of: newValue, toByteOffset: index * 4, as: UInt32.self)
            }
        }
    }
}

/// The zspage records, indexed by zspage id, in chunks allocated on demand
/// by a ChunkedTable; the chunk directory is fixed, so a record never moves.
final class ZSPageTable: @unchecked Sendable {
    // @unchecked: records are reached by pointer; each field's guard is
    // documented on ZSPageRecord. Chunks are published by ChunkedTable
    // before the ids in them are handed out.

    static let none = UInt32.max
    static let endOfFreeList: UInt32 = 0x7FFF_FFFF
    static let allocatedSlot: UInt32 = 0x8000_0000
    static let chunkShift = 10
    static let chunkSize = 1 << chunkShift

    private let table: ChunkedTable

    init(capacity: Int) {
        table = ChunkedTable(
            capacity: capacity, chunkShift: Self.chunkShift, chunkBytes: ZSPageRecord.Layout.chunkBytes,
            prepareChunk: Self.prepareChunk)
    }

    deinit {
        // The chunks go with the table; the slot tables they point to are ours.
        table.forEachChunk { chunk in
            for slot in 0..<Self.chunkSize {
                ZSPageRecord(chunk: chunk, slot: slot).slots?.deallocate()
            }
        }
    }

    @inline(__always)
    func record(_ id: UInt32) -> ZSPageRecord {
        ZSPageRecord(chunk: table.chunk(containing: id), slot: Int(id) & (Self.chunkSize - 1))
    }

    /// A fresh zspage id whose record is reset and unlisted. Nil when full.
    func allocateId() -> UInt32? {
        table.allocateId()
    }

    /// Fills a new chunk's records with their empty values (the lock
    /// words and counts are zero bits, valid as they are).
    private static func prepareChunk(_ storage: UnsafeMutableRawPointer) {
        _ = (storage + ZSPageRecord.Layout.lock).bindMemory(to: Atomic<Int32>.self, capacity: chunkSize)
        for slot in 0..<chunkSize {
            let record = ZSPageRecord(chunk: storage, slot: slot)
            record.freeHead = endOfFreeList
            record.previous = none
            record.next = none
            for index in 0..<ZSPageRecord.FrameList.capacity { record.frames[index] = FrameArena.noFrame }
        }
    }

    func releaseId(_ id: UInt32) {
        table.releaseId(id)
    }

    /// Bytes of record chunks allocated so far.
    var tableBytes: Int { table.usage().tableBytes }

    var liveCount: Int { table.usage().live }

    // MARK: The zspage reader/writer lock

    @inline(__always)
    private func lock(_ id: UInt32) -> ReaderWriterSpinLock {
        ReaderWriterSpinLock(word: record(id).lock, level: .zspage)
    }

    /// Waits for readers' access; writers (migration) hold it only briefly.
    @inline(__always)
    func readLock(_ id: UInt32) { lock(id).lockShared() }

    @inline(__always)
    func readUnlock(_ id: UInt32) { lock(id).unlockShared() }

    /// The only way to take the write lock: never waits.
    func tryWriteLock(_ id: UInt32) -> Bool { lock(id).tryLockExclusive() }

    func writeUnlock(_ id: UInt32) { lock(id).unlockExclusive() }
}
