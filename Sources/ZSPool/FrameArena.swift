import Synchronization
import SystemPackage
import ZNBDSystem

/// The memory of the pool: one region (MemoryRegion: anonymous, or a file
/// that outlives the process) reserved at start-up, cut into 4 KiB frames
/// grouped in 2 MiB blocks.
///
/// Frames are the pool's PFNs: a frame number names a frame for its whole
/// life, and the per-frame metadata (owner zspage, index in it, first-object
/// offset) lives here, outside the mapping, so moving a frame's contents
/// never leaves a stale pointer in the moved bytes.
///
/// Residency: a block is *resident* once a frame in it has been handed out;
/// it is prepared (for a file: reserved, so that "no room" is an error here,
/// never a SIGBUS on first touch) as it becomes so. When its last used frame
/// is freed the block goes back to the kernel (MADV_DONTNEED, or a hole
/// punched in the file) and counts as released, so memory falls by 2 MiB. The block that new frames currently come from is kept while
/// empty, so an allocate/free loop on one frame does not fault and release
/// it each time; `releaseEmptyBlocks` lets it go too.
///
/// All state is under one mutex (the innermost lock of the pool). The mapping
/// itself is never moved or resized; `address(of:)` is valid until deinit.
final class FrameArena: @unchecked Sendable {
    // @unchecked: `mapping` is immutable (its bytes belong to whoever holds
    // the locks the pool's map describes); every mutable field is inside
    // `state` (a lock) or an Atomic.

    /// A frame is one page.
    static let frameSize = pageSize
    static let frameShift = pageShift
    static let framesPerBlock = 512
    static let blockSize = frameSize * framesPerBlock
    static let wordsPerBlock = framesPerBlock / 64
    /// The owner words of one block: one page of the owner region.
    static let ownerBytesPerBlock = framesPerBlock * MemoryLayout<UInt64>.stride
    /// No frame: the sentinel in per-frame and per-zspage tables.
    static let noFrame = UInt32.max
    /// Orders of free runs reported by `frameInfo` (1 frame ... 512 frames).
    static let orderCount = 10

    private let region: MemoryRegion
    /// Backs State.owners.
    private let ownerRegion: MemoryRegion
    /// The mapping's first frame, on a 2 MiB boundary.
    let base: UnsafeMutableRawPointer
    let frameCount: Int
    let blockCount: Int

    /// Frames in use, readable without the lock for statistics.
    let usedFrameCount = Atomic<Int>(0)

    /// Who owns a used frame. Kept here, under the arena lock, so that
    /// migration can find a frame's class before it holds any class lock.
    struct FrameOwner: Equatable {
        var zspage: UInt32
        var classIndex: UInt16
        var index: UInt8
        var firstObjectOffset: UInt16

        static let free = FrameOwner(zspage: FrameArena.noFrame, classIndex: 0, index: 0, firstObjectOffset: 0)
    }

    /// One owner per frame, one word each, where all-zero bits are a free
    /// frame: frames never used cost no memory. Each block's 512 words are
    /// one page of the region, prepared and released with the block.
    ///
    ///     bits  0...31   the owner's zspage id plus one; 0: a free frame
    ///     bits 32...39   the owner's class index
    ///     bits 40...47   the frame's index in its zspage
    ///     bits 48...63   the in-frame offset of the first object starting in it
    ///
    /// One word, stored whole (releasing): in a region that outlives the
    /// process, the owners are what the next daemon rebuilds its zspages
    /// from (docs/STATE-DESIGN.md), so no kill may leave half an entry.
    struct OwnerTable {
        fileprivate let entries: UnsafeMutablePointer<Atomic<UInt64>>
        let count: Int

        static func byteCount(frames: Int) -> Int { frames * MemoryLayout<UInt64>.stride }

        init(_ region: MemoryRegion, count: Int) {
            // Zero bits are a valid Atomic<UInt64> (a free frame): binding
            // the fresh region is its initialisation.
            entries = region.bindZeroed(to: Atomic<UInt64>.self, count: count)
            self.count = count
        }

