public import ZNBDFigures

/// GET /v1/stats: every figure family (ZNBDFigures), each under its
/// declared keys, with the names and settings that go with them. The
/// device's figures sit at the top level, under zram's names, so
/// `jq .orig_data_size` works as a reader of mm_stat expects.
public struct StatsDocument: Sendable, Codable, Equatable {
    public var device: Figures<DeviceFigure>
    /// The daemon's resident memory: pool, metadata, buffers and code.
    public var process: Figures<ProcessFigure>
    public var export: ExportSummary
    public var pool: Figures<PoolFigure>
    public var nbd: NBD
    public var maintenance: Maintenance
    public var compression: Compression
    /// The state directory's cost and what this start found in it.
    public var state: Figures<StateFigure>

    /// The nine mm_stat figures in the kernel's order.
    public var mmStat: [Int] { Self.kernelOrder(device) { if case .mmStat(let at, _) = $0 { at } else { nil } } }
    /// The four io_stat figures in the kernel's order.
    public var ioStat: [Int] { Self.kernelOrder(device) { if case .ioStat(let at, _) = $0 { at } else { nil } } }

    private static func kernelOrder(
        _ device: Figures<DeviceFigure>, position: (KernelFigure) -> Int?
    ) -> [Int] {
        DeviceFigure.allCases.compactMap { figure in
            figure.declaration.kernel.flatMap(position).map { (position: $0, value: device[figure]) }
        }.sorted { $0.position < $1.position }.map(\.value)
    }

    public init(
        device: Figures<DeviceFigure>, process: Figures<ProcessFigure>, export: ExportSummary,
        pool: Figures<PoolFigure>, nbd: NBD, maintenance: Maintenance, compression: Compression,
        state: Figures<StateFigure> = Figures()
    ) {
        self.state = state
        self.device = device
        self.process = process
        self.export = export
        self.pool = pool
        self.nbd = nbd
        self.maintenance = maintenance
        self.compression = compression
    }

    /// The NBD server's totals, and per command name (read, write, …,
    /// "unknown" for unknown types) the requests, payload bytes and errors
    /// by errno name.
    public struct NBD: Sendable, Codable, Equatable {
        public var totals: Figures<ServerFigure>
        public var commands: [String: CommandFigures]

