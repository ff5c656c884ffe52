// The figures inside the control documents, with their wire names. These
// are the only place the control API's JSON keys are spelled: the core
// modules (ZSPool, ZRAM, NBD) keep plain Swift figures, and
// ZNBDControlServer copies them into these, field by field, so renaming a
// core field cannot silently rename a key.

/// The device's figures, under the names the kernel's zram uses in
/// /sys/block/zramN/mm_stat and io_stat, plus request counters.
public struct DeviceFigures: Sendable, Codable, Equatable {
    /// The device size in bytes (zram's disksize).
    public var diskSize: Int

    // mm_stat, in the kernel's order.
    /// Bytes of data stored: 4096 per page that holds something, same-filled
    /// pages included.
    public var origDataSize: Int
    /// Bytes of compressed data: the compressed length of each page, 4096
    /// for each huge page, 0 for same-filled pages.
    public var comprDataSize: Int
    /// Bytes of pool frames in use, metadata excluded (zs_get_total_pages).
    public var memUsedTotal: Int
    /// The memory limit in bytes; 0 for none.
    public var memLimit: Int
    /// The most pool bytes ever in use.
    public var memUsedMax: Int
    /// Pages stored as one repeated 8-byte word, with no pool object.
    public var samePages: Int
    /// Pool frames freed by compaction, since start.
    public var pagesCompacted: Int
    /// Pages stored raw now because they did not compress.
    public var hugePages: Int
    /// Pages ever stored raw, since start.
    public var hugePagesSince: Int

    // io_stat, in the kernel's order.
    /// Reads that failed: stored data that did not decompress.
    public var failedReads: Int
    /// Writes that failed: no space (pool full or mem_limit), or a codec error.
    public var failedWrites: Int
    /// Requests refused for their range or alignment.
    public var invalidIO: Int
    /// Page frees requested by discard, one per whole page covered.
    public var notifyFree: Int

    // Requests and bytes.
    public var reads: Int
    public var writes: Int
    public var discards: Int
    public var zeroes: Int
    public var bytesRead: Int
    public var bytesWritten: Int

    public init(
        diskSize: Int, origDataSize: Int, comprDataSize: Int, memUsedTotal: Int, memLimit: Int, memUsedMax: Int,
        samePages: Int, pagesCompacted: Int, hugePages: Int, hugePagesSince: Int, failedReads: Int,
        failedWrites: Int, invalidIO: Int, notifyFree: Int, reads: Int, writes: Int, discards: Int, zeroes: Int,
        bytesRead: Int, bytesWritten: Int
    ) {
        self.diskSize = diskSize
        self.origDataSize = origDataSize
        self.comprDataSize = comprDataSize
        self.memUsedTotal = memUsedTotal
        self.memLimit = memLimit
        self.memUsedMax = memUsedMax
        self.samePages = samePages
        self.pagesCompacted = pagesCompacted
        self.hugePages = hugePages
        self.hugePagesSince = hugePagesSince
        self.failedReads = failedReads
        self.failedWrites = failedWrites
        self.invalidIO = invalidIO
        self.notifyFree = notifyFree
        self.reads = reads
        self.writes = writes
        self.discards = discards
        self.zeroes = zeroes
        self.bytesRead = bytesRead
        self.bytesWritten = bytesWritten
    }

    /// The nine mm_stat figures in the kernel's order.
    public var mmStat: [Int] {
        [
            origDataSize, comprDataSize, memUsedTotal, memLimit, memUsedMax, samePages, pagesCompacted, hugePages,
            hugePagesSince,
        ]
    }

    /// The four io_stat figures in the kernel's order.
    public var ioStat: [Int] { [failedReads, failedWrites, invalidIO, notifyFree] }

    enum CodingKeys: String, CodingKey {
        case diskSize = "disksize"
        case origDataSize = "orig_data_size"
        case comprDataSize = "compr_data_size"
        case memUsedTotal = "mem_used_total"
        case memLimit = "mem_limit"
        case memUsedMax = "mem_used_max"
        case samePages = "same_pages"
        case pagesCompacted = "pages_compacted"
        case hugePages = "huge_pages"
        case hugePagesSince = "huge_pages_since"
        case failedReads = "failed_reads"
        case failedWrites = "failed_writes"
        case invalidIO = "invalid_io"
        case notifyFree = "notify_free"
        case reads, writes, discards, zeroes
        case bytesRead = "bytes_read"
        case bytesWritten = "bytes_written"
    }
}

