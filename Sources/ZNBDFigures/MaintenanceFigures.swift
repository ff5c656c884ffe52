/// The maintenance thread's running totals, every pass included, manual
/// ones too (GET /v1/stats `maintenance`). Counted by ZRAM's
/// DeviceMaintenance.
public enum MaintenanceFigure: Int, FigureFamily {
    case passes
    case pagesCompacted, objectsMoved, bytesMoved, objectsSkipped
    case framesMigrated, framesSkipped, blocksReleased
    case heapTrims, timeSpent, recompressionSweeps

    public static let title = "maintenance"
    public static let path = "maintenance"
    public static let metricPrefix = "znbd_maintenance_"

    static let busySkipped = MetricFamily(
        "busy_skipped_total", .counter, help: "Objects and frames left in place because I/O held them.")

    public var declaration: FigureDeclaration {
        switch self {
        case .passes:
            .init(
                "passes", .counter, metric: "passes_total",
                help: "Maintenance passes, by what started them (waste, discard, pressure, manual).",
                label: "trigger")
        case .pagesCompacted:
            .init(
                "pages_compacted", .counter, metric: "pages_compacted_total",
                help: "Frames freed by maintenance compaction.")
        case .objectsMoved:
            .init(
                "objects_moved", .counter, metric: "objects_moved_total",
                help: "Objects moved by maintenance compaction.")
        case .bytesMoved:
            .init(
                "bytes_moved", .counter, metric: "moved_bytes_total",
                help: "Bytes of objects moved by maintenance compaction.", unit: .bytes)
        case .objectsSkipped: .init("objects_skipped", Self.busySkipped, labels: [.init("what", "object")])
        case .framesMigrated:
            .init(
                "frames_migrated", .counter, metric: "frames_migrated_total", help: "Frames moved out of sparse blocks."
            )
        case .framesSkipped: .init("frames_skipped", Self.busySkipped, labels: [.init("what", "frame")])
        case .blocksReleased:
            .init(
                "blocks_released", .counter, metric: "blocks_released_total",
                help: "Blocks emptied by migration and given back to the operating system.")
        case .heapTrims:
            .init("heap_trims", .counter, metric: "heap_trims_total", help: "Trims of the C heap (malloc_trim).")
        case .timeSpent:
            .init(
                "seconds_spent", .counter, metric: "milliseconds_total",
                help: "Time spent in maintenance passes and recompression slices.", unit: .milliseconds)
        case .recompressionSweeps:
            .init(
                "recompression_sweeps", .counter, metric: "recompression_sweeps_total",
                help: "Sweeps of the whole device by the thread's recompression slices.")
        }
    }
}

/// What recompression did: the device's totals (GET /v1/stats
/// `compression.recompression`, manual runs and the thread's), the
/// thread's share (`maintenance.recompression`), or one run (POST
/// /v1/recompress's `result`). Counted by ZRAM's Recompression.swift.
public enum RecompressionFigure: Int, FigureFamily {
    case pagesScanned, pagesTried
    case pagesRecompressed, pagesNotSmaller, pagesIncompressible, pagesRaced, pagesWithoutRoom
    case bytesBefore, bytesAfter

    public static let title = "recompression"
    public static let path = "compression.recompression"
    /// The device's totals; the thread's share is rendered under
    /// "znbd_maintenance_".
    public static let metricPrefix = "znbd_"

    static let pages = MetricFamily(
        "recompression_pages_total", .counter,
        help:
            "Pages the recompression codec compressed, by outcome: recompressed, not_smaller (of which incompressible: huge pages kept raw), raced (all three in pages_tried), and without_room (left for want of pool room, not in pages_tried)."
    )
    static let bytes = MetricFamily(
        "recompression_bytes_total", .counter, help: "Object bytes of the recompressed pages, before and after.")

    public var declaration: FigureDeclaration {
        switch self {
        case .pagesScanned:
            .init(
                "pages_scanned", .counter, metric: "recompression_pages_scanned_total",
                help: "Slots recompression looked at.")
        case .pagesTried:
            .init(
                "pages_tried", .counter, metric: "recompression_pages_tried_total",
                help: "Pages the recompression codec compressed.", kernel: .other("recompress"))
        case .pagesRecompressed: .init("pages_recompressed", Self.pages, labels: [.init("outcome", "recompressed")])
        case .pagesNotSmaller: .init("pages_not_smaller", Self.pages, labels: [.init("outcome", "not_smaller")])
        case .pagesIncompressible:
            .init(
                "pages_incompressible", Self.pages, labels: [.init("outcome", "incompressible")],
                kernel: .other("ZRAM_INCOMPRESSIBLE"))
        case .pagesRaced: .init("pages_raced", Self.pages, labels: [.init("outcome", "raced")])
        case .pagesWithoutRoom: .init("pages_without_room", Self.pages, labels: [.init("outcome", "without_room")])
        case .bytesBefore: .init("bytes_before", Self.bytes, labels: [.init("when", "before")], unit: .bytes)
        case .bytesAfter: .init("bytes_after", Self.bytes, labels: [.init("when", "after")], unit: .bytes)
        }
    }
}

/// What the device holds by codec (GET /v1/stats `compression`). Counted by
/// ZRAM's CompressedBlockDevice; the codecs themselves are named beside
/// these in the document.
public enum CompressionFigure: Int, FigureFamily {
    case pagesByAlgorithm, idlePages

    public static let title = "compression"
    public static let path = "compression"
    public static let metricPrefix = "znbd_"

    public var declaration: FigureDeclaration {
        switch self {
        case .pagesByAlgorithm:
            .init(
                "pages_by_algorithm", .gauge, metric: "pages_by_algorithm",
                help: "Compressed objects by the algorithm that wrote them.", label: "algorithm")
        case .idlePages:
            .init(
                "idle_pages", .gauge, metric: "idle_pages", help: "Pages marked idle and not accessed since.",
                kernel: .other("idle"))
        }
    }
}
