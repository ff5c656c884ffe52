public import NBD
import PageCodec
public import ZNBDControlAPI
public import ZRAM
public import ZSPool

// The one place the core modules' plain figures become the control API's
// documents: field by field, so a renamed core field is a compile error
// here, never a silently renamed JSON key.

extension DeviceFigures {
    public init(_ stats: ZRAMStats) {
        self.init(
            diskSize: stats.diskSize, origDataSize: stats.origDataSize, comprDataSize: stats.comprDataSize,
            memUsedTotal: stats.memUsedTotal, memLimit: stats.memLimit, memUsedMax: stats.memUsedMax,
            samePages: stats.samePages, pagesCompacted: stats.pagesCompacted, hugePages: stats.hugePages,
            hugePagesSince: stats.hugePagesSince, failedReads: stats.failedReads, failedWrites: stats.failedWrites,
            invalidIO: stats.invalidIO, notifyFree: stats.notifyFree, reads: stats.reads, writes: stats.writes,
            discards: stats.discards, zeroes: stats.zeroes, bytesRead: stats.bytesRead,
            bytesWritten: stats.bytesWritten)
    }
}

extension PoolSummary {
    public init(_ stats: ZSPoolStats) {
        self.init(
            capacityBytes: stats.capacityBytes, bytesUsed: stats.bytesUsed, maximumBytesUsed: stats.maximumBytesUsed,
            framesUsed: stats.framesUsed, framesResident: stats.framesResident, blocksResident: stats.blocksResident,
            blocksReleased: stats.blocksReleased, blocksFaultedIn: stats.blocksFaultedIn,
            liveObjects: stats.liveObjects, zspages: stats.classes.reduce(0) { $0 + $1.zspages },
            metadataBytes: stats.metadataBytes, objectsCompacted: stats.objectsCompacted,
            compactionSkips: stats.compactionSkips, framesMigrated: stats.framesMigrated,
            migrationSkips: stats.migrationSkips, invalidFrees: stats.invalidFrees)
    }
}

extension ClassFigures {
    public init(_ stats: ZSPoolStats.ClassStats) {
        self.init(
            index: stats.index, size: stats.size, framesPerZspage: stats.framesPerZspage,
            objectsPerZspage: stats.objectsPerZspage, isHuge: stats.isHuge, zspagesByFullness: stats.zspagesByFullness,
            almostEmpty: stats.almostEmpty, almostFull: stats.almostFull, full: stats.full, zspages: stats.zspages,
            objectsAllocated: stats.objectsAllocated, objectsUsed: stats.objectsUsed, framesUsed: stats.framesUsed)
    }
}

extension ClassesDocument {
    public init(_ stats: ZSPoolStats) {
        self.init(classes: stats.classes.map(ClassFigures.init))
    }
}

extension FramesDocument {
    public init(_ stats: ZSPoolStats) {
        self.init(
            frameSize: ZSPool.frameSize, blockSize: ZSPool.blockSize, framesUsed: stats.framesUsed,
            framesResident: stats.framesResident, blocksResident: stats.blocksResident,
            blocksReleased: stats.blocksReleased, freeRunsByOrder: stats.freeRunsByOrder,
            blockOccupancy: stats.blockOccupancy)
    }
}

extension NBDFigures {
    public init(_ stats: NBDServerStats) {
        self.init(
            connectionsOpen: stats.connectionsOpen, connectionsTotal: stats.connectionsTotal,
            protocolErrors: stats.protocolErrors,
            commands: stats.commands.mapValues {
                CommandFigures(requests: $0.requests, bytes: $0.bytes, errors: $0.errors)
            }, bytesInFlight: stats.bytesInFlight)
    }
}

extension CompactionFigures {
    public init(_ result: CompactionResult) {
        self.init(
            framesFreed: result.framesFreed, objectsMoved: result.objectsMoved, objectsSkipped: result.objectsSkipped,
            bytesMoved: result.bytesMoved)
    }
}

extension MigrationFigures {
    public init(_ result: MigrationResult) {
        self.init(
            framesMigrated: result.framesMigrated, framesSkipped: result.framesSkipped,
            blocksReleased: result.blocksReleased)
    }
}

extension MaintenancePassFigures {
    public init(_ pass: MaintenancePass) {
        self.init(
            trigger: pass.trigger.rawValue, compaction: CompactionFigures(pass.compaction),
            migration: MigrationFigures(pass.migration), heapTrimmed: pass.heapTrimmed,
            seconds: pass.duration.seconds, memUsedTotalBefore: pass.poolBytesBefore,
            memUsedTotalAfter: pass.poolBytesAfter)
    }
}

extension MaintenanceFigures {
    public init(_ stats: MaintenanceStats) {
        self.init(
            compaction: stats.automatic ? "auto" : "off", migration: stats.migrationEnabled ? "auto" : "off",
            pressureSource: stats.pressureSource,
            passes: Dictionary(uniqueKeysWithValues: stats.passes.map { ($0.key.rawValue, $0.value) }),
            pagesCompacted: stats.compaction.framesFreed, objectsMoved: stats.compaction.objectsMoved,
            bytesMoved: stats.compaction.bytesMoved, objectsSkipped: stats.compaction.objectsSkipped,
            framesMigrated: stats.migration.framesMigrated, framesSkipped: stats.migration.framesSkipped,
            blocksReleased: stats.migration.blocksReleased, heapTrims: stats.heapTrims,
            secondsSpent: stats.timeSpent.seconds, lastPass: stats.lastPass.map(MaintenancePassFigures.init),
            recompressIdleAgeSeconds: stats.recompressIdleAge?.seconds,
            recompression: RecompressionFigures(stats.recompression, scanned: true, finished: nil),
            recompressionSweeps: stats.recompressionSweeps)
    }
}

extension RecompressionFigures {
    /// `scanned`: the figures carry the slots scanned (a run, the thread's
    /// slices), which the device's totals do not; `finished` only for a run.
    public init(_ result: RecompressionResult, scanned: Bool, finished: Bool?) {
        self.init(
            pagesScanned: scanned ? result.pagesScanned : nil, pagesTried: result.pagesTried,
            pagesRecompressed: result.pagesRecompressed, pagesNotSmaller: result.pagesNotSmaller,
            pagesIncompressible: result.pagesIncompressible, pagesRaced: result.pagesRaced,
            pagesWithoutRoom: result.pagesWithoutRoom, bytesBefore: result.bytesBefore, bytesAfter: result.bytesAfter,
            finished: finished)
    }
}

extension CompressionFigures {
    public init(_ stats: CompressionStats) {
        self.init(
            algorithm: stats.algorithm.algorithm.description, algorithmParams: stats.algorithm.params,
            recompressAlgorithm: stats.recompressionAlgorithm?.algorithm.description,
            recompressAlgorithmParams: stats.recompressionAlgorithm?.params,
            pagesByAlgorithm: Dictionary(
                uniqueKeysWithValues: stats.pagesByAlgorithm.map { ($0.key.description, $0.value) }),
            idlePages: stats.idlePages,
            recompression: RecompressionFigures(stats.recompression, scanned: false, finished: nil))
    }
}

extension Duration {
    /// The duration in seconds, as the documents carry it.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