        static func pack(_ owner: FrameOwner) -> UInt64 {
            guard owner != .free else { return 0 }
            assert(owner.classIndex <= UInt8.max && owner.zspage < UInt32.max, "a frame owner does not fit its word")
            return UInt64(owner.zspage + 1) | UInt64(owner.classIndex) << 32 | UInt64(owner.index) << 40
                | UInt64(owner.firstObjectOffset) << 48
        }

        static func unpack(_ word: UInt64) -> FrameOwner {
            guard word & 0xFFFF_FFFF != 0 else { return .free }
            return FrameOwner(
                zspage: UInt32(truncatingIfNeeded: word) - 1, classIndex: UInt16(truncatingIfNeeded: word >> 32) & 0xFF,
                index: UInt8(truncatingIfNeeded: word >> 40), firstObjectOffset: UInt16(truncatingIfNeeded: word >> 48))
        }

        subscript(frame: Int) -> FrameOwner {
            get {
                assert(frame >= 0 && frame < count, "frame \(frame) outside the arena")
                return Self.unpack(entries[frame].load(ordering: .relaxed))
            }
            nonmutating set {
                assert(frame >= 0 && frame < count, "frame \(frame) outside the arena")
                entries[frame].store(Self.pack(newValue), ordering: .releasing)
            }
        }
    }

    private struct State: ~Copyable {
        /// Bit set = frame in use; `wordsPerBlock` words per block.
        var usedBits: [UInt64]
        var usedInBlock: [UInt16]
        var resident: [Bool]
        /// How many entries of `resident` are true.
        var residentBlocks = 0
        /// Owner of each used frame (`.free` when free).
        let owners: OwnerTable
        /// The block new frames come from while it has room.
        var currentBlock: Int?
        var maximumUsedFrames = 0
        var blocksReleased = 0
        var blocksFaultedIn = 0
    }

    private let state: Locked<State>

    /// Reserves `capacityBytes` (rounded up to whole blocks) of address
    /// space, starting on a 2 MiB boundary.
    ///
    /// Not backed by transparent huge pages (no MADV_HUGEPAGE): a released
    /// block that is used again would be faulted in and zeroed 2 MiB at a
    /// time, and with the maintenance thread releasing blocks that a steady
    /// write load refills, that cost random 4 KiB reads a 2.5x higher p99
    /// (tools/bench-maintenance), for no gain in the device's throughput
    /// (tools/bench-device, THP on and off alike). With 4 KiB pages a block
    /// also costs RSS only for the frames ever touched.
    init(capacityBytes: Int, placement: RegionPlacement = .anonymous) throws(Errno) {
        let blocks = max(1, (capacityBytes + Self.blockSize - 1) / Self.blockSize)
        blockCount = blocks
        frameCount = blocks * Self.framesPerBlock
        region = try placement.region("arena", byteCount: blocks * Self.blockSize, alignment: Self.blockSize)
        ownerRegion = try placement.region(
            "frame-owners", byteCount: OwnerTable.byteCount(frames: blocks * Self.framesPerBlock))
        base = region.base
        state = Locked(
            State(
                usedBits: [UInt64](repeating: 0, count: blocks * Self.wordsPerBlock),
                usedInBlock: [UInt16](repeating: 0, count: blocks),
                resident: [Bool](repeating: false, count: blocks),
                owners: OwnerTable(ownerRegion, count: blocks * Self.framesPerBlock)),
            level: .arena)
    }

    /// The first byte of `frame`. Valid until the arena is destroyed; the
    /// bytes belong to whoever holds the locks the pool's map describes.
    @inline(__always)
    func address(of frame: UInt32) -> UnsafeMutableRawPointer {
        assert(Int(frame) < frameCount, "frame \(frame) is outside the arena")
        return base + (Int(frame) << Self.frameShift)
    }

    // MARK: Allocation

    enum AllocationFailure: Error {
        case memLimit
        case full
        /// The filesystem under the region had no room for a block.
        case noRoom(Errno)
    }

