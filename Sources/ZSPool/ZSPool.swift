// ZSPool: a movable, zsmalloc-style pool of variable-size objects.
//
// THE MAP, file by file, in the order an object's bytes meet them
//   ZSPool.swift         the pool: allocate, write, read, free; the classes'
//                        lists (this file, and the design below)
//   SizeClass.swift      the size classes and each one's zspage shape
//   HandleTable.swift    handles: stable ids, generations, the pin
//   ZSPageTable.swift    zspage records (structure of arrays in chunks) and
//                        their slot and frame lists
//   ChunkedTable.swift   the id-indexed chunks both tables live in, and the
//                        per-CPU id caches in front of their allocators
//   FrameArena.swift     the mapping of frames and blocks, and frame owners
//   Compaction.swift     objects moved out of the emptiest zspages
//   Migration.swift      frames moved out of the sparsest blocks
//   ZSPoolFigures.swift  the pool's figures (PoolFigure) and class table
//   Validator.swift      the check of every list, count and owner
//   Resume.swift         the pool rebuilt from a state an earlier process
//                        left: owners, handles, and what the device names
//   LockLevels.swift     the pool's locks in the one lock order
//
// THE DESIGN
//
// Memory. One region (FrameArena) reserved at start-up and cut into 4 KiB
// *frames*, numbered like PFNs and grouped in 2 MiB *blocks*. A block whose
// last frame is freed goes back to the kernel (MADV_DONTNEED, or a hole
// punched in the file). New frames come from the fullest resident block, so
// sparse blocks drain.
//
// Placement. The region is anonymous memory, or a file of a state directory
// on a tmpfs (Configuration.placement): then the frames, the frame owners
// and the handle entries outlive the process, and everything else (zspage
// records, slot and free lists, bitmaps, caches, counters) is derived from
// them (docs/STATE-DESIGN.md). Those three are stored so that a process
// killed at any instant leaves them consistent: each entry is one word
// stored whole, a frame's owner is set only once its bytes are complete,
// and a handle names one place at a time.
//
// Size classes (SizeClassTable). Objects of 32...4096 bytes, in classes 16
// bytes apart; each class chooses how many frames (1...maxChain) make one
// *zspage* so the least space is wasted, and neighbouring sizes with the same
// shape merge. The last class, the *huge* class, holds one raw page per frame.
//
// zspages (ZSPageTable). A zspage is 1...16 frames, not contiguous, listed
// with its off-arena record. Objects sit back to back across the zspage and
// may span two frames; accessors copy such objects piecewise. Each frame's
// first-object offset is stored with its owner in the arena, not computed on
// the fly. Beside the frame list, the record names the slot table: per
// object slot, the handle id of the live object, or the next free slot (the
// free list); both lists sit in the record when short, else on the heap. No
// metadata lives inside frames, so moving frame bytes moves only payload.
//
// Fullness. Each class keeps its zspages on 12 lists by in-use ratio: empty,
// ten 10% bands, full (the kernel's newer ZS_INUSE_RATIO groups). Allocation
// takes the fullest non-full zspage; compaction drains the emptiest into the
// fullest. A zspage that empties is freed, except that a class whose zspages
// hold four objects or fewer keeps one empty *spare* while it has objects.
//
// Handles (HandleTable). A handle is a stable id plus a generation; its entry
// says where the object is now: (zspage id, object index). Compaction rewrites
// the entry when it moves an object. Migration moves frames and rewrites only
// the zspage's frame list, which every access resolves through, so it never
// needs to touch handles. Handle and zspage ids come from per-CPU caches in
// front of each table's shared allocator (ChunkedTable), so threads in one
// class do not also meet on an id mutex for every object.
//
// LOCKS, outermost first (levels in LockLevels.swift, ordered by ZNBDSystem's
// LockLevel; a thread holding one may only *wait* for those below it, and
// checked builds trap otherwise):
//
//   1. maintenance      not the pool's: ZRAM's one-pass-at-a-time lock,
//                       held around compact() and migrateFrames().
//   2. slot lock        not the pool's: ZRAM's per-page lock, held around
//                       pool calls for that page (CompressedBlockDevice).
//   3. handle pin       per object, a bit spin lock in its handle entry;
//                       held by read/write/free for the access.
//   4. zspage rwlock    per zspage, a spin lock; accessors hold it for
//                       reading while they touch frame bytes; migration
//                       only tries it for writing.
//   5. class lock       per size class (a Locked, pthread); free lists, slot
//                       tables, fullness lists, zspage creation and destruction.
//   6. arena lock       frame bitmaps, block residency, frame owners.
//   7. id caches        per CPU, a spin lock each (ChunkedTable's IdCaches).
//   8. id allocators    of HandleTable and ZSPageTable, behind the caches (leaf).
//
// Compaction and migration hold a class lock and only *try* the pins and
// zspage locks above it, skipping and counting what they cannot take (the
// -EAGAIN of zs_page_migrate). So no path waits for a lock that its holder
// could be waiting on.
//
// Why the locks are enough:
// - An accessor pins its object first. A pinned object is not moved by
//   compaction and not freed, so its zspage stays alive and keeps its id.
// - Under the zspage read lock the frame list cannot change; migration
//   replaces a frame only under the write lock and the class lock.
// - Compaction moves an object only while it holds its pin, and both zspages'
//   slot tables only under the class lock. It needs no zspage lock: nobody
//   else touches the bytes of a pinned object or of a free slot, and frames
//   cannot migrate while it holds the class lock.
// - A zspage is destroyed (frames freed) only under its class lock, when its
//   in-use count is zero, so no pinned object, and so no accessor, is in it.
//
// See docs/ARCHITECTURE.md for how ZRAM uses the pool.