/// The pool's totals (the per-class table and the frame maps have their own
/// documents).
public struct PoolSummary: Sendable, Codable, Equatable {
    public var capacityBytes: Int
    public var bytesUsed: Int
    public var maximumBytesUsed: Int
    public var framesUsed: Int
    public var framesResident: Int
    public var blocksResident: Int
    public var blocksReleased: Int
    public var blocksFaultedIn: Int
    public var liveObjects: Int
    public var zspages: Int
    /// Handle table, zspage table, and the zspages' slot and frame lists too
    /// long for their records, outside the arena.
    public var metadataBytes: Int
    public var objectsCompacted: Int
    public var compactionSkips: Int
    public var framesMigrated: Int
    public var migrationSkips: Int
    public var invalidFrees: Int

    public init(
        capacityBytes: Int, bytesUsed: Int, maximumBytesUsed: Int, framesUsed: Int, framesResident: Int,
        blocksResident: Int, blocksReleased: Int, blocksFaultedIn: Int, liveObjects: Int, zspages: Int,
        metadataBytes: Int, objectsCompacted: Int, compactionSkips: Int, framesMigrated: Int, migrationSkips: Int,
        invalidFrees: Int
    ) {
        self.capacityBytes = capacityBytes
        self.bytesUsed = bytesUsed
        self.maximumBytesUsed = maximumBytesUsed
        self.framesUsed = framesUsed
        self.framesResident = framesResident
        self.blocksResident = blocksResident
        self.blocksReleased = blocksReleased
        self.blocksFaultedIn = blocksFaultedIn
        self.liveObjects = liveObjects
        self.zspages = zspages
        self.metadataBytes = metadataBytes
        self.objectsCompacted = objectsCompacted
        self.compactionSkips = compactionSkips
        self.framesMigrated = framesMigrated
        self.migrationSkips = migrationSkips
        self.invalidFrees = invalidFrees
    }

    enum CodingKeys: String, CodingKey {
        case zspages
        case capacityBytes = "capacity_bytes"
        case bytesUsed = "bytes_used"
        case maximumBytesUsed = "maximum_bytes_used"
        case framesUsed = "frames_used"
        case framesResident = "frames_resident"
        case blocksResident = "blocks_resident"
        case blocksReleased = "blocks_released"
        case blocksFaultedIn = "blocks_faulted_in"
        case liveObjects = "live_objects"
        case metadataBytes = "metadata_bytes"
        case objectsCompacted = "objects_compacted"
        case compactionSkips = "compaction_skips"
        case framesMigrated = "frames_migrated"
        case migrationSkips = "migration_skips"
        case invalidFrees = "invalid_frees"
    }
}

/// One size class of the pool, as a row of zsmalloc's debugfs classes file.
public struct ClassFigures: Sendable, Codable, Equatable {
    public var index: Int
    public var size: Int
    public var framesPerZspage: Int
    public var objectsPerZspage: Int
    public var isHuge: Bool
    /// zspages per fullness list: [0] empty, [1...10] in-use ratio 0-9% ...
    /// 90-99%, [11] full.
    public var zspagesByFullness: [Int]
    /// The kernel's classic groups: at most 3/4 used, more, and full.
    public var almostEmpty: Int
    public var almostFull: Int
    public var full: Int
    public var zspages: Int
    public var objectsAllocated: Int
    public var objectsUsed: Int
    public var framesUsed: Int

    public init(
        index: Int, size: Int, framesPerZspage: Int, objectsPerZspage: Int, isHuge: Bool, zspagesByFullness: [Int],
        almostEmpty: Int, almostFull: Int, full: Int, zspages: Int, objectsAllocated: Int, objectsUsed: Int,
        framesUsed: Int
    ) {
        self.index = index
        self.size = size
        self.framesPerZspage = framesPerZspage
        self.objectsPerZspage = objectsPerZspage
        self.isHuge = isHuge
        self.zspagesByFullness = zspagesByFullness
        self.almostEmpty = almostEmpty
        self.almostFull = almostFull
        self.full = full
        self.zspages = zspages
        self.objectsAllocated = objectsAllocated
        self.objectsUsed = objectsUsed
        self.framesUsed = framesUsed
    }

