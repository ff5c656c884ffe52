public import ZNBDFigures

/// A consistent-enough picture of the pool: each class is read under its
/// own lock, the arena under its lock. The totals are the declared
/// PoolFigure figures; the class table and the frame map beside them are
/// documents of their own (GET /v1/classes, /v1/frames).
public struct ZSPoolFigures: Sendable, Equatable {
    /// One class: its shape, zspages per fullness list ([0] empty,
    /// [1...10] in-use ratio 0-9% ... 90-99%, [11] full), the kernel's
    /// classic groups (almost empty: at most 3/4 used; almost full; full),
    /// and its objects and frames.
    public struct Class: Sendable, Equatable {
        public var index, size, framesPerZspage, objectsPerZspage: Int
        public var isHuge: Bool
        public var zspagesByFullness: [Int]
        public var almostEmpty, almostFull, full, zspages: Int
        public var objectsAllocated, objectsUsed, framesUsed: Int
    }

    public var totals: Figures<PoolFigure>
    public var classes: [Class]
    public var memLimitBytes: Int?
    /// frameinfo: free runs of resident frames by buddy order 0...9.
    public var freeRunsByOrder: [Int]
    /// Resident blocks by used frames: [0] empty, [k] (k-1)/8 < used ≤ k/8.
    public var blockOccupancy: [Int]

    public subscript(figure: PoolFigure) -> Int { totals[figure] }
}

extension ZSPool {
    /// The pool's figures now: a walk of every class, then the arena.
    public func figures() -> ZSPoolFigures {
        var classes: [ZSPoolFigures.Class] = []
        var listBytes = 0
        var liveObjects = 0
        for state in classStates {
            let spec = state.spec
            let entry = state.lists.withLock { lists in
                var almostEmpty = 0
                var almostFull = 0
                for group in FullnessGroup.empty..<FullnessGroup.full {
                    for zspage in lists.members(of: group, table: zspages) {
                        if Int(zspages.record(zspage).inuse) * 4 <= spec.objectsPerZspage * 3 {
                            almostEmpty += 1
                        } else {
                            almostFull += 1
                        }
                    }
                }
                listBytes += lists.listBytes
                liveObjects += lists.objectsUsed
                // `map`, not the array itself: the copy is read after the
                // lock, while I/O changes groupCounts in place (a copy that
                // shared its storage would race; Figures.detached says more).
                return ZSPoolFigures.Class(
                    index: spec.index, size: spec.size, framesPerZspage: spec.framesPerZspage,
                    objectsPerZspage: spec.objectsPerZspage, isHuge: spec.isHuge,
                    zspagesByFullness: lists.groupCounts.map { $0 }, almostEmpty: almostEmpty, almostFull: almostFull,
                    full: lists.groupCounts[FullnessGroup.full], zspages: lists.zspageCount,
                    objectsAllocated: lists.zspageCount * spec.objectsPerZspage, objectsUsed: lists.objectsUsed,
                    framesUsed: lists.zspageCount * spec.framesPerZspage)
            }
            classes.append(entry)
        }
        let arenaSnapshot = arena.snapshot()
        var totals = Figures<PoolFigure>()
        for figure in PoolFigure.allCases {
            totals[figure] =
                switch figure {
                case .capacityBytes: capacityBytes
                case .bytesUsed: arenaSnapshot.usedFrames * FrameArena.frameSize
                case .maximumBytesUsed: arenaSnapshot.maximumUsedFrames * FrameArena.frameSize
                case .framesUsed: arenaSnapshot.usedFrames
                case .framesResident: arenaSnapshot.residentBlocks * FrameArena.framesPerBlock
                case .blocksResident: arenaSnapshot.residentBlocks
                case .blocksReleased: arenaSnapshot.blocksReleased
                case .blocksFaultedIn: arenaSnapshot.blocksFaultedIn
                case .liveObjects: liveObjects
                case .zspages: classes.reduce(0) { $0 + $1.zspages }
                case .metadataBytes: handles.usage().tableBytes + zspages.tableBytes + listBytes
                case .handleTableBytes: handles.usage().tableBytes
                case .zspageTableBytes: zspages.tableBytes
                case .zspageListBytes: listBytes
                case .pagesCompacted: counters.pagesCompacted.load(ordering: .relaxed)
                case .objectsCompacted: counters.objectsCompacted.load(ordering: .relaxed)
                case .compactionSkips: counters.compactionSkips.load(ordering: .relaxed)
                case .framesMigrated: counters.framesMigrated.load(ordering: .relaxed)
                case .migrationSkips: counters.migrationSkips.load(ordering: .relaxed)
                case .invalidFrees: counters.invalidFrees.load(ordering: .relaxed)
                }
        }
        return ZSPoolFigures(
            totals: totals, classes: classes, memLimitBytes: memLimitBytes,
            freeRunsByOrder: arenaSnapshot.freeRunsByOrder, blockOccupancy: arenaSnapshot.blockOccupancy)
    }
}