    /// Takes `count` frames for one zspage, all or none, and records their
    /// owner. Fails when `limitFrames` (if any) or the arena would be
    /// exceeded, or when a block that would become resident finds no room
    /// under the region. `body(i, frame)` receives each frame in order.
    func allocateZspageFrames(
        count: Int, owner zspage: UInt32, classIndex: Int, firstObjectOffsets: [Int], limitFrames: Int?,
        _ body: (Int, UInt32) -> Void
    ) throws(AllocationFailure) {
        try state.withLock { (state: inout State) throws(AllocationFailure) -> Void in
            let used = usedFrameCount.load(ordering: .relaxed)
            if let limitFrames, used + count > limitFrames { throw .memLimit }
            if used + count > frameCount { throw .full }
            try withUnsafeTemporaryAllocation(of: UInt32.self, capacity: count) {
                (frames) throws(AllocationFailure) -> Void in
                for index in 0..<count {
                    do throws(AllocationFailure) {
                        // Not nil: there are at least `count` free frames.
                        frames[index] = try takeFrame(&state, inBlock: nil)!
                    } catch {
                        for taken in frames[..<index] { freeFrame(taken, &state) }
                        throw error
                    }
                }
                for (index, frame) in frames.enumerated() {
                    state.owners[Int(frame)] = FrameOwner(
                        zspage: zspage, classIndex: UInt16(classIndex), index: UInt8(index),
                        firstObjectOffset: UInt16(firstObjectOffsets[index]))
                    body(index, frame)
                }
            }
            noteUsage(&state)
        }
    }

    /// Takes one frame in block `block` for a frame migrating into it. Nil
    /// when the block is full. The frame has no owner until
    /// `completeMigration`: until then it is free to a daemon that finds
    /// it after a kill, which is right, as its copy may be incomplete.
    func allocateMigrationTarget(inBlock block: Int) -> UInt32? {
        state.withLock { state in
            // A resident block was prepared: taking a frame in it cannot fail.
            guard let frame = try? takeFrame(&state, inBlock: block) else { return nil }
            noteUsage(&state)
            return frame
        }
    }

    /// Gives `target`, now a whole copy of `source`, the source's owner,
    /// then frees the source. Between the two stores both frames name the
    /// same place in one zspage, with the same bytes: a daemon that finds
    /// that keeps one.
    func completeMigration(from source: UInt32, to target: UInt32, owner: FrameOwner) {
        state.withLock { state in
            state.owners[Int(target)] = owner
            freeFrame(source, &state)
        }
    }

    /// Returns frames to the arena; a block left with no used frame goes back
    /// to the kernel unless it is the current allocation block.
    func free(frames: some Sequence<UInt32>) {
        state.withLock { state in
            for frame in frames { freeFrame(frame, &state) }
        }
    }

    private func freeFrame(_ frame: UInt32, _ state: inout State) {
        let index = Int(frame)
        let block = index / Self.framesPerBlock
        let word = index / 64
        let bit = UInt64(1) << UInt64(index % 64)
        precondition(state.usedBits[word] & bit != 0, "frame \(frame) freed twice")
        state.usedBits[word] &= ~bit
        state.usedInBlock[block] -= 1
        state.owners[index] = .free
        usedFrameCount.subtract(1, ordering: .relaxed)
        if state.usedInBlock[block] == 0, state.currentBlock != block {
            release(block: block, &state)
        }
    }

    /// Releases every resident block that has no used frame, the current
    /// allocation block included. Returns how many were released.
    @discardableResult
    func releaseEmptyBlocks() -> Int {
        state.withLock { state in
            var released = 0
            for block in 0..<blockCount where state.resident[block] && state.usedInBlock[block] == 0 {
                if state.currentBlock == block { state.currentBlock = nil }
                release(block: block, &state)
                released += 1
            }
            return released
        }
    }

    /// Frames of resident blocks, and frames in use, read together.
    func residency() -> (residentFrames: Int, usedFrames: Int) {
        state.withLock { state in
            (state.residentBlocks * Self.framesPerBlock, usedFrameCount.load(ordering: .relaxed))
        }
    }