import Synchronization
public import ZNBDSystem

/// Why the pool refused an operation.
public enum ZSPoolError: Error, Equatable, Sendable {
    /// An object must be 1...4096 bytes.
    case invalidSize(Int)
    /// Storing the object would take the pool past its memory limit.
    case memLimitReached(limitBytes: Int)
    /// The arena has no free frame left.
    case arenaFull(capacityBytes: Int)
    /// The filesystem under the pool's state files had no room for the
    /// frames (ENOSPC from reserving them, usually).
    case noRoomForState(errno: Int32)
    /// The handle is not live: never allocated, already freed, or stale.
    case invalidHandle(ZSHandle)
    /// An access beyond the object's class size.
    case outOfBounds(offset: Int, count: Int, objectSize: Int)
}

/// A pool of compressed objects in movable frames. Safe to use from many
/// threads at once, while `compact()` and `migrateFrames()` run on another.
public final class ZSPool: Sendable {
    public struct Configuration: Sendable {
        /// Address space reserved for frames (rounded up to 2 MiB blocks).
        public var capacityBytes: Int
        /// Most frames per zspage (1...16; zsmalloc's CONFIG_ZSMALLOC_CHAIN_SIZE
        /// defaults to 8 since Linux 6.3, 4 before).
        public var maxChain: Int
        /// Cap on frame bytes in use; nil for none. Changeable at run time.
        public var memLimitBytes: Int?
        /// Whether freeing a handle that is not live stops the process (as a
        /// precondition) instead of being counted in `invalidFrees`.
        public var trapOnInvalidFree: Bool
        /// Where the frames, their owners and the handles live: anonymous
        /// memory, or files of a state directory.
        public var placement: RegionPlacement

        public init(
            capacityBytes: Int, maxChain: Int = SizeClassTable.defaultMaxChain, memLimitBytes: Int? = nil,
            trapOnInvalidFree: Bool = ZSPool.isDebugBuild, placement: RegionPlacement = .anonymous
        ) {
            self.placement = placement
            self.capacityBytes = capacityBytes
            self.maxChain = maxChain
            self.memLimitBytes = memLimitBytes
            self.trapOnInvalidFree = trapOnInvalidFree
        }
    }

    /// The regions of a placement the pool's state lives in (files, in a
    /// state directory).
    public static let regionNames = ["arena", "frame-owners", "handles"]

    public static let frameSize = FrameArena.frameSize
    public static let blockSize = FrameArena.blockSize

    #if DEBUG
        public static let isDebugBuild = true
    #else
        public static let isDebugBuild = false
    #endif

