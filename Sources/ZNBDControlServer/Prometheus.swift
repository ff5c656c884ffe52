public import ZNBDControlAPI

/// Prometheus text exposition format 0.0.4, the format node_exporter serves:
/// per metric family one `# HELP` and one `# TYPE` line, then its samples.
///
/// Not swift-prometheus: its registry keeps live metric objects that code
/// updates as events happen, while znbd's figures are snapshots read at
/// scrape time; a registry rebuilt per scrape would print this same text.
/// The tests parse the output with Debian's python3-prometheus-client.
public struct PrometheusExposition {
    public enum MetricType: String {
        case counter, gauge
    }

    public private(set) var text = ""

    public init() {}

    /// One family: `name` with its help text and type, then one sample per
    /// element of `samples` (labels, value).
    public mutating func family(
        _ name: String, _ type: MetricType, help: String, samples: [(labels: [(String, String)], value: Int)]
    ) {
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(type.rawValue)\n"
        for sample in samples {
            text += name
            if !sample.labels.isEmpty {
                text += "{" + sample.labels.map { "\($0.0)=\"\(Self.escapeLabel($0.1))\"" }.joined(separator: ",") + "}"
            }
            text += " \(sample.value)\n"
        }
    }

    public mutating func family(_ name: String, _ type: MetricType, help: String, value: Int) {
        family(name, type, help: help, samples: [([], value)])
    }

    static func escapeHelp(_ text: String) -> String {
        text.replacing("\\", with: "\\\\").replacing("\n", with: "\\n")
    }

    static func escapeLabel(_ text: String) -> String {
        escapeHelp(text).replacing("\"", with: "\\\"")
    }
}

extension PrometheusExposition {
    /// GET /metrics: the figures of /v1/stats, the class table and the frame
    /// map, named znbd_*, byte figures in bytes (the _bytes suffix), running
    /// counts as counters (_total).
    public static func render(stats: StatsDocument, classes: ClassesDocument, frames: FramesDocument) -> String {
        var out = PrometheusExposition()
        let device = stats.device
        out.family("znbd_disksize_bytes", .gauge, help: "Size of the device (zram disksize).", value: device.diskSize)
        out.family(
            "znbd_orig_data_size_bytes", .gauge, help: "Uncompressed bytes stored (mm_stat orig_data_size).",
            value: device.origDataSize)
        out.family(
            "znbd_compr_data_size_bytes", .gauge, help: "Compressed bytes stored (mm_stat compr_data_size).",
            value: device.comprDataSize)
        out.family(
            "znbd_mem_used_total_bytes", .gauge, help: "Pool memory in use (mm_stat mem_used_total).",
            value: device.memUsedTotal)
        out.family(
            "znbd_mem_limit_bytes", .gauge, help: "Pool memory limit, 0 for none (mm_stat mem_limit).",
            value: device.memLimit)
        out.family(
            "znbd_mem_used_max_bytes", .gauge, help: "Most pool memory ever in use (mm_stat mem_used_max).",
            value: device.memUsedMax)
        out.family(
            "znbd_same_pages", .gauge, help: "Pages of one repeated word, stored without memory (mm_stat same_pages).",
            value: device.samePages)
        out.family(
            "znbd_pages_compacted_total", .counter, help: "Pool frames freed by compaction (mm_stat pages_compacted).",
            value: device.pagesCompacted)
        out.family(
            "znbd_huge_pages", .gauge, help: "Pages stored raw, incompressible (mm_stat huge_pages).",
            value: device.hugePages)
        out.family(
            "znbd_huge_pages_since_total", .counter, help: "Pages ever stored raw (mm_stat huge_pages_since).",
            value: device.hugePagesSince)
        out.family(
            "znbd_failed_reads_total", .counter, help: "Reads that failed (io_stat failed_reads).",
            value: device.failedReads)
        out.family(
            "znbd_failed_writes_total", .counter,
            help: "Writes that failed, no space or codec error (io_stat failed_writes).",
            value: device.failedWrites)
        out.family(
            "znbd_invalid_io_total", .counter, help: "Requests refused for their range (io_stat invalid_io).",
            value: device.invalidIO)
        out.family(
            "znbd_notify_free_total", .counter, help: "Pages freed by discard (io_stat notify_free).",
            value: device.notifyFree)
        out.family(
            "znbd_device_requests_total", .counter, help: "Requests the device ran, by operation.",
            samples: [
                ([("op", "read")], device.reads), ([("op", "write")], device.writes),
                ([("op", "discard")], device.discards), ([("op", "write_zeroes")], device.zeroes),
            ])
        out.family(
            "znbd_device_bytes_total", .counter, help: "Bytes the device read and wrote.",
            samples: [
                ([("op", "read")], device.bytesRead), ([("op", "write")], device.bytesWritten),
            ])
        out.family(
            "process_resident_memory_bytes", .gauge, help: "Resident memory of the znbd process.",
            value: stats.rssBytes)
        renderPool(stats.pool, classes: classes, frames: frames, into: &out)
        renderNBD(stats, into: &out)
        renderMaintenance(stats.maintenance, into: &out)
        renderCompression(stats.compression, into: &out)
        return out.text
    }

