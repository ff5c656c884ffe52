// ZNBDControlAPI: the control endpoint's wire format, and what a client
// needs beside it. No dependency beyond the standard library, so znbdctl
// links none of the pool, the codecs or NBD.
//
// THE MAP
//   Documents.swift   the JSON documents, one per route (this file)
//   Figures.swift     the figures inside them, with every JSON key
//   ByteSize.swift    sizes as people type them and zramctl prints them
//   ControlPaths.swift  default socket paths, shared by znbd and znbdctl
//   TextViews.swift   the documents as znbdctl prints them
//
// Keys are snake_case; the device's figures keep the names of the kernel's
// zram (mm_stat, io_stat).

/// GET /v1/stats. The device's figures sit at the top level, under zram's
/// names, so `jq .orig_data_size` works as a reader of mm_stat expects.
public struct StatsDocument: Sendable, Codable, Equatable {
    public var device: DeviceFigures
    /// The nine mm_stat figures in the kernel's order.
    public var mmStat: [Int]
    /// The four io_stat figures in the kernel's order.
    public var ioStat: [Int]
    /// The daemon's resident memory: pool, metadata, buffers and code.
    public var rssBytes: Int
    public var export: ExportSummary
    public var pool: PoolSummary
    public var nbd: NBDFigures
    public var maintenance: MaintenanceFigures
    public var compression: CompressionFigures

    public init(
        device: DeviceFigures, rssBytes: Int, export: ExportSummary, pool: PoolSummary, nbd: NBDFigures,
        maintenance: MaintenanceFigures, compression: CompressionFigures
    ) {
        self.device = device
        mmStat = device.mmStat
        ioStat = device.ioStat
        self.rssBytes = rssBytes
        self.export = export
        self.pool = pool
        self.nbd = nbd
        self.maintenance = maintenance
        self.compression = compression
    }

    enum CodingKeys: String, CodingKey {
        case mmStat = "mm_stat"
        case ioStat = "io_stat"
        case rssBytes = "rss_bytes"
        case export, pool, nbd, maintenance, compression
    }

    public init(from decoder: any Decoder) throws {
        device = try DeviceFigures(from: decoder)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        mmStat = try container.decode([Int].self, forKey: .mmStat)
        ioStat = try container.decode([Int].self, forKey: .ioStat)
        rssBytes = try container.decode(Int.self, forKey: .rssBytes)
        export = try container.decode(ExportSummary.self, forKey: .export)
        pool = try container.decode(PoolSummary.self, forKey: .pool)
        nbd = try container.decode(NBDFigures.self, forKey: .nbd)
        maintenance = try container.decode(MaintenanceFigures.self, forKey: .maintenance)
        compression = try container.decode(CompressionFigures.self, forKey: .compression)
    }

    public func encode(to encoder: any Encoder) throws {
        try device.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(mmStat, forKey: .mmStat)
        try container.encode(ioStat, forKey: .ioStat)
        try container.encode(rssBytes, forKey: .rssBytes)
        try container.encode(export, forKey: .export)
        try container.encode(pool, forKey: .pool)
        try container.encode(nbd, forKey: .nbd)
        try container.encode(maintenance, forKey: .maintenance)
        try container.encode(compression, forKey: .compression)
    }
}

/// What is served, and where.
public struct ExportSummary: Sendable, Codable, Equatable {
    public var name: String
    public var sizeBytes: Int
    public var readOnly: Bool
    public var nbdSocket: String?
    public var tcpAddress: String?
    public var compaction: String

    public init(
        name: String, sizeBytes: Int, readOnly: Bool, nbdSocket: String?, tcpAddress: String?, compaction: String
    ) {
        self.name = name
        self.sizeBytes = sizeBytes
        self.readOnly = readOnly
        self.nbdSocket = nbdSocket
        self.tcpAddress = tcpAddress
        self.compaction = compaction
    }

    enum CodingKeys: String, CodingKey {
        case name, compaction
        case sizeBytes = "size_bytes"
        case readOnly = "read_only"
        case nbdSocket = "nbd_socket"
        case tcpAddress = "tcp_address"
    }
}

/// GET /v1/classes: zsmalloc's per-class table.
public struct ClassesDocument: Sendable, Codable, Equatable {
    public var classes: [ClassFigures]

    public init(classes: [ClassFigures]) { self.classes = classes }
}

/// GET /v1/frames: the arena's frame map, as /proc/buddyinfo and a block
/// occupancy histogram.
public struct FramesDocument: Sendable, Codable, Equatable {
    public var frameSize: Int
    public var blockSize: Int
    public var framesUsed: Int
    public var framesResident: Int
    public var blocksResident: Int
    public var blocksReleased: Int
    /// Free runs of resident frames by buddy order 0...9 (1 ... 512 frames).
    public var freeRunsByOrder: [Int]
    /// Resident blocks by used frames in eighths: [0] empty, [k] more than
    /// (k-1)/8 and at most k/8 of the block used.
    public var blockOccupancy: [Int]

