import Synchronization

/// A zspage: 1...16 frames (not contiguous) holding the objects of one size
/// class, as zsmalloc's `struct zspage`, kept off-arena.
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
struct ZSPageRecord: ~Copyable {
    /// 0 free, n > 0 held by n readers, -1 held by the writer.
    let lock: Atomic<Int32>
    var classIndex: UInt16 = 0
    var frameCount: UInt8 = 0
    var group: UInt8 = 0
    var inuse: UInt16 = 0
    var objectsPerZspage: UInt16 = 0
    /// Index of the first free slot, `ZSPageTable.endOfFreeList` when full.
    var freeHead: UInt32 = ZSPageTable.endOfFreeList
    var previous: UInt32 = ZSPageTable.none
    var next: UInt32 = ZSPageTable.none
    /// One word per object slot (allocated with the zspage):
    /// `allocatedSlot | handle id` for a live object, or the index of the next
    /// free slot. The free list lives here rather than in the objects' bytes,
    /// so no payload byte is ever read as metadata.
    var slots: UnsafeMutablePointer<UInt32>? = nil
    var frames: InlineArray<16, UInt32> = .init(repeating: FrameArena.noFrame)

    init() {
        lock = Atomic(0)
    }
}

/// The zspage records, indexed by zspage id, in chunks allocated on demand
/// under `ids`; the chunk directory is fixed, so a record never moves.
final class ZSPageTable: @unchecked Sendable {
    // @unchecked: records are reached by pointer; each field's guard is
    // documented on ZSPageRecord. The directory is written under `ids`
    // before the ids in a new chunk are handed out.

    static let none = UInt32.max
    static let endOfFreeList: UInt32 = 0x7FFF_FFFF
    static let allocatedSlot: UInt32 = 0x8000_0000
    static let chunkShift = 10
    static let chunkSize = 1 << chunkShift

    private let directory: UnsafeMutablePointer<UnsafeMutablePointer<ZSPageRecord>?>
    private let directorySize: Int

    private struct IdState {
        var freeIds: [UInt32] = []
        var nextUnusedId: UInt32 = 0
        var live = 0
    }

    private let ids = Mutex(IdState())

    init(capacity: Int) {
        directorySize = max(1, (capacity + Self.chunkSize - 1) / Self.chunkSize)
        directory = .allocate(capacity: directorySize)
        directory.initialize(repeating: nil, count: directorySize)
    }

    deinit {
        for index in 0..<directorySize {
            guard let chunk = directory[index] else { continue }
            for slot in 0..<Self.chunkSize {
                chunk[slot].slots?.deallocate()
            }
            chunk.deinitialize(count: Self.chunkSize)
            chunk.deallocate()
        }
        directory.deallocate()
    }

    @inline(__always)
    func record(_ id: UInt32) -> UnsafeMutablePointer<ZSPageRecord> {
        directory[Int(id) >> Self.chunkShift].unsafelyUnwrapped + (Int(id) & (Self.chunkSize - 1))
    }

    /// A fresh zspage id whose record is reset and unlisted. Nil when full.
    func allocateId() -> UInt32? {
        ids.withLock { state in
            if let id = state.freeIds.popLast() {
                state.live += 1
                return id
            }
            let id = state.nextUnusedId
            let chunk = Int(id) >> Self.chunkShift
            guard chunk < directorySize else { return nil }
            if directory[chunk] == nil {
                let storage = UnsafeMutablePointer<ZSPageRecord>.allocate(capacity: Self.chunkSize)
                for index in 0..<Self.chunkSize {
                    (storage + index).initialize(to: ZSPageRecord())
                }
                directory[chunk] = storage
            }
            state.nextUnusedId += 1
            state.live += 1
            return id
        }
    }

    func releaseId(_ id: UInt32) {
        ids.withLock { state in
            state.freeIds.append(id)
            state.live -= 1
        }
    }

    /// Bytes of record chunks allocated so far.
    var tableBytes: Int {
        ids.withLock { state in
            let chunks = (Int(state.nextUnusedId) + Self.chunkSize - 1) / Self.chunkSize
            return chunks * Self.chunkSize * MemoryLayout<ZSPageRecord>.stride + directorySize * 8
        }
    }

    var liveCount: Int { ids.withLock { $0.live } }

    // MARK: The zspage reader/writer lock

    /// Waits for readers' access; writers (migration) hold it only briefly.
    @inline(__always)
    func readLock(_ id: UInt32) {
        let lock = record(id)
        var spins = 0
        while true {
            let value = lock.pointee.lock.load(ordering: .relaxed)
            if value >= 0 {
                let (exchanged, _) = lock.pointee.lock.compareExchange(
                    expected: value, desired: value + 1, ordering: .acquiring)
                if exchanged { return }
            }
            backOff(&spins)
        }
    }

    @inline(__always)
    func readUnlock(_ id: UInt32) {
        record(id).pointee.lock.subtract(1, ordering: .releasing)
    }

    /// The only way to take the write lock: never waits.
    func tryWriteLock(_ id: UInt32) -> Bool {
        record(id).pointee.lock.compareExchange(expected: 0, desired: -1, ordering: .acquiring).exchanged
    }

    func writeUnlock(_ id: UInt32) {
        record(id).pointee.lock.store(0, ordering: .releasing)
    }
}