    public let configuration: Configuration
    public let sizeClasses: SizeClassTable
    let arena: FrameArena
    let zspages: ZSPageTable
    let handles: HandleTable
    let classStates: [SizeClassState]
    /// 0 when there is no limit.
    private let memLimitFrames: Atomic<Int>
    let counters = PoolCounters()

    public enum ConfigurationError: Error, CustomStringConvertible {
        case invalidCapacity(Int)
        case invalidMaxChain(Int)
        case mapFailed(errno: Int32)

        public var description: String {
            switch self {
            case .invalidCapacity(let bytes): "pool capacity must be positive and at most 64 GiB, got \(bytes)"
            case .invalidMaxChain(let chain): "max chain must be 1...\(SizeClassTable.maxChainLimit), got \(chain)"
            case .mapFailed(let code): "could not reserve the pool's address space (errno \(code))"
            }
        }
    }

    public init(_ configuration: Configuration) throws(ConfigurationError) {
        guard configuration.capacityBytes > 0,
            configuration.capacityBytes / FrameArena.frameSize <= HandleTable.maximumZspages
        else { throw .invalidCapacity(configuration.capacityBytes) }
        guard (1...SizeClassTable.maxChainLimit).contains(configuration.maxChain) else {
            throw .invalidMaxChain(configuration.maxChain)
        }
        self.configuration = configuration
        sizeClasses = SizeClassTable(maxChain: configuration.maxChain)
        do {
            arena = try FrameArena(capacityBytes: configuration.capacityBytes, placement: configuration.placement)
            zspages = try ZSPageTable(capacity: arena.frameCount)
            handles = try HandleTable(
                capacity: arena.frameCount * (FrameArena.frameSize / SizeClassTable.minimumObjectSize),
                placement: configuration.placement)
        } catch {
            throw .mapFailed(errno: error.rawValue)
        }
        classStates = sizeClasses.classes.map { SizeClassState(spec: $0) }
        memLimitFrames = Atomic(Self.frames(forLimit: configuration.memLimitBytes))
    }

    private static func frames(forLimit bytes: Int?) -> Int {
        guard let bytes else { return 0 }
        return max(1, bytes / FrameArena.frameSize)
    }

    /// The memory limit in bytes (whole frames), nil for none.
    public var memLimitBytes: Int? {
        get {
            let frames = memLimitFrames.load(ordering: .relaxed)
            return frames == 0 ? nil : frames * FrameArena.frameSize
        }
        set { memLimitFrames.store(Self.frames(forLimit: newValue), ordering: .relaxed) }
    }

    /// Bytes of frames in use now (zsmalloc's zs_get_total_pages × PAGE_SIZE).
    public var usedBytes: Int { arena.usedFrameCount.load(ordering: .relaxed) * FrameArena.frameSize }

    /// The most bytes of frames ever in use at once (zram's mem_used_max).
    public var maximumUsedBytes: Int { arena.maximumUsedFrames * FrameArena.frameSize }

    /// Frames freed by compaction since the pool was made (zram's
    /// pages_compacted).
    public var pagesCompacted: Int { counters.pagesCompacted.load(ordering: .relaxed) }

    /// Address space reserved for frames.
    public var capacityBytes: Int { arena.frameCount * FrameArena.frameSize }

    // MARK: Allocate and free

    /// Stores room for an object of `size` bytes (1...4096) and returns its
    /// handle. The object's bytes are unspecified until written.
    public func allocate(size: Int) throws(ZSPoolError) -> ZSHandle {
        guard size > 0, size <= SizeClassTable.maximumObjectSize else { throw .invalidSize(size) }
        let classIndex = sizeClasses.classIndex(forSize: size)
        let state = classStates[classIndex]
        return try state.lists.withLock { (lists: inout ClassLists) throws(ZSPoolError) -> ZSHandle in
            var zspage = lists.allocationCandidate()
            if zspage == ZSPageTable.none {
                zspage = try createZspage(state.spec, &lists)
            }
            let record = zspages.record(zspage)
            let index = Int(record.freeHead)
            guard let handle = handles.allocate(at: ObjectLocation(zspage: zspage, index: index)) else {
                if record.inuse == 0 { destroyZspage(zspage, &lists) }
                throw .arenaFull(capacityBytes: capacityBytes)
            }
            let slots = record.slots.unsafelyUnwrapped
            record.freeHead = slots[index]
            slots[index] = ZSPageTable.allocatedSlot | handle.id
            record.inuse += 1
            lists.objectsUsed += 1
            regroup(zspage, &lists)
            return handle
        }
    }