    /// The owner recorded for `frame`, or nil when it is free.
    func owner(of frame: UInt32) -> FrameOwner? {
        state.withLock { state in
            let owner = state.owners[Int(frame)]
            return owner.zspage == Self.noFrame ? nil : owner
        }
    }

    /// The most frames ever in use at once.
    var maximumUsedFrames: Int { state.withLock { $0.maximumUsedFrames } }

    /// Blocks given back to the kernel since the arena was made.
    var releasedBlockCount: Int { state.withLock { $0.blocksReleased } }

    private func noteUsage(_ state: inout State) {
        let used = usedFrameCount.load(ordering: .relaxed)
        if used > state.maximumUsedFrames { state.maximumUsedFrames = used }
    }

    private func release(block: Int, _ state: inout State) {
        guard state.resident[block] else { return }
        region.release(offset: block * Self.blockSize, count: Self.blockSize)
        // The block's owners are all free (zero) now: their page goes too.
        ownerRegion.release(offset: block * Self.ownerBytesPerBlock, count: Self.ownerBytesPerBlock)
        state.resident[block] = false
        state.residentBlocks -= 1
        state.blocksReleased += 1
    }

    /// Picks a frame: in `block` when given, else in the current block, else
    /// in the fullest resident block with room (so sparse blocks drain), else
    /// in the lowest block not resident, which is prepared first (throwing
    /// `noRoom` when the region's filesystem is full).
    private func takeFrame(_ state: inout State, inBlock requested: Int?) throws(AllocationFailure) -> UInt32? {
        let block: Int
        if let requested {
            guard state.usedInBlock[requested] < Self.framesPerBlock else { return nil }
            block = requested
        } else if let current = state.currentBlock, state.usedInBlock[current] < Self.framesPerBlock {
            block = current
        } else {
            guard let chosen = Self.chooseAllocationBlock(state) else { return nil }
            state.currentBlock = chosen
            block = chosen
        }
        if !state.resident[block] {
            do {
                try region.prepare(offset: block * Self.blockSize, count: Self.blockSize)
            } catch {
                if state.currentBlock == block { state.currentBlock = nil }
                throw .noRoom(error)
            }
            do {
                try ownerRegion.prepare(offset: block * Self.ownerBytesPerBlock, count: Self.ownerBytesPerBlock)
            } catch {
                // The block's reservation goes back: it holds nothing yet.
                region.release(offset: block * Self.blockSize, count: Self.blockSize)
                if state.currentBlock == block { state.currentBlock = nil }
                throw .noRoom(error)
            }
            state.resident[block] = true
            state.residentBlocks += 1
            state.blocksFaultedIn += 1
        }
        for wordIndex in 0..<Self.wordsPerBlock {
            let word = block * Self.wordsPerBlock + wordIndex
            let free = ~state.usedBits[word]
            if free != 0 {
                let bit = free.trailingZeroBitCount
                state.usedBits[word] |= UInt64(1) << UInt64(bit)
                state.usedInBlock[block] += 1
                usedFrameCount.add(1, ordering: .relaxed)
                return UInt32(word * 64 + bit)
            }
        }
        preconditionFailure("block \(block) counted room but its bitmap is full")
    }

    private static func chooseAllocationBlock(_ state: borrowing State) -> Int? {
        var best: Int?
        var bestUsed = -1
        var firstIdle: Int?
        for block in 0..<state.usedInBlock.count {
            let used = Int(state.usedInBlock[block])
            if state.resident[block] {
                if used < framesPerBlock && used > bestUsed {
                    best = block
                    bestUsed = used
                }
            } else if firstIdle == nil {
                firstIdle = block
            }
        }
        return best ?? firstIdle
    }

    // MARK: Resuming a state

    /// Whether the arena and its owners are files an earlier process made.
    var isResumable: Bool { region.isPersistent && !region.isNew && !ownerRegion.isNew }