    enum CodingKeys: String, CodingKey {
        case index, size, zspages, full
        case framesPerZspage = "frames_per_zspage"
        case objectsPerZspage = "objects_per_zspage"
        case isHuge = "huge"
        case zspagesByFullness = "zspages_by_fullness"
        case almostEmpty = "almost_empty"
        case almostFull = "almost_full"
        case objectsAllocated = "objects_allocated"
        case objectsUsed = "objects_used"
        case framesUsed = "frames_used"
    }
}

/// The NBD server's figures: connections, and per command the requests,
/// bytes and errors by errno name.
public struct NBDFigures: Sendable, Codable, Equatable {
    public struct CommandFigures: Sendable, Codable, Equatable {
        public var requests: Int
        public var bytes: Int
        /// Errors by errno name (EINVAL, ENOSPC, …); absent names are zero.
        public var errors: [String: Int]

        public init(requests: Int, bytes: Int, errors: [String: Int]) {
            self.requests = requests
            self.bytes = bytes
            self.errors = errors
        }
    }

    public var connectionsOpen: Int
    public var connectionsTotal: Int
    /// Connections closed for a protocol violation (bad magic, bad flags).
    public var protocolErrors: Int
    /// By command name (read, write, …, and "unknown" for unknown types).
    public var commands: [String: CommandFigures]
    /// Bytes all connections hold now for requests in progress: write
    /// payloads not yet stored, reply data not yet handed to the socket.
    public var bytesInFlight: Int

    public init(
        connectionsOpen: Int, connectionsTotal: Int, protocolErrors: Int, commands: [String: CommandFigures],
        bytesInFlight: Int
    ) {
        self.connectionsOpen = connectionsOpen
        self.connectionsTotal = connectionsTotal
        self.protocolErrors = protocolErrors
        self.commands = commands
        self.bytesInFlight = bytesInFlight
    }

    enum CodingKeys: String, CodingKey {
        case connectionsOpen = "connections_open"
        case connectionsTotal = "connections_total"
        case protocolErrors = "protocol_errors"
        case commands
        case bytesInFlight = "bytes_in_flight"
    }
}

/// What one compaction pass did (zs_compact).
public struct CompactionFigures: Sendable, Codable, Equatable {
    /// Frames given back by emptied zspages (the kernel's pages_compacted).
    public var framesFreed: Int
    public var objectsMoved: Int
    /// Objects left in place because someone held their pin.
    public var objectsSkipped: Int
    public var bytesMoved: Int

    public init(framesFreed: Int, objectsMoved: Int, objectsSkipped: Int, bytesMoved: Int) {
        self.framesFreed = framesFreed
        self.objectsMoved = objectsMoved
        self.objectsSkipped = objectsSkipped
        self.bytesMoved = bytesMoved
    }

    enum CodingKeys: String, CodingKey {
        case framesFreed = "frames_freed"
        case objectsMoved = "objects_moved"
        case objectsSkipped = "objects_skipped"
        case bytesMoved = "bytes_moved"
    }
}

/// What one frame-migration pass did.
public struct MigrationFigures: Sendable, Codable, Equatable {
    public var framesMigrated: Int
    /// Frames left in place because their zspage was busy.
    public var framesSkipped: Int
    /// Blocks emptied and given back to the kernel.
    public var blocksReleased: Int

    public init(framesMigrated: Int, framesSkipped: Int, blocksReleased: Int) {
        self.framesMigrated = framesMigrated
        self.framesSkipped = framesSkipped
        self.blocksReleased = blocksReleased
    }

    enum CodingKeys: String, CodingKey {
        case framesMigrated = "frames_migrated"
        case framesSkipped = "frames_skipped"
        case blocksReleased = "blocks_released"
    }
}