    private static func renderCompression(_ compression: CompressionFigures, into out: inout PrometheusExposition) {
        var codecs = [("algorithm", compression.algorithm, compression.algorithmParams)]
        if let recompress = compression.recompressAlgorithm {
            codecs.append(("recompression", recompress, compression.recompressAlgorithmParams ?? ""))
        }
        out.family(
            "znbd_codec_info", .gauge, help: "The device's codecs (zram comp_algorithm, recomp_algorithm); always 1.",
            samples: codecs.map { ([("role", $0.0), ("algorithm", $0.1), ("params", $0.2)], 1) })
        out.family(
            "znbd_pages_by_algorithm", .gauge, help: "Compressed objects by the algorithm that wrote them.",
            samples: compression.pagesByAlgorithm.sorted { $0.key < $1.key }.map { ([("algorithm", $0.key)], $0.value) }
        )
        out.family(
            "znbd_idle_pages", .gauge, help: "Pages marked idle and not accessed since.", value: compression.idlePages)
        let recompression = compression.recompression
        out.family(
            "znbd_recompression_pages_total", .counter,
            help:
                "Pages the recompression codec compressed, by outcome (incompressible: huge pages kept raw, part of not_smaller).",
            samples: [
                ([("outcome", "recompressed")], recompression.pagesRecompressed),
                ([("outcome", "not_smaller")], recompression.pagesNotSmaller),
                ([("outcome", "incompressible")], recompression.pagesIncompressible),
                ([("outcome", "raced")], recompression.pagesRaced),
            ])
        out.family(
            "znbd_recompression_bytes_total", .counter,
            help: "Object bytes of the recompressed pages, before and after.",
            samples: [
                ([("when", "before")], recompression.bytesBefore), ([("when", "after")], recompression.bytesAfter),
            ])
    }

    private static func renderPool(
        _ summary: PoolSummary, classes: ClassesDocument, frames: FramesDocument, into out: inout PrometheusExposition
    ) {
        out.family(
            "znbd_pool_frames_used", .gauge, help: "4 KiB arena frames holding zspages.", value: summary.framesUsed)
        out.family(
            "znbd_pool_frames_resident", .gauge, help: "Arena frames of resident 2 MiB blocks, used or not.",
            value: summary.framesResident)
        out.family(
            "znbd_pool_blocks_released_total", .counter, help: "Arena blocks given back to the operating system.",
            value: summary.blocksReleased)
        out.family("znbd_pool_live_objects", .gauge, help: "Objects stored in the pool.", value: summary.liveObjects)
        out.family("znbd_pool_zspages", .gauge, help: "zspages in all classes.", value: summary.zspages)
        out.family(
            "znbd_pool_metadata_bytes", .gauge, help: "Handle and zspage tables and zspage lists outside the arena.",
            value: summary.metadataBytes)
        out.family(
            "znbd_pool_objects_compacted_total", .counter, help: "Objects moved by compaction.",
            value: summary.objectsCompacted)
        out.family(
            "znbd_pool_frames_migrated_total", .counter, help: "Frames moved out of sparse blocks.",
            value: summary.framesMigrated)
        out.family(
            "znbd_pool_invalid_frees_total", .counter, help: "Frees of handles that were not live.",
            value: summary.invalidFrees)
        let inUse = classes.classes.filter { $0.zspages > 0 }
        func perClass(_ value: (ClassFigures) -> Int) -> [(labels: [(String, String)], value: Int)] {
            inUse.map { ([("class", "\($0.index)"), ("size", "\($0.size)")], value($0)) }
        }
        out.family(
            "znbd_pool_class_zspages", .gauge, help: "zspages per size class (classes in use).",
            samples: perClass(\.zspages))
        out.family(
            "znbd_pool_class_objects_used", .gauge, help: "Objects stored per size class (classes in use).",
            samples: perClass(\.objectsUsed))
        out.family(
            "znbd_pool_class_objects_allocated", .gauge, help: "Object slots per size class (classes in use).",
            samples: perClass(\.objectsAllocated))
        out.family(
            "znbd_pool_free_runs", .gauge, help: "Free runs of resident frames by buddy order (buddyinfo).",
            samples: frames.freeRunsByOrder.enumerated().map { ([("order", "\($0.offset)")], $0.element) })
        out.family(
            "znbd_pool_blocks_by_occupancy", .gauge,
            help: "Resident blocks by used frames, in eighths (0 = empty, 8 = more than 7/8).",
            samples: frames.blockOccupancy.enumerated().map { ([("eighths", "\($0.offset)")], $0.element) })
    }

