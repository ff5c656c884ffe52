import Synchronization
import SystemPackage
import ZNBDSystem

/// A stable name for one object of the pool, valid from `allocate` to `free`.
///
/// The low 32 bits index the handle table; the high bits carry the entry's
/// generation, bumped on every free, so a handle used after its object was
/// freed (even once the slot is reused) is recognised as stale.
public struct ZSHandle: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }

    init(id: UInt32, generation: UInt64) {
        rawValue = generation << 32 | UInt64(id)
    }

    var id: UInt32 { UInt32(truncatingIfNeeded: rawValue) }
    var generation: UInt64 { rawValue >> 32 }

    public var description: String { "handle#\(id).\(generation)" }
}

/// Where an object is now: its zspage and its index within it.
struct ObjectLocation: Equatable {
    var zspage: UInt32
    var index: Int
}

/// The table every handle resolves through.
///
/// Entry word (an `Atomic<UInt64>` per handle id):
///
///     63     62         61...40          39...16     15...0
///     PIN    ALLOCATED  generation - 1   zspage id   object index
///
/// Generations run 1...2^22 and wrap to 1, so no handle's raw value is 0;
/// stored less one, an all-zero entry is a free id whose next handle has
/// generation 1, and a fresh chunk needs no initialisation (its pages cost
/// memory only once an id in them is used).
///
/// PIN is a bit spin lock on the object, as zsmalloc's HANDLE_PIN_BIT: held
/// by whoever reads, writes, frees or moves the object, so compaction, which
/// only *tries* it, never moves an object under a reader. Whoever rewrites
/// the location while pinned keeps the bit set.
///
/// Frame migration never touches entries: they name the zspage, and a frame
/// is found through the zspage under its lock.
///
/// Storage grows in chunks on demand (ids are reused last-freed first, so
/// the touched part tracks the peak number of live objects), in the region
/// "handles" (a file that outlives the process, for a device with a state
/// directory): chunk i sits at a fixed offset, so a published chunk never
/// moves and an entry means the same to the next process.
final class HandleTable: @unchecked Sendable {
    // @unchecked: chunks are published by ChunkedTable before any id in them
    // is handed out; the entries themselves are Atomics.

    static let chunkShift = 16
    static let chunkSize = 1 << chunkShift
    static let pinBit: UInt64 = 1 << 63
    static let allocatedBit: UInt64 = 1 << 62
    static let generationShift: UInt64 = 40
    static let generationMask: UInt64 = (1 << 22) - 1
    static let zspageShift: UInt64 = 16
    static let zspageMask: UInt64 = (1 << 24) - 1
    static let indexMask: UInt64 = (1 << 16) - 1
    static let maximumZspages = Int(zspageMask) + 1

    private let table: ChunkedTable

    /// Room for `capacity` live handles.
    init(capacity: Int, placement: RegionPlacement = .anonymous) throws(Errno) {
        table = try ChunkedTable(
            capacity: capacity, chunkShift: Self.chunkShift,
            chunkBytes: Self.chunkSize * MemoryLayout<Atomic<UInt64>>.stride, placement: placement, name: "handles")
    }

    /// The entry of `id`. Zero bits are a valid Atomic<UInt64>(0), so the
    /// chunk's fresh mapping is bound as it is.
    @inline(__always)
    private func entry(_ id: UInt32) -> UnsafeMutablePointer<Atomic<UInt64>> {
        table.chunk(containing: id).assumingMemoryBound(to: Atomic<UInt64>.self) + (Int(id) & (Self.chunkSize - 1))
    }

    private static func pack(_ location: ObjectLocation, generation: UInt64) -> UInt64 {
        allocatedBit | ((generation - 1) & generationMask) << generationShift
            | UInt64(location.zspage) << zspageShift | UInt64(location.index)
    }

    private static func location(of word: UInt64) -> ObjectLocation {
        ObjectLocation(
            zspage: UInt32((word >> zspageShift) & zspageMask), index: Int(word & indexMask))
    }

    private static func generation(of word: UInt64) -> UInt64 { ((word >> generationShift) & generationMask) + 1 }

    /// A new handle for an object at `location`. Nil when the table is full.
    func allocate(at location: ObjectLocation) -> ZSHandle? {
        guard let id = table.allocateId() else { return nil }
        let slot = entry(id)
        let generation = Self.generation(of: slot.pointee.load(ordering: .relaxed))
        slot.pointee.store(Self.pack(location, generation: generation), ordering: .releasing)
        return ZSHandle(id: id, generation: generation)
    }

    /// The pin of handle id `id`: the PIN bit of its entry word.
    @inline(__always)
    private func pinLock(_ id: UInt32) -> BitSpinLock {
        BitSpinLock(word: entry(id), bit: Self.pinBit, level: .pin)
    }

    /// Pins `handle`'s object, waiting while someone else holds it, and
    /// returns where the object is. Nil when the handle is not live (never
    /// allocated, freed, or from an earlier generation), also when it stops
    /// being live while this waits.
    func pin(_ handle: ZSHandle) -> ObjectLocation? {
        guard handle.generation != 0, table.existingChunk(containing: handle.id) != nil else { return nil }
        let word = pinLock(handle.id).lock { word in
            word & Self.allocatedBit != 0 && Self.generation(of: word) == handle.generation
        }
        return word.map(Self.location(of:))
    }