/// One maintenance pass: compaction, then frame migration, then a trim of
/// the C heap. What `znbdctl compact` runs, and the maintenance thread's
/// last pass.
public struct MaintenancePassFigures: Sendable, Codable, Equatable {
    /// waste, discard, pressure or manual.
    public var trigger: String
    public var compaction: CompactionFigures
    public var migration: MigrationFigures
    /// malloc_trim gave heap memory back.
    public var heapTrimmed: Bool
    public var seconds: Double
    public var memUsedTotalBefore: Int
    public var memUsedTotalAfter: Int

    public init(
        trigger: String, compaction: CompactionFigures, migration: MigrationFigures, heapTrimmed: Bool,
        seconds: Double, memUsedTotalBefore: Int, memUsedTotalAfter: Int
    ) {
        self.trigger = trigger
        self.compaction = compaction
        self.migration = migration
        self.heapTrimmed = heapTrimmed
        self.seconds = seconds
        self.memUsedTotalBefore = memUsedTotalBefore
        self.memUsedTotalAfter = memUsedTotalAfter
    }

    enum CodingKeys: String, CodingKey {
        case trigger, compaction, seconds
        case migration = "migration"
        case heapTrimmed = "heap_trimmed"
        case memUsedTotalBefore = "mem_used_total_before"
        case memUsedTotalAfter = "mem_used_total_after"
    }
}

/// The maintenance thread's running totals (every pass, manual ones too).
public struct MaintenanceFigures: Sendable, Codable, Equatable {
    /// auto (the thread runs) or off (`znbdctl compact` only).
    public var compaction: String
    /// auto or off: frame migration after compaction.
    public var migration: String
    /// The PSI file the memory-pressure trigger listens on; absent without one.
    public var pressureSource: String?
    /// Passes by trigger: waste, discard, pressure, manual.
    public var passes: [String: Int]
    /// Frames freed by compaction (zram's pages_compacted counts these too).
    public var pagesCompacted: Int
    public var objectsMoved: Int
    public var bytesMoved: Int
    /// Objects left in place because I/O held them.
    public var objectsSkipped: Int
    public var framesMigrated: Int
    /// Frames left in place because I/O held their zspage.
    public var framesSkipped: Int
    /// Blocks that migration emptied and gave back to the kernel.
    public var blocksReleased: Int
    public var heapTrims: Int
    public var secondsSpent: Double
    public var lastPass: MaintenancePassFigures?
    /// Pages idle this long are recompressed by the thread; absent: it does not.
    public var recompressIdleAgeSeconds: Double?
    /// What the thread's recompression did, and its sweeps of the device.
    public var recompression: RecompressionFigures
    public var recompressionSweeps: Int

    public init(
        compaction: String, migration: String, pressureSource: String?, passes: [String: Int], pagesCompacted: Int,
        objectsMoved: Int, bytesMoved: Int, objectsSkipped: Int, framesMigrated: Int, framesSkipped: Int,
        blocksReleased: Int, heapTrims: Int, secondsSpent: Double, lastPass: MaintenancePassFigures?,
        recompressIdleAgeSeconds: Double?, recompression: RecompressionFigures, recompressionSweeps: Int
    ) {
        self.compaction = compaction
        self.migration = migration
        self.pressureSource = pressureSource
        self.passes = passes
        self.pagesCompacted = pagesCompacted
        self.objectsMoved = objectsMoved
        self.bytesMoved = bytesMoved
        self.objectsSkipped = objectsSkipped
        self.framesMigrated = framesMigrated
        self.framesSkipped = framesSkipped
        self.blocksReleased = blocksReleased
        self.heapTrims = heapTrims
        self.secondsSpent = secondsSpent
        self.lastPass = lastPass
        self.recompressIdleAgeSeconds = recompressIdleAgeSeconds
        self.recompression = recompression
        self.recompressionSweeps = recompressionSweeps
    }

    enum CodingKeys: String, CodingKey {
        case compaction, migration, passes
        case pressureSource = "pressure_source"
        case pagesCompacted = "pages_compacted"
        case objectsMoved = "objects_moved"
        case bytesMoved = "bytes_moved"
        case objectsSkipped = "objects_skipped"
        case framesMigrated = "frames_migrated"
        case framesSkipped = "frames_skipped"
        case blocksReleased = "blocks_released"
        case heapTrims = "heap_trims"
        case secondsSpent = "seconds_spent"
        case lastPass = "last_pass"
        case recompression
        case recompressIdleAgeSeconds = "recompress_idle_age_seconds"
        case recompressionSweeps = "recompression_sweeps"
    }
}

