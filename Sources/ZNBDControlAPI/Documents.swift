// ZNBDControlAPI: the control endpoint's wire format, and what a client
// needs beside it. It depends only on ZNBDFigures (the figures' own
// declarations), so znbdctl links none of the pool, the codecs or NBD.
//
// THE MAP
//   StatsDocument.swift  GET /v1/stats: every figure family under its
//                        declared keys, and a maintenance pass
//   Documents.swift      the other routes' documents (this file)
//   ByteSize.swift       sizes as people type them and zramctl prints them
//   ControlPaths.swift   default socket paths, shared by znbd and znbdctl
//   TextViews.swift      the documents as znbdctl prints them
//
// Keys are snake_case; the device's figures keep the names of the kernel's
// zram (mm_stat, io_stat).
public import ZNBDFigures

/// What is served, and where.
public struct ExportSummary: Sendable, Codable, Equatable {
    public var name: String
    public var sizeBytes: Int
    public var readOnly: Bool
    public var nbdSocket: String?
    public var tcpAddress: String?
    public var compaction: String
    /// The state directory (--state-dir), nil when the disk is the
    /// process's memory alone.
    public var stateDirectory: String?

    public init(
        name: String, sizeBytes: Int, readOnly: Bool, nbdSocket: String?, tcpAddress: String?, compaction: String,
        stateDirectory: String? = nil
    ) {
        self.stateDirectory = stateDirectory
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
        case stateDirectory = "state_directory"
    }
}

/// GET /v1/classes: zsmalloc's per-class table.
public struct ClassesDocument: Sendable, Codable, Equatable {
    /// One size class, as a row of zsmalloc's debugfs classes file.
    public struct Class: Sendable, Codable, Equatable {
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
            index: Int, size: Int, framesPerZspage: Int, objectsPerZspage: Int, isHuge: Bool,
            zspagesByFullness: [Int], almostEmpty: Int, almostFull: Int, full: Int, zspages: Int,
            objectsAllocated: Int, objectsUsed: Int, framesUsed: Int
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

    public var classes: [Class]

    public init(classes: [Class]) { self.classes = classes }
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
    public var pass: MaintenancePassDocument
    /// The pool's frame and block sizes, to turn the counts into bytes.
    public var frameSize: Int
    public var blockSize: Int
    public var rssBytesBefore: Int
    public var rssBytesAfter: Int

    public init(pass: MaintenancePassDocument, frameSize: Int, blockSize: Int, rssBytesBefore: Int, rssBytesAfter: Int)
    {
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
    public var result: Result
    public var seconds: Double
    public var memUsedTotalBefore: Int
    public var memUsedTotalAfter: Int

    public init(
        type: String, threshold: Int?, maxPages: Int?, algorithm: String, result: Result,
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

    /// The run's figures, and whether it reached the end of the device.
    public struct Result: Sendable, Codable, Equatable {
        public var figures: Figures<RecompressionFigure>
        public var finished: Bool

        public init(figures: Figures<RecompressionFigure>, finished: Bool) {
            self.figures = figures
            self.finished = finished
        }

        public subscript(figure: RecompressionFigure) -> Int { figures[figure] }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: FigureCodingKey.self)
            figures = Figures()
            try figures.decode(from: container)
            finished = try container.decode(Bool.self, forKey: FigureCodingKey("finished"))
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: FigureCodingKey.self)
            try figures.encode(into: &container)
            try container.encode(finished, forKey: FigureCodingKey("finished"))
        }
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