    private static func renderMaintenance(_ maintenance: MaintenanceFigures, into out: inout PrometheusExposition) {
        out.family(
            "znbd_maintenance_passes_total", .counter, help: "Maintenance passes, by what started them.",
            samples: maintenance.passes.sorted { $0.key < $1.key }.map { ([("trigger", $0.key)], $0.value) })
        out.family(
            "znbd_maintenance_pages_compacted_total", .counter, help: "Frames freed by maintenance compaction.",
            value: maintenance.pagesCompacted)
        out.family(
            "znbd_maintenance_objects_moved_total", .counter, help: "Objects moved by maintenance compaction.",
            value: maintenance.objectsMoved)
        out.family(
            "znbd_maintenance_frames_migrated_total", .counter, help: "Frames moved out of sparse blocks.",
            value: maintenance.framesMigrated)
        out.family(
            "znbd_maintenance_blocks_released_total", .counter,
            help: "Blocks emptied by migration and given back to the operating system.",
            value: maintenance.blocksReleased)
        out.family(
            "znbd_maintenance_busy_skipped_total", .counter,
            help: "Objects and frames left in place because I/O held them.",
            samples: [
                ([("what", "object")], maintenance.objectsSkipped), ([("what", "frame")], maintenance.framesSkipped),
            ])
        out.family(
            "znbd_maintenance_milliseconds_total", .counter, help: "Time spent in maintenance passes.",
            value: Int((maintenance.secondsSpent * 1000).rounded()))
    }

    private static func renderNBD(_ stats: StatsDocument, into out: inout PrometheusExposition) {
        let nbd = stats.nbd
        out.family("znbd_nbd_connections_open", .gauge, help: "NBD connections open now.", value: nbd.connectionsOpen)
        out.family(
            "znbd_nbd_connections_total", .counter, help: "NBD connections accepted.", value: nbd.connectionsTotal)
        out.family(
            "znbd_nbd_protocol_errors_total", .counter, help: "NBD connections closed for a protocol violation.",
            value: nbd.protocolErrors)
        out.family(
            "znbd_nbd_bytes_in_flight", .gauge,
            help: "Bytes held for NBD requests in progress: payloads not yet stored, replies not yet sent.",
            value: nbd.bytesInFlight)
        let commands = nbd.commands.sorted { $0.key < $1.key }
        out.family(
            "znbd_nbd_requests_total", .counter, help: "NBD requests by command.",
            samples: commands.map { ([("command", $0.key)], $0.value.requests) })
        out.family(
            "znbd_nbd_request_bytes_total", .counter, help: "NBD payload bytes by command.",
            samples: commands.map { ([("command", $0.key)], $0.value.bytes) })
        out.family(
            "znbd_nbd_request_errors_total", .counter,
            help: "NBD requests answered with an error, by command and errno.",
            samples: commands.flatMap { command in
                command.value.errors.sorted { $0.key < $1.key }.map {
                    ([("command", command.key), ("errno", $0.key)], $0.value)
                }
            })
    }
}