    /// The owners a previous process left in the owner words it wrote (a
    /// state file), frame by frame; nothing is changed. Empty for an arena
    /// in anonymous memory.
    func writtenOwners() throws(Errno) -> [(frame: UInt32, owner: FrameOwner)] {
        // Read only what was written: a hole would be allocated by the read.
        guard let ranges = try ownerRegion.writtenRanges() else { return [] }
        var found: [(frame: UInt32, owner: FrameOwner)] = []
        state.withLock { state in
            for range in ranges {
                for frame in range.lowerBound / 8..<min(range.upperBound / 8, frameCount) {
                    let owner = state.owners[frame]
                    if owner != .free { found.append((UInt32(frame), owner)) }
                }
            }
        }
        return found
    }

    /// Resumes the arena with the frames of `kept` in use, whose owner words
    /// hold their owners: every other owner word is cleared, each block with
    /// a kept frame is prepared again and resident, and every other block,
    /// with its owners' page, is released (what a dead process reserved and
    /// never used goes back). Runs before any other use of the arena.
    func resume(keeping kept: [UInt32]) throws(Errno) {
        try state.withLock { (state: inout State) throws(Errno) -> Void in
            for frame in kept {
                let index = Int(frame)
                let bit = UInt64(1) << UInt64(index % 64)
                precondition(state.usedBits[index / 64] & bit == 0, "frame \(frame) kept twice")
                state.usedBits[index / 64] |= bit
                state.usedInBlock[index / Self.framesPerBlock] += 1
            }
            var releaseStart: Int?
            for block in 0...blockCount {
                let used = block < blockCount && state.usedInBlock[block] > 0
                if used || block == blockCount, let start = releaseStart {
                    region.release(offset: start * Self.blockSize, count: (block - start) * Self.blockSize)
                    ownerRegion.release(
                        offset: start * Self.ownerBytesPerBlock, count: (block - start) * Self.ownerBytesPerBlock)
                    releaseStart = nil
                }
                guard block < blockCount else { break }
                guard used else {
                    if releaseStart == nil { releaseStart = block }
                    continue
                }
                try region.prepare(offset: block * Self.blockSize, count: Self.blockSize)
                try ownerRegion.prepare(offset: block * Self.ownerBytesPerBlock, count: Self.ownerBytesPerBlock)
                state.resident[block] = true
                state.residentBlocks += 1
                for frame in block * Self.framesPerBlock..<(block + 1) * Self.framesPerBlock
                where state.usedBits[frame / 64] & (UInt64(1) << UInt64(frame % 64)) == 0 {
                    state.owners[frame] = .free
                }
            }
            usedFrameCount.store(kept.count, ordering: .relaxed)
            state.maximumUsedFrames = kept.count
        }
    }

    // MARK: Inspection

    struct BlockUsage {
        var block: Int
        var usedFrames: Int
    }

    /// Used-frame counts of resident blocks, and the current allocation block.
    func residentBlockUsage() -> (blocks: [BlockUsage], current: Int?) {
        state.withLock { state in
            var blocks: [BlockUsage] = []
            for block in 0..<blockCount where state.resident[block] {
                blocks.append(BlockUsage(block: block, usedFrames: Int(state.usedInBlock[block])))
            }
            return (blocks, state.currentBlock)
        }
    }

    /// The used frames of `block`.
    func usedFrames(inBlock block: Int) -> [UInt32] {
        state.withLock { state in
            var frames: [UInt32] = []
            for wordIndex in 0..<Self.wordsPerBlock {
                var word = state.usedBits[block * Self.wordsPerBlock + wordIndex]
                while word != 0 {
                    let bit = word.trailingZeroBitCount
                    frames.append(UInt32((block * Self.wordsPerBlock + wordIndex) * 64 + bit))
                    word &= word - 1
                }
            }
            return frames
        }
    }

    struct Snapshot {
        var usedFrames: Int
        var maximumUsedFrames: Int
        var residentBlocks: Int
        var blocksReleased: Int
        var blocksFaultedIn: Int
        /// Free runs of resident frames split into naturally aligned
        /// power-of-two pieces, counted by order (0 = 1 frame ... 9 = 512),
        /// as a buddy allocator would hold them (/proc/buddyinfo's figure).
        var freeRunsByOrder: [Int]
        /// Resident blocks by used frames, in eighths of a block: [0] empty,
        /// [1] 1...64 used, ..., [8] 449...512 used.
        var blockOccupancy: [Int]
    }