/// What recompression did: one run (`znbdctl recompress`), or running totals.
public struct RecompressionFigures: Sendable, Codable, Equatable {
    /// Slots looked at (runs and the maintenance thread's slices only).
    public var pagesScanned: Int?
    /// Pages the recompression codec compressed.
    public var pagesTried: Int
    /// Of those: stored in the new stream, which landed in a smaller class.
    public var pagesRecompressed: Int
    /// Kept as they were: the new stream would not save memory.
    public var pagesNotSmaller: Int
    /// Of the pages kept: huge pages the codec could not bring under the
    /// huge class (zram's incompressible).
    public var pagesIncompressible: Int
    /// Written meanwhile: the result was dropped.
    public var pagesRaced: Int
    /// Left as they were for want of pool room (mem_limit, or the arena
    /// full); still candidates for a later run.
    public var pagesWithoutRoom: Int
    /// Object bytes of the recompressed pages, before and after.
    public var bytesBefore: Int
    public var bytesAfter: Int
    /// A run reached the end of the device (runs only).
    public var finished: Bool?

    public init(
        pagesScanned: Int?, pagesTried: Int, pagesRecompressed: Int, pagesNotSmaller: Int, pagesIncompressible: Int,
        pagesRaced: Int, pagesWithoutRoom: Int, bytesBefore: Int, bytesAfter: Int, finished: Bool?
    ) {
        self.pagesScanned = pagesScanned
        self.pagesTried = pagesTried
        self.pagesRecompressed = pagesRecompressed
        self.pagesNotSmaller = pagesNotSmaller
        self.pagesIncompressible = pagesIncompressible
        self.pagesRaced = pagesRaced
        self.pagesWithoutRoom = pagesWithoutRoom
        self.bytesBefore = bytesBefore
        self.bytesAfter = bytesAfter
        self.finished = finished
    }

    enum CodingKeys: String, CodingKey {
        case finished
        case pagesScanned = "pages_scanned"
        case pagesTried = "pages_tried"
        case pagesRecompressed = "pages_recompressed"
        case pagesNotSmaller = "pages_not_smaller"
        case pagesIncompressible = "pages_incompressible"
        case pagesRaced = "pages_raced"
        case pagesWithoutRoom = "pages_without_room"
        case bytesBefore = "bytes_before"
        case bytesAfter = "bytes_after"
    }
}

/// The device's codecs and what they hold: zram's comp_algorithm,
/// algorithm_params and recomp_algorithm, pages per algorithm, idle pages,
/// and recompression's totals (manual runs and the maintenance thread's).
public struct CompressionFigures: Sendable, Codable, Equatable {
    /// lzo, lz4 or zstd.
    public var algorithm: String
    /// zram's algorithm_params text ("level=9"); empty for the defaults.
    public var algorithmParams: String
    /// The recompression codec; absent without one.
    public var recompressAlgorithm: String?
    public var recompressAlgorithmParams: String?
    /// Compressed objects by the algorithm that wrote them; huge pages are
    /// raw and counted in huge_pages.
    public var pagesByAlgorithm: [String: Int]
    /// Pages marked idle and not accessed since.
    public var idlePages: Int
    public var recompression: RecompressionFigures

    public init(
        algorithm: String, algorithmParams: String, recompressAlgorithm: String?, recompressAlgorithmParams: String?,
        pagesByAlgorithm: [String: Int], idlePages: Int, recompression: RecompressionFigures
    ) {
        self.algorithm = algorithm
        self.algorithmParams = algorithmParams
        self.recompressAlgorithm = recompressAlgorithm
        self.recompressAlgorithmParams = recompressAlgorithmParams
        self.pagesByAlgorithm = pagesByAlgorithm
        self.idlePages = idlePages
        self.recompression = recompression
    }

    enum CodingKeys: String, CodingKey {
        case algorithm, recompression
        case algorithmParams = "algorithm_params"
        case recompressAlgorithm = "recompress_algorithm"
        case recompressAlgorithmParams = "recompress_algorithm_params"
        case pagesByAlgorithm = "pages_by_algorithm"
        case idlePages = "idle_pages"
    }
}
