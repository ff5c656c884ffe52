import Synchronization
import SystemPackage
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
/// - Everything else (`inuse`, `freeHead`, the slots, list links, `group`)
///   is under the class lock.
///
/// A zspage's two lists, its object slots and then its frames, are one run
/// of 32-bit words made with the zspage (`makeLists`): in the record itself
/// when they fit in `inlineWords` (a one-frame zspage of one or two objects,
/// the shape of raw pages and of the 2 KiB class, where a zspage per frame
/// makes the records the pool's largest metadata), else on the heap. The
/// `slots` pointer names the run either way, and never changes while the
/// zspage lives, so readers need no lock for it beyond what keeps the
/// zspage alive. That pointer is the only one to a run on the heap, so the
/// table's chunks are LeakSanitizer roots (`holdsHeapPointers`).
struct ZSPageRecord {
    /// Words of slots and frames a record holds itself.
    static let inlineWords = 4

    /// Field arrays of one chunk, each `ZSPageTable.chunkSize` entries long:
    /// 48 bytes a record.
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
        static let inline = slots + 8 * count  // inlineWords × UInt32
        static let chunkBytes = inline + 4 * ZSPageRecord.inlineWords * count
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
    /// One word per object slot: `allocatedSlot | handle id` for a live
    /// object, or the index of the next free slot. The free list lives here
    /// rather than in the objects' bytes, so no payload byte is ever read as
    /// metadata. Nil while the record is not a live zspage.
    var slots: UnsafeMutablePointer<UInt32>? {
        UnsafeMutablePointer(bitPattern: load(Layout.slots, UInt.self))
    }
    /// The zspage's frames, by index in the zspage: the words after its slots.
    @inline(__always)
    var frames: FrameList {
        FrameList(base: slots.unsafelyUnwrapped + Int(objectsPerZspage), count: Int(frameCount))
    }

    private var inlineStorage: UnsafeMutablePointer<UInt32> {
        (chunk + Layout.inline).assumingMemoryBound(to: UInt32.self) + slot * ZSPageRecord.inlineWords
    }

    /// Sets the zspage's shape and makes its slot and frame lists (contents
    /// unset). Returns the bytes taken from the heap, 0 when they fit here.
    /// The caller holds the class lock, and the zspage is not yet reachable.
    func makeLists(objects: Int, frames: Int) -> Int {
        assert(slots == nil, "zspage lists made twice")
        let words = objects + frames
        let storage = words <= ZSPageRecord.inlineWords ? inlineStorage : .allocate(capacity: words)
        store(UInt(bitPattern: storage), Layout.slots)
        objectsPerZspage = UInt16(objects)
        frameCount = UInt8(frames)
        return heapBytes
    }

    /// Frees the lists and clears the shape; returns the heap bytes freed.
    /// The caller holds the class lock, and nothing can reach the zspage.
    @discardableResult
    func freeLists() -> Int {
        let bytes = heapBytes
        if let storage = slots, storage != inlineStorage { storage.deallocate() }
        store(UInt(0), Layout.slots)
        objectsPerZspage = 0
        frameCount = 0
        return bytes
    }

    /// Bytes of the lists on the heap (0 when in the record or unmade).
    var heapBytes: Int {
        guard let storage = slots, storage != inlineStorage else { return 0 }
        return (Int(objectsPerZspage) + Int(frameCount)) * MemoryLayout<UInt32>.stride
    }

    /// A zspage's frame numbers.
    struct FrameList {
        let base: UnsafeMutablePointer<UInt32>
        let count: Int
        subscript(index: Int) -> UInt32 {
            get {
                assert(index >= 0 && index < count, "frame index \(index) outside a \(count)-frame zspage")
                return base[index]
            }
            nonmutating set {
                assert(index >= 0 && index < count, "frame index \(index) outside a \(count)-frame zspage")
                base[index] = newValue
            }
        }
    }
}

/// The zspage records, indexed by zspage id, in chunks allocated on demand
/// by a ChunkedTable, each at a fixed place, so a record never moves.
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

    /// Always anonymous: the records are rebuilt at start from the frame
    /// owners, and they point to the heap.
    init(capacity: Int) throws(Errno) {
        table = try ChunkedTable(
            capacity: capacity, chunkShift: Self.chunkShift, chunkBytes: ZSPageRecord.Layout.chunkBytes,
            placement: .anonymous, name: "zspages", holdsHeapPointers: true, prepareChunk: Self.prepareChunk)
    }

    deinit {
        // The chunks go with the table; the lists on the heap are ours.
        table.forEachChunk { chunk in
            for slot in 0..<Self.chunkSize {
                ZSPageRecord(chunk: chunk, slot: slot).freeLists()
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
    /// words, counts and list pointers are zero bits, valid as they are).
    private static func prepareChunk(_ storage: UnsafeMutableRawPointer) {
        _ = (storage + ZSPageRecord.Layout.lock).bindMemory(to: Atomic<Int32>.self, capacity: chunkSize)
        _ = (storage + ZSPageRecord.Layout.inline).bindMemory(
            to: UInt32.self, capacity: chunkSize * ZSPageRecord.inlineWords)
        for slot in 0..<chunkSize {
            let record = ZSPageRecord(chunk: storage, slot: slot)
            record.freeHead = endOfFreeList
            record.previous = none
            record.next = none
        }
    }

    func releaseId(_ id: UInt32) {
        table.releaseId(id)
    }

    /// Lays out the records of ids below `count`, unlisted, for a pool that
    /// resumes a state; `resumeIds` then says which are live.
    func resumeChunks(coveringIds count: Int) throws(Errno) {
        try table.resumeChunks((count + Self.chunkSize - 1) >> Self.chunkShift, keepingContents: false)
    }

    func resumeIds(live: [UInt32], usedIds: Int) {
        table.resumeIds(live: live, usedIds: usedIds)
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