    /// Frees an object. Returns false, and counts it in `invalidFrees`, for a
    /// handle that is not live (or stops the process when so configured):
    /// never silent corruption.
    @discardableResult
    public func free(_ handle: ZSHandle) -> Bool {
        guard let location = handles.pin(handle) else {
            counters.invalidFrees.add(1, ordering: .relaxed)
            if configuration.trapOnInvalidFree {
                preconditionFailure("ZSPool.free: \(handle) is not a live handle (double free?)")
            }
            return false
        }
        // Pinned: the object cannot move, so its zspage and class are stable.
        let record = zspages.record(location.zspage)
        let state = classStates[Int(record.classIndex)]
        state.lists.withLock { lists in
            let slots = record.slots.unsafelyUnwrapped
            slots[location.index] = record.freeHead
            record.freeHead = UInt32(location.index)
            record.inuse -= 1
            lists.objectsUsed -= 1
            handles.release(id: handle.id)
            if record.inuse == 0 && !(state.spec.keepsSpareZspage && lists.objectsUsed > 0 && lists.spare == nil) {
                destroyZspage(location.zspage, &lists)
            } else {
                regroup(location.zspage, &lists)
            }
            if lists.objectsUsed == 0, let spare = lists.spare {
                // A class with no objects holds no memory.
                destroyZspage(spare, &lists)
            }
        }
        return true
    }

    // MARK: Object access

