/// Everything /metrics may show, declared: the figure families, and the
/// metric families of the tables (a row per class, per command, per buddy
/// order, per codec), which the control endpoint renders from its documents.
/// The tests hold /metrics, the JSON and the docs to this list.
public enum FigureCatalog {
    /// Every figure family, in the order /metrics and the text views show
    /// them.
    public static let families: [any FigureFamily.Type] = [
        DeviceFigure.self, ProcessFigure.self, PoolFigure.self, ServerFigure.self, MaintenanceFigure.self,
        CompressionFigure.self, RecompressionFigure.self, StateFigure.self,
    ]

    /// The tables' metric families (full names).
    public enum Table {
        public static let classZspages = MetricFamily(
            "znbd_pool_class_zspages", .gauge, help: "zspages per size class (classes in use).")
        public static let classObjectsUsed = MetricFamily(
            "znbd_pool_class_objects_used", .gauge, help: "Objects stored per size class (classes in use).")
        public static let classObjectsAllocated = MetricFamily(
            "znbd_pool_class_objects_allocated", .gauge, help: "Object slots per size class (classes in use).")
        public static let freeRuns = MetricFamily(
            "znbd_pool_free_runs", .gauge, help: "Free runs of resident frames by buddy order (buddyinfo).")
        public static let blocksByOccupancy = MetricFamily(
            "znbd_pool_blocks_by_occupancy", .gauge,
            help: "Resident blocks by used frames, in eighths (0 = empty, 8 = more than 7/8).")
        public static let commandRequests = MetricFamily(
            "znbd_nbd_requests_total", .counter, help: "NBD requests by command.")
        public static let commandBytes = MetricFamily(
            "znbd_nbd_request_bytes_total", .counter, help: "NBD payload bytes by command.")
        public static let commandErrors = MetricFamily(
            "znbd_nbd_request_errors_total", .counter,
            help: "NBD requests answered with an error, by command and errno.")
        public static let codecInfo = MetricFamily(
            "znbd_codec_info", .gauge, help: "The device's codecs (zram comp_algorithm, recomp_algorithm); always 1.")

        public static let all = [
            classZspages, classObjectsUsed, classObjectsAllocated, freeRuns, blocksByOccupancy, commandRequests,
            commandBytes, commandErrors, codecInfo,
        ]
    }

    /// Where the maintenance thread's share of recompression is rendered.
    public static let maintenanceRecompressionPrefix = "znbd_maintenance_"

    /// Every metric family name /metrics may show: each figure family's (the
    /// maintenance thread's recompression under its own prefix too) and the
    /// tables'.
    public static var metricNames: Set<String> {
        var names = Set(Table.all.map(\.name))
        for family in families {
            for declaration in family.declarations { names.insert(family.metricPrefix + declaration.metric.name) }
        }
        for declaration in RecompressionFigure.declarations {
            names.insert(maintenanceRecompressionPrefix + declaration.metric.name)
        }
        return names
    }
}