    func snapshot() -> Snapshot {
        state.withLock { state in
            var orders = [Int](repeating: 0, count: Self.orderCount)
            var occupancy = [Int](repeating: 0, count: 9)
            var residentBlocks = 0
            for block in 0..<blockCount where state.resident[block] {
                residentBlocks += 1
                let used = Int(state.usedInBlock[block])
                occupancy[used == 0 ? 0 : (used + 63) / 64] += 1
                Self.countFreeRuns(state, block: block, into: &orders)
            }
            return Snapshot(
                usedFrames: usedFrameCount.load(ordering: .relaxed),
                maximumUsedFrames: state.maximumUsedFrames, residentBlocks: residentBlocks,
                blocksReleased: state.blocksReleased, blocksFaultedIn: state.blocksFaultedIn,
                freeRunsByOrder: orders, blockOccupancy: occupancy)
        }
    }

    private static func countFreeRuns(_ state: borrowing State, block: Int, into orders: inout [Int]) {
        let first = block * framesPerBlock
        var frame = first
        let end = first + framesPerBlock
        while frame < end {
            if state.usedBits[frame / 64] & (UInt64(1) << UInt64(frame % 64)) != 0 {
                frame += 1
                continue
            }
            // Greedy buddy split: the largest aligned power of two that starts
            // here, is free throughout and stays inside the block.
            var order = orderCount - 1
            while order > 0 {
                let length = 1 << order
                if (frame - first) % length == 0, frame + length <= end,
                    isFree(state, from: frame, count: length)
                {
                    break
                }
                order -= 1
            }
            orders[order] += 1
            frame += 1 << order
        }
    }

    private static func isFree(_ state: borrowing State, from frame: Int, count: Int) -> Bool {
        for candidate in frame..<(frame + count)
        where state.usedBits[candidate / 64] & (UInt64(1) << UInt64(candidate % 64)) != 0 {
            return false
        }
        return true
    }

    /// Arena-side invariants, for the pool's validator: bitmaps, counts and
    /// owners agree. Returns the owner of every used frame.
    func validate() throws(PoolCorruption) -> [UInt32: FrameOwner] {
        try state.withLock { (state: inout State) throws(PoolCorruption) -> [UInt32: FrameOwner] in
            var owners: [UInt32: FrameOwner] = [:]
            var totalUsed = 0
            for block in 0..<blockCount {
                var used = 0
                for wordIndex in 0..<Self.wordsPerBlock {
                    used += state.usedBits[block * Self.wordsPerBlock + wordIndex].nonzeroBitCount
                }
                guard used == Int(state.usedInBlock[block]) else {
                    throw PoolCorruption(
                        "block \(block): bitmap has \(used) used, count says \(state.usedInBlock[block])")
                }
                guard used == 0 || state.resident[block] else {
                    throw PoolCorruption("block \(block) has \(used) used frames but is not resident")
                }
                totalUsed += used
            }
            guard totalUsed == usedFrameCount.load(ordering: .relaxed) else {
                throw PoolCorruption(
                    "arena: \(totalUsed) frames in bitmaps, counter says \(usedFrameCount.load(ordering: .relaxed))")
            }
            let resident = state.resident.count { $0 }
            guard resident == state.residentBlocks else {
                throw PoolCorruption("arena: \(resident) blocks resident, counter says \(state.residentBlocks)")
            }
            for frame in 0..<frameCount {
                let isUsed = state.usedBits[frame / 64] & (UInt64(1) << UInt64(frame % 64)) != 0
                let owner = state.owners[frame]
                guard isUsed == (owner.zspage != Self.noFrame) else {
                    throw PoolCorruption("frame \(frame): used=\(isUsed) but owner is \(owner.zspage)")
                }
                if isUsed { owners[UInt32(frame)] = owner }
            }
            return owners
        }
    }
}