    /// Copies `bytes` into the object at `offset`.
    public func write(_ handle: ZSHandle, from bytes: UnsafeRawBufferPointer, at offset: Int = 0) throws(ZSPoolError) {
        try withObjectSegments(handle, offset: offset, count: bytes.count) { first, second in
            first.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[..<first.count]))
            if let second {
                second.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[first.count...]))
            }
        }
    }

    /// Copies `buffer.count` bytes of the object, from `offset`, into `buffer`.
    public func read(
        _ handle: ZSHandle, into buffer: UnsafeMutableRawBufferPointer, from offset: Int = 0
    )
        throws(ZSPoolError)
    {
        try withObjectSegments(handle, offset: offset, count: buffer.count) { first, second in
            buffer.copyMemory(from: UnsafeRawBufferPointer(first))
            if let second {
                UnsafeMutableRawBufferPointer(rebasing: buffer[first.count...])
                    .copyMemory(from: UnsafeRawBufferPointer(second))
            }
        }
    }

    /// Calls `body` with the first `count` bytes of the object, in place when
    /// they lie in one frame, else through a copy on the stack. The pointer is
    /// valid only inside `body`; the object is pinned meanwhile, so `body`
    /// must not call back into the pool for the same handle.
    public func withObjectBytes<Result>(
        _ handle: ZSHandle, count: Int, _ body: (UnsafeRawBufferPointer) -> Result
    ) throws(ZSPoolError) -> Result {
        try withObjectSegments(handle, offset: 0, count: count) { first, second in
            guard let second else { return body(UnsafeRawBufferPointer(first)) }
            return withUnsafeTemporaryAllocation(byteCount: count, alignment: 16) { copy in
                copy.copyMemory(from: UnsafeRawBufferPointer(first))
                UnsafeMutableRawBufferPointer(rebasing: copy[first.count...]).copyMemory(
                    from: UnsafeRawBufferPointer(second))
                return body(UnsafeRawBufferPointer(copy))
            }
        }
    }

    /// Pins the handle and holds its zspage's read lock around `body`.
    private func withPinnedObject<Result>(
        _ handle: ZSHandle, _ body: (ZSPageRecord, ObjectLocation) throws(ZSPoolError) -> Result
    ) throws(ZSPoolError) -> Result {
        guard let location = handles.pin(handle) else { throw .invalidHandle(handle) }
        defer { handles.unpin(id: handle.id) }
        zspages.readLock(location.zspage)
        defer { zspages.readUnlock(location.zspage) }
        return try body(zspages.record(location.zspage), location)
    }

    /// The one or two in-frame ranges holding `count` bytes of the object from
    /// `offset`, under the pin and zspage read lock.
    private func withObjectSegments<Result>(
        _ handle: ZSHandle, offset: Int, count: Int,
        _ body: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer?) -> Result
    ) throws(ZSPoolError) -> Result {
        try withPinnedObject(handle) { (record, location) throws(ZSPoolError) -> Result in
            let size = classStates[Int(record.classIndex)].spec.size
            guard offset >= 0, count >= 0, offset + count <= size else {
                throw .outOfBounds(offset: offset, count: count, objectSize: size)
            }
            let (first, second) = segments(record, index: location.index, size: size, offset: offset, count: count)
            return body(first, second)
        }
    }

    /// Where bytes `offset..<offset+count` of object `index` lie. The caller
    /// holds the zspage's read lock, its write lock, or its class lock.
    func segments(
        _ record: ZSPageRecord, index: Int, size: Int, offset: Int = 0, count: Int
    ) -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer?) {
        assert(index >= 0 && index < Int(record.objectsPerZspage), "object \(index) outside its zspage")
        assert(
            offset >= 0 && count >= 0 && offset + count <= size,
            "bytes \(offset)+\(count) outside a \(size)-byte object")
        let start = index * size + offset
        let frameIndex = start >> FrameArena.frameShift
        let inFrame = start & (FrameArena.frameSize - 1)
        let firstCount = min(count, FrameArena.frameSize - inFrame)
        let first = UnsafeMutableRawBufferPointer(
            start: arena.address(of: record.frames[frameIndex]) + inFrame, count: firstCount)
        guard firstCount < count else { return (first, nil) }
        let second = UnsafeMutableRawBufferPointer(
            start: arena.address(of: record.frames[frameIndex + 1]), count: count - firstCount)
        return (first, second)
    }

    // MARK: zspage life cycle (caller holds the class lock)

    func createZspage(_ spec: SizeClassSpec, _ lists: inout ClassLists) throws(ZSPoolError) -> UInt32 {
        guard let zspage = zspages.allocateId() else { throw .arenaFull(capacityBytes: capacityBytes) }
        let record = zspages.record(zspage)
        let objects = spec.objectsPerZspage
        let heapBytes = record.makeLists(objects: objects, frames: spec.framesPerZspage)
        let limit = memLimitFrames.load(ordering: .relaxed)
        do {
            try arena.allocateZspageFrames(
                count: spec.framesPerZspage, owner: zspage, classIndex: spec.index,
                firstObjectOffsets: spec.firstObjectOffsets, limitFrames: limit == 0 ? nil : limit
            ) { index, frame in
                record.frames[index] = frame
            }
        } catch {
            record.freeLists()
            zspages.releaseId(zspage)
            switch error {
            case .memLimit: throw .memLimitReached(limitBytes: limit * FrameArena.frameSize)
            case .full: throw .arenaFull(capacityBytes: capacityBytes)
            case .noRoom(let error): throw .noRoomForState(errno: error.rawValue)
            }
        }
        let slots = record.slots.unsafelyUnwrapped
        for index in 0..<objects {
            slots[index] = index + 1 < objects ? UInt32(index + 1) : ZSPageTable.endOfFreeList
        }
        record.classIndex = UInt16(spec.index)
        record.inuse = 0
        record.freeHead = 0
        lists.zspageCount += 1
        lists.listBytes += heapBytes
        lists.insert(zspage, group: FullnessGroup.of(inuse: 0, objects: objects), table: zspages)
        return zspage
    }

    /// Frees an empty zspage's frames and record.
    func destroyZspage(_ zspage: UInt32, _ lists: inout ClassLists) {
        let record = zspages.record(zspage)
        precondition(record.inuse == 0, "destroying a zspage with live objects")
        lists.remove(zspage, table: zspages)
        let frames = record.frames
        arena.free(frames: UnsafeBufferPointer(start: frames.base, count: frames.count))
        lists.zspageCount -= 1
        lists.listBytes -= record.freeLists()
        record.freeHead = ZSPageTable.endOfFreeList
        zspages.releaseId(zspage)
    }

    /// Moves a zspage to the fullness list its in-use count calls for.
    func regroup(_ zspage: UInt32, _ lists: inout ClassLists) {
        let record = zspages.record(zspage)
        let group = FullnessGroup.of(inuse: Int(record.inuse), objects: Int(record.objectsPerZspage))
        guard group != Int(record.group) else { return }
        lists.remove(zspage, table: zspages)
        lists.insert(zspage, group: group, table: zspages)
    }
}

