/// A consistent-enough picture of the pool: each class is read under its
/// own lock, the arena under its lock.
public struct ZSPoolStats: Sendable, Equatable {
    /// One class: its shape, zspages per fullness list ([0] empty,
    /// [1...10] in-use ratio 0-9% ... 90-99%, [11] full), the kernel's
    /// classic groups (almost empty: at most 3/4 used; almost full; full),
    /// and its objects and frames.
    public struct ClassStats: Sendable, Equatable {
        public var index, size, framesPerZspage, objectsPerZspage: Int
        public var isHuge: Bool
        public var zspagesByFullness: [Int]
        public var almostEmpty, almostFull, full, zspages: Int
        public var objectsAllocated, objectsUsed, framesUsed: Int
    }

    public var classes: [ClassStats]
    public var capacityBytes: Int
    public var memLimitBytes: Int?
    public var framesUsed: Int
    /// Frames of resident blocks (used or not): what the arena costs in RSS.
    public var framesResident: Int
    public var blocksResident: Int
    public var blocksReleased: Int
    public var blocksFaultedIn: Int
    public var bytesUsed: Int
    public var maximumBytesUsed: Int
    public var liveObjects: Int
    /// The pool's own metadata outside the arena.
    public var handleTableBytes: Int
    public var zspageTableBytes: Int
    /// zspages' slot and frame lists too long to sit in their records.
    public var zspageListBytes: Int
    public var pagesCompacted: Int
    public var objectsCompacted: Int
    public var compactionSkips: Int
    public var framesMigrated: Int
    public var migrationSkips: Int
    public var invalidFrees: Int
    /// frameinfo: free runs of resident frames by buddy order 0...9.
    public var freeRunsByOrder: [Int]
    /// Resident blocks by used frames: [0] empty, [k] (k-1)/8 < used ≤ k/8.
    public var blockOccupancy: [Int]

    public var metadataBytes: Int { handleTableBytes + zspageTableBytes + zspageListBytes }
}

extension ZSPool {
    public func stats() -> ZSPoolStats {
        var classes: [ZSPoolStats.ClassStats] = []
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
                return ZSPoolStats.ClassStats(
                    index: spec.index, size: spec.size, framesPerZspage: spec.framesPerZspage,
                    objectsPerZspage: spec.objectsPerZspage, isHuge: spec.isHuge,
                    zspagesByFullness: lists.groupCounts, almostEmpty: almostEmpty, almostFull: almostFull,
                    full: lists.groupCounts[FullnessGroup.full], zspages: lists.zspageCount,
                    objectsAllocated: lists.zspageCount * spec.objectsPerZspage, objectsUsed: lists.objectsUsed,
                    framesUsed: lists.zspageCount * spec.framesPerZspage)
            }
            classes.append(entry)
        }
        let arenaSnapshot = arena.snapshot()
        return ZSPoolStats(
            classes: classes, capacityBytes: capacityBytes, memLimitBytes: memLimitBytes,
            framesUsed: arenaSnapshot.usedFrames,
            framesResident: arenaSnapshot.residentBlocks * FrameArena.framesPerBlock,
            blocksResident: arenaSnapshot.residentBlocks, blocksReleased: arenaSnapshot.blocksReleased,
            blocksFaultedIn: arenaSnapshot.blocksFaultedIn,
            bytesUsed: arenaSnapshot.usedFrames * FrameArena.frameSize,
            maximumBytesUsed: arenaSnapshot.maximumUsedFrames * FrameArena.frameSize,
            liveObjects: liveObjects,
            handleTableBytes: handles.usage().tableBytes, zspageTableBytes: zspages.tableBytes,
            zspageListBytes: listBytes,
            pagesCompacted: counters.pagesCompacted.load(ordering: .relaxed),
            objectsCompacted: counters.objectsCompacted.load(ordering: .relaxed),
            compactionSkips: counters.compactionSkips.load(ordering: .relaxed),
            framesMigrated: counters.framesMigrated.load(ordering: .relaxed),
            migrationSkips: counters.migrationSkips.load(ordering: .relaxed),
            invalidFrees: counters.invalidFrees.load(ordering: .relaxed),
            freeRunsByOrder: arenaSnapshot.freeRunsByOrder, blockOccupancy: arenaSnapshot.blockOccupancy)
    }
}