    public init(
        frameSize: Int, blockSize: Int, framesUsed: Int, framesResident: Int, blocksResident: Int, blocksReleased: Int,
        freeRunsByOrder: [Int], blockOccupancy: [Int]
    ) {
        self.frameSize = frameSize
        self.blockSize = blockSize
        self.framesUsed = framesUsed
        self.framesResident = framesResident
        self.blocksResident = blocksResident
        self.blocksReleased = blocksReleased
        self.freeRunsByOrder = freeRunsByOrder
        self.blockOccupancy = blockOccupancy
    }

    enum CodingKeys: String, CodingKey {
        case frameSize = "frame_size"
        case blockSize = "block_size"
        case framesUsed = "frames_used"
        case framesResident = "frames_resident"
        case blocksResident = "blocks_resident"
        case blocksReleased = "blocks_released"
        case freeRunsByOrder = "free_runs_by_order"
        case blockOccupancy = "block_occupancy"
    }
}

/// POST /v1/compact: one maintenance pass, run now (trigger "manual"), and
/// what it gave back.
public struct CompactDocument: Sendable, Codable, Equatable {
    public var pass: MaintenancePassFigures
    /// The pool's frame and block sizes, to turn the counts into bytes.
    public var frameSize: Int
    public var blockSize: Int
    public var rssBytesBefore: Int
    public var rssBytesAfter: Int

    public init(pass: MaintenancePassFigures, frameSize: Int, blockSize: Int, rssBytesBefore: Int, rssBytesAfter: Int) {
        self.pass = pass
        self.frameSize = frameSize
        self.blockSize = blockSize
        self.rssBytesBefore = rssBytesBefore
        self.rssBytesAfter = rssBytesAfter
    }

    enum CodingKeys: String, CodingKey {
        case pass
        case frameSize = "frame_size"
        case blockSize = "block_size"
        case rssBytesBefore = "rss_bytes_before"
        case rssBytesAfter = "rss_bytes_after"
    }
}

/// POST /v1/idle: marks stored pages idle, all of them or those not read or
/// written for `older_than_seconds` (zram's `idle` attribute).
public struct IdleDocument: Sendable, Codable, Equatable {
    /// Pages marked by this request.
    public var pagesMarked: Int
    /// Pages idle now.
    public var idlePages: Int

    public init(pagesMarked: Int, idlePages: Int) {
        self.pagesMarked = pagesMarked
        self.idlePages = idlePages
    }

    enum CodingKeys: String, CodingKey {
        case pagesMarked = "pages_marked"
        case idlePages = "idle_pages"
    }
}

/// POST /v1/recompress: one recompression run over the device, now (zram's
/// `recompress` attribute), and what it did.
public struct RecompressDocument: Sendable, Codable, Equatable {
    /// all, idle, huge or huge_idle.
    public var type: String
    public var threshold: Int?
    public var maxPages: Int?
    /// The recompression codec, e.g. "zstd:9".
    public var algorithm: String
    public var result: RecompressionFigures
    public var seconds: Double
    public var memUsedTotalBefore: Int
    public var memUsedTotalAfter: Int

    public init(
        type: String, threshold: Int?, maxPages: Int?, algorithm: String, result: RecompressionFigures,
        seconds: Double, memUsedTotalBefore: Int, memUsedTotalAfter: Int
    ) {
        self.type = type
        self.threshold = threshold
        self.maxPages = maxPages
        self.algorithm = algorithm
        self.result = result
        self.seconds = seconds
        self.memUsedTotalBefore = memUsedTotalBefore
        self.memUsedTotalAfter = memUsedTotalAfter
    }

    enum CodingKeys: String, CodingKey {
        case type, threshold, algorithm, result, seconds
        case maxPages = "max_pages"
        case memUsedTotalBefore = "mem_used_total_before"
        case memUsedTotalAfter = "mem_used_total_after"
    }
}

/// GET and PUT /v1/mem-limit. 0 means no limit, as in zram's mem_limit.
public struct MemLimitDocument: Sendable, Codable, Equatable {
    public var memLimit: Int

    public init(memLimit: Int) { self.memLimit = memLimit }

    enum CodingKeys: String, CodingKey {
        case memLimit = "mem_limit"
    }
}

/// The body of every 4xx and 5xx answer.
public struct ErrorDocument: Sendable, Codable, Equatable {
    public var error: String

    public init(error: String) { self.error = error }
}