/// The 12 fullness lists of a class, by in-use ratio.
enum FullnessGroup {
    static let empty = 0
    static let full = 11
    static let count = 12

    /// 0 empty; 1...10 for in-use ratios 0-9%, ..., 90-99%; 11 full.
    static func of(inuse: Int, objects: Int) -> Int {
        if inuse == 0 { return empty }
        if inuse >= objects { return full }
        return 1 + inuse * 10 / objects
    }
}

/// One class's shared state: its spec and, under its lock, its lists.
final class SizeClassState: Sendable {
    let spec: SizeClassSpec
    let lists: Locked<ClassLists>

    init(spec: SizeClassSpec) {
        self.spec = spec
        lists = Locked(ClassLists(), level: .sizeClass, rank: spec.index)
    }
}

/// The fullness lists (intrusive, through the zspage records) and the class's
/// counters. Only ever used under the class lock.
struct ClassLists {
    var heads = [UInt32](repeating: ZSPageTable.none, count: FullnessGroup.count)
    var groupCounts = [Int](repeating: 0, count: FullnessGroup.count)
    var zspageCount = 0
    var objectsUsed = 0
    /// Heap bytes of the class's zspages' slot and frame lists (those that
    /// do not fit in their records).
    var listBytes = 0

    /// The class's empty zspage, if it keeps one (`keepsSpareZspage`): kept
    /// on the empty list, where allocation takes it last and compaction,
    /// which drains the emptiest zspage first, frees it.
    var spare: UInt32? {
        heads[FullnessGroup.empty] == ZSPageTable.none ? nil : heads[FullnessGroup.empty]
    }

    /// The fullest zspage with a free slot, or `none`.
    func allocationCandidate() -> UInt32 {
        for group in stride(from: FullnessGroup.full - 1, through: FullnessGroup.empty, by: -1)
        where heads[group] != ZSPageTable.none {
            return heads[group]
        }
        return ZSPageTable.none
    }

    mutating func insert(_ zspage: UInt32, group: Int, table: ZSPageTable) {
        let record = table.record(zspage)
        record.group = UInt8(group)
        record.previous = ZSPageTable.none
        record.next = heads[group]
        if heads[group] != ZSPageTable.none {
            table.record(heads[group]).previous = zspage
        }
        heads[group] = zspage
        groupCounts[group] += 1
    }

    mutating func remove(_ zspage: UInt32, table: ZSPageTable) {
        let record = table.record(zspage)
        let group = Int(record.group)
        let previous = record.previous
        let next = record.next
        if previous != ZSPageTable.none {
            table.record(previous).next = next
        } else {
            heads[group] = next
        }
        if next != ZSPageTable.none {
            table.record(next).previous = previous
        }
        record.previous = ZSPageTable.none
        record.next = ZSPageTable.none
        groupCounts[group] -= 1
    }

    /// Every zspage on the list of `group`, head first.
    func members(of group: Int, table: ZSPageTable) -> [UInt32] {
        var result: [UInt32] = []
        var cursor = heads[group]
        while cursor != ZSPageTable.none {
            result.append(cursor)
            cursor = table.record(cursor).next
        }
        return result
    }
}

/// Event counters, readable at any time.
final class PoolCounters: Sendable {
    let invalidFrees = Atomic<Int>(0)
    let pagesCompacted = Atomic<Int>(0)
    let objectsCompacted = Atomic<Int>(0)
    let compactionSkips = Atomic<Int>(0)
    let framesMigrated = Atomic<Int>(0)
    let migrationSkips = Atomic<Int>(0)
}