    /// Pins the object behind handle id `id` if nobody holds it. Returns its
    /// location, or nil (someone holds the pin: the -EAGAIN of zsmalloc).
    func tryPin(id: UInt32) -> ObjectLocation? {
        pinLock(id).tryLock { $0 & Self.allocatedBit != 0 }.map(Self.location(of:))
    }

    func unpin(id: UInt32) {
        pinLock(id).unlock()
    }

    /// Points a pinned handle at a new location, keeping it pinned.
    func relocate(id: UInt32, to location: ObjectLocation) {
        let slot = entry(id)
        let word = slot.pointee.load(ordering: .relaxed)
        precondition(word & Self.pinBit != 0, "relocating an unpinned handle")
        slot.pointee.store(
            Self.pack(location, generation: Self.generation(of: word)) | Self.pinBit, ordering: .releasing)
    }

    /// Ends a pinned handle's life: bumps the generation, clears PIN and
    /// ALLOCATED, and makes the id available again.
    func release(id: UInt32) {
        let word = entry(id).pointee.load(ordering: .relaxed)
        precondition(word & Self.pinBit != 0, "releasing an unpinned handle")
        // The next generation, stored less one: 1...2^22, then 1 again.
        let next = Self.generation(of: word) % (Self.generationMask + 1) + 1
        pinLock(id).unlock(storing: (next - 1) << Self.generationShift)
        table.releaseId(id)
    }

    /// For the validator: the location of a live id, or nil.
    func peek(id: UInt32) -> (location: ObjectLocation, handle: ZSHandle)? {
        guard table.existingChunk(containing: id) != nil else { return nil }
        let word = entry(id).pointee.load(ordering: .acquiring)
        guard word & Self.allocatedBit != 0 else { return nil }
        return (Self.location(of: word), ZSHandle(id: id, generation: Self.generation(of: word)))
    }

    /// Whether the table is a file an earlier process made.
    var isResumable: Bool { table.isResumable }

    /// How many ids the table has room for: a handle at or past it was
    /// never this table's.
    var idCapacity: Int { table.chunkCount << Self.chunkShift }

    /// What `scanForResume` decided, for `applyResume`.
    struct ResumeScan {
        fileprivate var kept: [UInt32] = []
        fileprivate var freed: [UInt32] = []
        /// Free entries with the pin bit set. None should exist (a pin is
        /// taken only on a live entry, and `release` stores the free word
        /// without it), but one would block its id for good, so it is
        /// cleared like a live entry's.
        fileprivate var pinnedFree: [UInt32] = []
        fileprivate var usedIds = 0
    }

    /// The first half of resuming the table a previous process wrote to its
    /// region (a state file): every chunk up to the last one written is made
    /// again, and each allocated entry is offered to `keep`. Nothing is
    /// stored, so a state `keep` refuses as damaged is left as it was found.
    /// Runs before any other use of the table.
    func scanForResume(
        _ keep: (ZSHandle, ObjectLocation) throws(PoolStateDamaged) -> Bool
    ) throws(PoolStateDamaged) -> ResumeScan {
        let chunkBytes = Self.chunkSize * MemoryLayout<UInt64>.stride
        let written: [Range<Int>]
        do {
            written = try table.writtenRanges() ?? []
            try table.resumeChunks(
                ((written.last?.upperBound ?? 0) + chunkBytes - 1) / chunkBytes, keepingContents: true)
        } catch {
            throw PoolStateDamaged("cannot resume the handle table: \(error)")
        }
        var scan = ResumeScan()
        for range in written {
            for id in range.lowerBound / 8..<range.upperBound / 8 {
                let word = entry(UInt32(id)).pointee.load(ordering: .relaxed)
                guard word != 0 else { continue }
                scan.usedIds = id + 1
                guard word & Self.allocatedBit != 0 else {
                    if word & Self.pinBit != 0 { scan.pinnedFree.append(UInt32(id)) }
                    continue
                }
                let handle = ZSHandle(id: UInt32(id), generation: Self.generation(of: word))
                if try keep(handle, Self.location(of: word)) {
                    scan.kept.append(UInt32(id))
                } else {
                    scan.freed.append(UInt32(id))
                }
            }
        }
        return scan
    }

    /// The second half: clears every pin the dead process may have held,
    /// frees the handles `keep` refused as `release` frees them (their
    /// generation moves on), and takes up the ids kept. Returns those ids,
    /// ascending.
    @discardableResult
    func applyResume(_ scan: ResumeScan) -> [UInt32] {
        for id in scan.kept + scan.pinnedFree {
            let slot = entry(id)
            slot.pointee.store(slot.pointee.load(ordering: .relaxed) & ~Self.pinBit, ordering: .relaxed)
        }
        for id in scan.freed {
            let slot = entry(id)
            let next = Self.generation(of: slot.pointee.load(ordering: .relaxed)) % (Self.generationMask + 1) + 1
            slot.pointee.store((next - 1) << Self.generationShift, ordering: .relaxed)
        }
        table.resumeIds(live: scan.kept, usedIds: scan.usedIds)
        return scan.kept
    }

    struct Usage {
        var liveHandles: Int
        /// Bytes of the chunks allocated so far (the table's own memory).
        var tableBytes: Int
    }

    func usage() -> Usage {
        let usage = table.usage()
        return Usage(liveHandles: usage.live, tableBytes: usage.tableBytes)
    }
}
