/// One size class: every object in it occupies `size` bytes of a zspage of
/// `framesPerZspage` frames holding `objectsPerZspage` objects.
public struct SizeClassSpec: Sendable, Equatable {
    /// Position in `SizeClassTable.classes` (ascending size).
    public let index: Int
    /// Bytes per object slot: the largest size this class serves.
    public let size: Int
    public let framesPerZspage: Int
    public let objectsPerZspage: Int
    /// For each frame of a zspage, the in-frame offset of the first object
    /// that *starts* in that frame, stored rather than recomputed (zsmalloc's
    /// 2016 page-migration series computed it wrongly for frames after the
    /// first, and KASAN caught migration writing into payload bytes). An offset whose object index is past `objectsPerZspage`
    /// lies in tail waste: no object starts in that frame.
    public let firstObjectOffsets: [Int]

    /// One object per one-frame zspage: a raw page.
    public var isHuge: Bool { framesPerZspage == 1 && objectsPerZspage == 1 }

    /// Whether the class keeps one empty zspage, when one empties, for its
    /// next allocation instead of freeing it: where a zspage holds so few
    /// objects that steady churn would make and destroy one every few
    /// objects (each time a frame from the arena, a zspage id and a slot
    /// table, all under the class lock). Holding at most one spare in each
    /// such class costs 9 frames over all of them with the default chain.
    public var keepsSpareZspage: Bool { objectsPerZspage <= 4 }

    /// Bytes of each zspage no object can use.
    public var wastedBytesPerZspage: Int { framesPerZspage * FrameArena.frameSize - objectsPerZspage * size }
}

/// The size classes of a pool, built as mm/zsmalloc.c builds them.
///
/// Sizes run from 32 bytes in steps of 16 up to 4096 (255 size indices).
/// Each size picks the zspage length, 1 to `maxChain` frames, with the
/// highest whole-percent use of its frames (the first such length on a tie).
/// Walking from the largest size down, a size whose frames-per-zspage and
/// objects-per-zspage equal those of the class above merges into it: that
/// class, with the larger slot, serves both.
public struct SizeClassTable: Sendable {
    public static let minimumObjectSize = 32
    public static let alignment = 8
    public static let classDelta = 16
    public static let maximumObjectSize = FrameArena.frameSize
    public static let sizeIndexCount = (maximumObjectSize - minimumObjectSize) / classDelta + 1
    /// 8, as the kernel's CONFIG_ZSMALLOC_CHAIN_SIZE: on the seeds' steps the pool holds
    /// 1.022x the compressed bytes at 8 against 1.039x at 4, writes and reads
    /// alike within noise (docs/BENCHMARKS.md).
    public static let defaultMaxChain = 8
    public static let maxChainLimit = 16

    /// Distinct classes in ascending size.
    public let classes: [SizeClassSpec]
    public let maxChain: Int
    private let classForSizeIndex: [UInt16]

    public init(maxChain: Int = SizeClassTable.defaultMaxChain) {
        precondition((1...Self.maxChainLimit).contains(maxChain), "maxChain must be 1...\(Self.maxChainLimit)")
        self.maxChain = maxChain
        // Built top-down so that merging keeps the largest size of each run.
        var descending: [(size: Int, frames: Int, objects: Int)] = []
        var sizeIndexToDescending = [Int](repeating: 0, count: Self.sizeIndexCount)
        for sizeIndex in stride(from: Self.sizeIndexCount - 1, through: 0, by: -1) {
            let size = min(Self.minimumObjectSize + sizeIndex * Self.classDelta, Self.maximumObjectSize)
            let frames = Self.bestFramesPerZspage(size: size, maxChain: maxChain)
            let objects = frames * FrameArena.frameSize / size
            if let previous = descending.last, previous.frames == frames, previous.objects == objects {
                sizeIndexToDescending[sizeIndex] = descending.count - 1
                continue
            }
            descending.append((size, frames, objects))
            sizeIndexToDescending[sizeIndex] = descending.count - 1
        }
        let count = descending.count
        classes = descending.reversed().enumerated().map { index, entry in
            SizeClassSpec(
                index: index, size: entry.size, framesPerZspage: entry.frames, objectsPerZspage: entry.objects,
                firstObjectOffsets: (0..<entry.frames).map { Self.firstObjectOffset(size: entry.size, frame: $0) })
        }
        classForSizeIndex = sizeIndexToDescending.map { UInt16(count - 1 - $0) }
    }

    /// Whole-percent use of `frames` frames by objects of `size` bytes, the
    /// figure zsmalloc's get_pages_per_zspage maximises.
    public static func usedPercent(size: Int, frames: Int) -> Int {
        let zspageBytes = frames * FrameArena.frameSize
        return (zspageBytes - zspageBytes % size) * 100 / zspageBytes
    }

    static func bestFramesPerZspage(size: Int, maxChain: Int) -> Int {
        var best = 1
        var bestPercent = 0
        for frames in 1...maxChain {
            let percent = usedPercent(size: size, frames: frames)
            if percent > bestPercent {
                best = frames
                bestPercent = percent
            }
        }
        return best
    }

    /// Offset within frame `frame` of the first object that starts there:
    /// objects sit back to back from the zspage's start, so the one after
    /// byte `frame * 4096` begins `(size - (frame * 4096) mod size) mod size`
    /// bytes into the frame. For the 48-byte class, frames 1 and 2 give 32, 16.
    public static func firstObjectOffset(size: Int, frame: Int) -> Int {
        (size - (frame * FrameArena.frameSize) % size) % size
    }

    /// The class that stores an object of `size` bytes (1...4096).
    public func classIndex(forSize size: Int) -> Int {
        let clamped = max(size, Self.minimumObjectSize)
        let sizeIndex = (clamped - Self.minimumObjectSize + Self.classDelta - 1) / Self.classDelta
        return Int(classForSizeIndex[sizeIndex])
    }

    /// The class of raw pages (one object per frame), always the last.
    public var hugeClass: SizeClassSpec { classes[classes.count - 1] }

    /// The largest object size stored several to a zspage. An object larger
    /// than this takes a frame of its own, so a compressed page that reaches
    /// it is better stored uncompressed.
    public var hugeThreshold: Int {
        classes.last(where: { !$0.isHuge })?.size ?? 0
    }
}
