/// The pool's totals, as zsmalloc's debugfs and the frame arena see them
/// (GET /v1/stats `pool`). Counted by ZSPool; the per-class table and the
/// frame map are documents of their own (Catalog.swift's table families).
public enum PoolFigure: Int, FigureFamily {
    case capacityBytes, bytesUsed, maximumBytesUsed
    case framesUsed, framesResident, blocksResident, blocksReleased, blocksFaultedIn
    case liveObjects, zspages
    case metadataBytes, handleTableBytes, zspageTableBytes, zspageListBytes
    case pagesCompacted, objectsCompacted, compactionSkips, framesMigrated, migrationSkips, invalidFrees

    public static let title = "pool (zsmalloc)"
    public static let path = "pool"
    public static let metricPrefix = "znbd_pool_"

    public var declaration: FigureDeclaration {
        switch self {
        case .capacityBytes:
            .init(
                "capacity_bytes", .gauge, metric: "capacity_bytes", help: "Address space reserved for the arena.",
                unit: .bytes)
        case .bytesUsed:
            .init(
                "bytes_used", .gauge, metric: "used_bytes", help: "Bytes of arena frames holding zspages.", unit: .bytes
            )
        case .maximumBytesUsed:
            .init(
                "maximum_bytes_used", .gauge, metric: "maximum_used_bytes",
                help: "Most bytes of arena frames ever holding zspages.", unit: .bytes)
        case .framesUsed:
            .init("frames_used", .gauge, metric: "frames_used", help: "4 KiB arena frames holding zspages.")
        case .framesResident:
            .init(
                "frames_resident", .gauge, metric: "frames_resident",
                help: "Arena frames of resident 2 MiB blocks, used or not.")
        case .blocksResident:
            .init("blocks_resident", .gauge, metric: "blocks_resident", help: "Arena blocks resident in memory.")
        case .blocksReleased:
            .init(
                "blocks_released", .counter, metric: "blocks_released_total",
                help: "Arena blocks given back to the operating system.")
        case .blocksFaultedIn:
            .init(
                "blocks_faulted_in", .counter, metric: "blocks_faulted_in_total",
                help: "Arena blocks faulted in again after being given back.")
        case .liveObjects:
            .init("live_objects", .gauge, metric: "live_objects", help: "Objects stored in the pool.")
        case .zspages:
            .init("zspages", .gauge, metric: "zspages", help: "zspages in all classes.")
        case .metadataBytes:
            .init(
                "metadata_bytes", .gauge, metric: "metadata_bytes",
                help: "Handle and zspage tables and zspage lists outside the arena.", unit: .bytes)
        case .handleTableBytes:
            .init(
                "handle_table_bytes", .gauge, metric: "handle_table_bytes", help: "Bytes of the handle table's chunks.",
                unit: .bytes)
        case .zspageTableBytes:
            .init(
                "zspage_table_bytes", .gauge, metric: "zspage_table_bytes",
                help: "Bytes of the zspage records' chunks.",
                unit: .bytes)
        case .zspageListBytes:
            .init(
                "zspage_list_bytes", .gauge, metric: "zspage_list_bytes",
                help: "Bytes of zspage slot and frame lists too long for their records.", unit: .bytes)
        case .pagesCompacted:
            .init(
                "pages_compacted", .counter, metric: "pages_compacted_total",
                help: "Frames freed by compaction (zsmalloc's pages_compacted).",
                kernel: .mmStat(7, "pages_compacted"))
        case .objectsCompacted:
            .init(
                "objects_compacted", .counter, metric: "objects_compacted_total", help: "Objects moved by compaction.")
        case .compactionSkips:
            .init(
                "compaction_skips", .counter, metric: "compaction_skips_total",
                help: "Objects compaction left in place because their pin was held.")
        case .framesMigrated:
            .init(
                "frames_migrated", .counter, metric: "frames_migrated_total", help: "Frames moved out of sparse blocks."
            )
        case .migrationSkips:
            .init(
                "migration_skips", .counter, metric: "migration_skips_total",
                help: "Frames migration left in place because their zspage was busy.")
        case .invalidFrees:
            .init(
                "invalid_frees", .counter, metric: "invalid_frees_total", help: "Frees of handles that were not live.")
        }
    }
}
