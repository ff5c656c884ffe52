/// The compressed device's figures, under the names the kernel's zram uses
/// in /sys/block/zramN/mm_stat and io_stat, then request counts. At the top
/// level of GET /v1/stats, so `jq .orig_data_size` reads as mm_stat does.
/// Counted by ZRAM's CompressedBlockDevice.
///
/// Declared in mm_stat's order (each mm_stat and io_stat figure names its
/// position), but for huge_pages before pages_compacted: the order of
/// `znbdctl stats`' columns (… SAME HUGE COMPACTED), which scripts may read
/// by position.
public enum DeviceFigure: Int, FigureFamily {
    case diskSize
    case origDataSize, comprDataSize, memUsedTotal, memLimit, memUsedMax
    case samePages, hugePages, hugePagesSince, pagesCompacted
    case failedReads, failedWrites, failedWritesNoSpace, invalidIO, notifyFree
    case reads, writes, discards, zeroes, bytesRead, bytesWritten

    public static let title = "device (zram's mm_stat, io_stat and requests)"
    public static let path = ""
    public static let metricPrefix = "znbd_"

    static let requests = MetricFamily(
        "device_requests_total", .counter, help: "Requests the device ran, by operation.")
    static let bytes = MetricFamily("device_bytes_total", .counter, help: "Bytes the device read and wrote.")

    public var declaration: FigureDeclaration {
        switch self {
        case .diskSize:
            .init(
                "disksize", .gauge, metric: "disksize_bytes", help: "Size of the device (zram disksize).",
                unit: .bytes, column: "DISKSIZE", kernel: .other("disksize"))
        case .origDataSize:
            .init(
                "orig_data_size", .gauge, metric: "orig_data_size_bytes",
                help: "Uncompressed bytes stored (mm_stat orig_data_size).", unit: .bytes, column: "DATA",
                kernel: .mmStat(1, "orig_data_size"))
        case .comprDataSize:
            .init(
                "compr_data_size", .gauge, metric: "compr_data_size_bytes",
                help: "Compressed bytes stored (mm_stat compr_data_size).", unit: .bytes, column: "COMPR",
                kernel: .mmStat(2, "compr_data_size"))
        case .memUsedTotal:
            .init(
                "mem_used_total", .gauge, metric: "mem_used_total_bytes",
                help: "Pool memory in use (mm_stat mem_used_total).", unit: .bytes, column: "TOTAL",
                kernel: .mmStat(3, "mem_used_total"))
        case .memLimit:
            .init(
                "mem_limit", .gauge, metric: "mem_limit_bytes",
                help: "Pool memory limit, 0 for none (mm_stat mem_limit).", unit: .bytes, column: "MEM-LIMIT",
                kernel: .mmStat(4, "mem_limit"))
        case .memUsedMax:
            .init(
                "mem_used_max", .gauge, metric: "mem_used_max_bytes",
                help: "Most pool memory ever in use (mm_stat mem_used_max).", unit: .bytes, column: "MEM-USED",
                kernel: .mmStat(5, "mem_used_max"))
        case .samePages:
            .init(
                "same_pages", .gauge, metric: "same_pages",
                help: "Pages of one repeated word, stored without memory (mm_stat same_pages).", column: "SAME",
                kernel: .mmStat(6, "same_pages"))
        case .pagesCompacted:
            .init(
                "pages_compacted", .counter, metric: "pages_compacted_total",
                help: "Pool frames freed by compaction (mm_stat pages_compacted).", column: "COMPACTED",
                kernel: .mmStat(7, "pages_compacted"))
        case .hugePages:
            .init(
                "huge_pages", .gauge, metric: "huge_pages",
                help: "Pages stored raw, incompressible (mm_stat huge_pages).",
                column: "HUGE", kernel: .mmStat(8, "huge_pages"))
        case .hugePagesSince:
            .init(
                "huge_pages_since", .counter, metric: "huge_pages_since_total",
                help: "Pages ever stored raw (mm_stat huge_pages_since).", kernel: .mmStat(9, "huge_pages_since"))
        case .failedReads:
            .init(
                "failed_reads", .counter, metric: "failed_reads_total",
                help: "Reads that failed (io_stat failed_reads).",
                kernel: .ioStat(1, "failed_reads"))
        case .failedWrites:
            .init(
                "failed_writes", .counter, metric: "failed_writes_total",
                help: "Writes that failed, no space or codec error (io_stat failed_writes).",
                kernel: .ioStat(2, "failed_writes"))
        case .failedWritesNoSpace:
            .init(
                "failed_writes_no_space", .counter, metric: "failed_writes_no_space_total",
                help:
                    "Writes refused with ENOSPC because the pool had no memory left (its mem_limit, or its address space); part of failed_writes."
            )
        case .invalidIO:
            .init(
                "invalid_io", .counter, metric: "invalid_io_total",
                help: "Requests refused for their range (io_stat invalid_io).", kernel: .ioStat(3, "invalid_io"))
        case .notifyFree:
            .init(
                "notify_free", .counter, metric: "notify_free_total",
                help: "Whole pages in discarded or zeroed ranges, stored or already empty (io_stat notify_free).",
                kernel: .ioStat(4, "notify_free"))
        case .reads: .init("reads", Self.requests, labels: [.init("op", "read")], kernel: .other("stat"))
        case .writes: .init("writes", Self.requests, labels: [.init("op", "write")], kernel: .other("stat"))
        case .discards: .init("discards", Self.requests, labels: [.init("op", "discard")], kernel: .other("stat"))
        case .zeroes: .init("zeroes", Self.requests, labels: [.init("op", "write_zeroes")], kernel: .other("stat"))
        case .bytesRead:
            .init("bytes_read", Self.bytes, labels: [.init("op", "read")], unit: .bytes, kernel: .other("stat"))
        case .bytesWritten:
            .init("bytes_written", Self.bytes, labels: [.init("op", "write")], unit: .bytes, kernel: .other("stat"))
        }
    }
}

/// The daemon process's own figures, beside the device's at the top level.
public enum ProcessFigure: Int, FigureFamily {
    case rssBytes

    public static let title = "process"
    public static let path = ""
    public static let metricPrefix = ""

    public var declaration: FigureDeclaration {
        switch self {
        case .rssBytes:
            .init(
                "rss_bytes", .gauge, metric: "process_resident_memory_bytes",
                help: "Resident memory of the znbd process.", unit: .bytes, column: "RSS")
        }
    }
}