        public init(totals: Figures<ServerFigure>, commands: [String: CommandFigures]) {
            self.totals = totals
            self.commands = commands
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: FigureCodingKey.self)
            totals = Figures()
            try totals.decode(from: container)
            commands = try container.decode([String: CommandFigures].self, forKey: FigureCodingKey("commands"))
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: FigureCodingKey.self)
            try totals.encode(into: &container)
            try container.encode(commands, forKey: FigureCodingKey("commands"))
        }
    }

    /// The maintenance thread: its settings, its running totals (every
    /// pass, manual ones too), its last pass, and what its recompression
    /// slices did.
    public struct Maintenance: Sendable, Codable, Equatable {
        /// auto (the thread runs) or off (`znbdctl compact` only).
        public var compaction: String
        /// auto or off: frame migration after compaction.
        public var migration: String
        /// The PSI file the memory-pressure trigger listens on; absent without one.
        public var pressureSource: String?
        public var totals: Figures<MaintenanceFigure>
        public var lastPass: MaintenancePassDocument?
        /// Pages idle this long are recompressed by the thread; absent: it does not.
        public var recompressIdleAgeSeconds: Double?
        public var recompression: Figures<RecompressionFigure>

        public init(
            compaction: String, migration: String, pressureSource: String?, totals: Figures<MaintenanceFigure>,
            lastPass: MaintenancePassDocument?, recompressIdleAgeSeconds: Double?,
            recompression: Figures<RecompressionFigure>
        ) {
            self.compaction = compaction
            self.migration = migration
            self.pressureSource = pressureSource
            self.totals = totals
            self.lastPass = lastPass
            self.recompressIdleAgeSeconds = recompressIdleAgeSeconds
            self.recompression = recompression
        }

        enum CodingKeys: String, CodingKey {
            case compaction, migration, recompression
            case pressureSource = "pressure_source"
            case lastPass = "last_pass"
            case recompressIdleAgeSeconds = "recompress_idle_age_seconds"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            compaction = try container.decode(String.self, forKey: .compaction)
            migration = try container.decode(String.self, forKey: .migration)
            pressureSource = try container.decodeIfPresent(String.self, forKey: .pressureSource)
            lastPass = try container.decodeIfPresent(MaintenancePassDocument.self, forKey: .lastPass)
            recompressIdleAgeSeconds = try container.decodeIfPresent(Double.self, forKey: .recompressIdleAgeSeconds)
            recompression = try container.decode(Figures<RecompressionFigure>.self, forKey: .recompression)
            totals = Figures()
            try totals.decode(from: decoder.container(keyedBy: FigureCodingKey.self))
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(compaction, forKey: .compaction)
            try container.encode(migration, forKey: .migration)
            try container.encodeIfPresent(pressureSource, forKey: .pressureSource)
            try container.encodeIfPresent(lastPass, forKey: .lastPass)
            try container.encodeIfPresent(recompressIdleAgeSeconds, forKey: .recompressIdleAgeSeconds)
            try container.encode(recompression, forKey: .recompression)
            var figures = encoder.container(keyedBy: FigureCodingKey.self)
            try totals.encode(into: &figures)
        }
    }

    /// The device's codecs (zram's comp_algorithm, algorithm_params,
    /// recomp_algorithm), what they hold, and recompression's totals (manual
    /// runs and the maintenance thread's).
    public struct Compression: Sendable, Codable, Equatable {
        /// lzo, lz4 or zstd.
        public var algorithm: String
        /// zram's algorithm_params text ("level=9"); empty for the defaults.
        public var algorithmParams: String
        /// The recompression codec; absent without one.
        public var recompressAlgorithm: String?
        public var recompressAlgorithmParams: String?
        public var figures: Figures<CompressionFigure>
        public var recompression: Figures<RecompressionFigure>

        public init(
            algorithm: String, algorithmParams: String, recompressAlgorithm: String?,
            recompressAlgorithmParams: String?, figures: Figures<CompressionFigure>,
            recompression: Figures<RecompressionFigure>
        ) {
            self.algorithm = algorithm
            self.algorithmParams = algorithmParams
            self.recompressAlgorithm = recompressAlgorithm
            self.recompressAlgorithmParams = recompressAlgorithmParams
            self.figures = figures
            self.recompression = recompression
        }

        /// Compressed objects by the name of the algorithm that wrote them.
        public var pagesByAlgorithm: [String: Int] { figures.values(of: .pagesByAlgorithm) }

        enum CodingKeys: String, CodingKey {
            case algorithm, recompression
            case algorithmParams = "algorithm_params"
            case recompressAlgorithm = "recompress_algorithm"
            case recompressAlgorithmParams = "recompress_algorithm_params"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            algorithm = try container.decode(String.self, forKey: .algorithm)
            algorithmParams = try container.decode(String.self, forKey: .algorithmParams)
            recompressAlgorithm = try container.decodeIfPresent(String.self, forKey: .recompressAlgorithm)
            recompressAlgorithmParams = try container.decodeIfPresent(String.self, forKey: .recompressAlgorithmParams)
            recompression = try container.decode(Figures<RecompressionFigure>.self, forKey: .recompression)
            figures = Figures()
            try figures.decode(from: decoder.container(keyedBy: FigureCodingKey.self))
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(algorithm, forKey: .algorithm)
            try container.encode(algorithmParams, forKey: .algorithmParams)
            try container.encodeIfPresent(recompressAlgorithm, forKey: .recompressAlgorithm)
            try container.encodeIfPresent(recompressAlgorithmParams, forKey: .recompressAlgorithmParams)
            try container.encode(recompression, forKey: .recompression)
            var figures = encoder.container(keyedBy: FigureCodingKey.self)
            try self.figures.encode(into: &figures)
        }
    }

    enum CodingKeys: String, CodingKey {
        case mmStat = "mm_stat"
        case ioStat = "io_stat"
        case export, pool, nbd, maintenance, compression, state
    }

    public init(from decoder: any Decoder) throws {
        let figures = try decoder.container(keyedBy: FigureCodingKey.self)
        device = Figures()
        try device.decode(from: figures)
        process = Figures()
        try process.decode(from: figures)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        export = try container.decode(ExportSummary.self, forKey: .export)
        pool = try container.decode(Figures<PoolFigure>.self, forKey: .pool)
        nbd = try container.decode(NBD.self, forKey: .nbd)
        maintenance = try container.decode(Maintenance.self, forKey: .maintenance)
        compression = try container.decode(Compression.self, forKey: .compression)
        state = try container.decode(Figures<StateFigure>.self, forKey: .state)
    }

    public func encode(to encoder: any Encoder) throws {
        var figures = encoder.container(keyedBy: FigureCodingKey.self)
        try device.encode(into: &figures)
        try process.encode(into: &figures)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(mmStat, forKey: .mmStat)
        try container.encode(ioStat, forKey: .ioStat)
        try container.encode(export, forKey: .export)
        try container.encode(pool, forKey: .pool)
        try container.encode(nbd, forKey: .nbd)
        try container.encode(maintenance, forKey: .maintenance)
        try container.encode(compression, forKey: .compression)
        try container.encode(state, forKey: .state)
    }
}

/// One maintenance pass: compaction, then frame migration, then a trim of
/// the C heap. What `znbdctl compact` runs, and the maintenance thread's
/// last pass.
public struct MaintenancePassDocument: Sendable, Codable, Equatable {
    /// What one compaction pass did (zs_compact).
    public struct Compaction: Sendable, Codable, Equatable {
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
    public struct Migration: Sendable, Codable, Equatable {
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

    /// waste, discard, pressure or manual.
    public var trigger: String
    public var compaction: Compaction
    public var migration: Migration
    /// malloc_trim gave heap memory back.
    public var heapTrimmed: Bool
    public var seconds: Double
    public var memUsedTotalBefore: Int
    public var memUsedTotalAfter: Int

    public init(
        trigger: String, compaction: Compaction, migration: Migration, heapTrimmed: Bool, seconds: Double,
        memUsedTotalBefore: Int, memUsedTotalAfter: Int
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
        // The key predates the one word for frame migration.
        case migration = "defragmentation"
        case heapTrimmed = "heap_trimmed"
        case memUsedTotalBefore = "mem_used_total_before"
        case memUsedTotalAfter = "mem_used_total_after"
    }
}
