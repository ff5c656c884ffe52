public import NBD
import PageCodec
public import ZNBDControlAPI
import ZNBDFigures
public import ZRAM
public import ZSPool

// The one place the core modules' structured figures become the control
// API's documents. The figures themselves need no mapping (both sides hold
// the same Figures<F> values); what is mapped here, field by field, is the
// structure around them (class rows, frame maps, passes, codec names), so a
// renamed core field is a compile error here, never a silently renamed key.

extension ClassesDocument {
    public init(_ pool: ZSPoolFigures) {
        self.init(
            classes: pool.classes.map {
                Class(
                    index: $0.index, size: $0.size, framesPerZspage: $0.framesPerZspage,
                    objectsPerZspage: $0.objectsPerZspage, isHuge: $0.isHuge, zspagesByFullness: $0.zspagesByFullness,
                    almostEmpty: $0.almostEmpty, almostFull: $0.almostFull, full: $0.full, zspages: $0.zspages,
                    objectsAllocated: $0.objectsAllocated, objectsUsed: $0.objectsUsed, framesUsed: $0.framesUsed)
            })
    }
}

extension FramesDocument {
    public init(_ pool: ZSPoolFigures) {
        self.init(
            frameSize: ZSPool.frameSize, blockSize: ZSPool.blockSize, framesUsed: pool[.framesUsed],
            framesResident: pool[.framesResident], blocksResident: pool[.blocksResident],
            blocksReleased: pool[.blocksReleased], freeRunsByOrder: pool.freeRunsByOrder,
            blockOccupancy: pool.blockOccupancy)
    }
}

extension StatsDocument.NBD {
    public init(_ server: NBDServerFigures) {
        self.init(totals: server.totals, commands: server.commands)
    }
}

extension MaintenancePassDocument {
    public init(_ pass: MaintenancePass) {
        self.init(
            trigger: pass.trigger.rawValue,
            compaction: Compaction(
                framesFreed: pass.compaction.framesFreed, objectsMoved: pass.compaction.objectsMoved,
                objectsSkipped: pass.compaction.objectsSkipped, bytesMoved: pass.compaction.bytesMoved),
            migration: Migration(
                framesMigrated: pass.migration.framesMigrated, framesSkipped: pass.migration.framesSkipped,
                blocksReleased: pass.migration.blocksReleased),
            heapTrimmed: pass.heapTrimmed, seconds: pass.duration.seconds, memUsedTotalBefore: pass.poolBytesBefore,
            memUsedTotalAfter: pass.poolBytesAfter)
    }
}

extension StatsDocument.Maintenance {
    public init(_ maintenance: MaintenanceFigures) {
        self.init(
            compaction: maintenance.automatic ? "auto" : "off",
            migration: maintenance.migrationEnabled ? "auto" : "off",
            pressureSource: maintenance.pressureSource, totals: maintenance.totals,
            lastPass: maintenance.lastPass.map(MaintenancePassDocument.init),
            recompressIdleAgeSeconds: maintenance.recompressIdleAge?.seconds, recompression: maintenance.recompression)
    }
}

extension StatsDocument.Compression {
    public init(_ compression: CompressionFigures) {
        self.init(
            algorithm: compression.algorithm.algorithm.description, algorithmParams: compression.algorithm.params,
            recompressAlgorithm: compression.recompressionAlgorithm?.algorithm.description,
            recompressAlgorithmParams: compression.recompressionAlgorithm?.params, figures: compression.figures,
            recompression: compression.recompression)
    }
}

extension Duration {
    /// The duration in seconds, as the documents carry it.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
