/// The documents as znbdctl prints them for people (and, for mm_stat, for
/// scripts written against /sys/block/zramN/mm_stat).
public enum TextViews {
    /// zramctl's table, with the figures a zram user looks at next.
    public static func statsTable(_ stats: StatsDocument) -> String {
        let device = stats.device
        let ratio = device.comprDataSize > 0 ? Double(device.origDataSize) / Double(device.comprDataSize) : 0
        let header = [
            "NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "RATIO", "MEM-LIMIT", "MEM-USED",
            "SAME", "HUGE", "COMPACTED", "RSS",
        ]
        let row = [
            stats.export.name.isEmpty ? "(default)" : stats.export.name, algorithmName(stats.compression),
            ByteSize.format(device.diskSize), ByteSize.format(device.origDataSize),
            ByteSize.format(device.comprDataSize),
            ByteSize.format(device.memUsedTotal), formatRatio(ratio),
            device.memLimit == 0 ? "-" : ByteSize.format(device.memLimit), ByteSize.format(device.memUsedMax),
            "\(device.samePages)", "\(device.hugePages)", "\(device.pagesCompacted)", ByteSize.format(stats.rssBytes),
        ]
        return table([header, row], leftAligned: 2)
    }

    /// `zstd:9`, or the bare name with the library's default.
    static func algorithmName(_ compression: CompressionFigures) -> String {
        codecName(compression.algorithm, params: compression.algorithmParams)
    }

    static func codecName(_ algorithm: String, params: String) -> String {
        params.hasPrefix("level=") ? "\(algorithm):\(params.dropFirst("level=".count))" : algorithm
    }

    /// The codecs, pages per algorithm, idle pages and recompression, a few lines.
    public static func compressionView(_ compression: CompressionFigures) -> String {
        var text = "algorithm \(algorithmName(compression))"
        if let recompress = compression.recompressAlgorithm {
            text += ", recompression \(codecName(recompress, params: compression.recompressAlgorithmParams ?? ""))"
        }
        let pages = compression.pagesByAlgorithm.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
        text += "; pages by algorithm: " + pages.joined(separator: ", ") + "; idle pages \(compression.idlePages)\n"
        if compression.recompressAlgorithm != nil {
            text += "recompression: " + recompressionLine(compression.recompression) + "\n"
        }
        return text
    }

    /// What a recompression run (or the totals) did, one line.
    public static func recompressionLine(_ result: RecompressionFigures) -> String {
        var text = result.pagesScanned.map { "\($0) pages scanned, " } ?? ""
        text += "\(result.pagesTried) tried, \(result.pagesRecompressed) recompressed"
        text += " (\(ByteSize.format(result.bytesBefore)) -> \(ByteSize.format(result.bytesAfter)))"
        text += ", \(result.pagesNotSmaller) not smaller (\(result.pagesIncompressible) incompressible)"
        if result.pagesRaced > 0 { text += ", \(result.pagesRaced) written meanwhile" }
        if result.pagesWithoutRoom > 0 { text += ", \(result.pagesWithoutRoom) left for want of pool room" }
        return text
    }

    public static func recompressSummary(_ run: RecompressDocument) -> String {
        var text = "recompress type=\(run.type) with \(run.algorithm): " + recompressionLine(run.result) + "\n"
        text += "mem_used_total \(ByteSize.format(run.memUsedTotalBefore)) -> \(ByteSize.format(run.memUsedTotalAfter))"
        text += " in \(formatSeconds(run.seconds))\n"
        return text
    }

    public static func idleLine(_ idle: IdleDocument) -> String {
        "\(idle.pagesMarked) pages marked idle; \(idle.idlePages) idle in all\n"
    }

    /// The nine mm_stat figures as the kernel prints them.
    public static func mmStatLine(_ stats: StatsDocument) -> String {
        stats.mmStat.map { pad("\($0)", 8, left: false) }.joined(separator: " ") + "\n"
    }

    /// zsmalloc's classes file: one row per class in use (every class with
    /// `all`), then the totals.
    public static func classesTable(_ classes: [ClassFigures], all: Bool) -> String {
        let header = [
            "class", "size", "huge", "frames/zspage", "objs/zspage", "zspages", "almost_empty", "almost_full",
            "full", "obj_allocated", "obj_used", "frames_used", "freeable",
        ]
        var rows = [header]
        var totals = [Int](repeating: 0, count: 8)
        for entry in classes where all || entry.zspages > 0 {
            let freeable =
                entry.objectsPerZspage > 0
                ? (entry.objectsAllocated - entry.objectsUsed) / entry.objectsPerZspage * entry.framesPerZspage : 0
            let figures = [
                entry.zspages, entry.almostEmpty, entry.almostFull, entry.full, entry.objectsAllocated,
                entry.objectsUsed, entry.framesUsed, freeable,
            ]
            for (index, figure) in figures.enumerated() { totals[index] += figure }
            rows.append(
                [
                    "\(entry.index)", "\(entry.size)", entry.isHuge ? "Y" : "", "\(entry.framesPerZspage)",
                    "\(entry.objectsPerZspage)",
                ] + figures.map { "\($0)" })
        }
        rows.append(["Total", "", "", "", ""] + totals.map { "\($0)" })
        return table(rows, leftAligned: 0)
    }

    /// A /proc/buddyinfo-style line of free runs by order, and the blocks'
    /// occupancy as a small histogram.
    public static func framesView(_ frames: FramesDocument) -> String {
        var text = "frames: \(frames.framesUsed) used, \(frames.framesResident) resident"
        text += " in \(frames.blocksResident) blocks of \(ByteSize.format(frames.blockSize));"
        text += " \(frames.blocksReleased) blocks released to the OS\n"
        text += "free runs by order (runs of 2^order free frames in resident blocks, as /proc/buddyinfo):\n"
        text += "order " + frames.freeRunsByOrder.indices.map { pad("\($0)", 6, left: false) }.joined() + "\n"
        text += "runs  " + frames.freeRunsByOrder.map { pad("\($0)", 6, left: false) }.joined() + "\n"
        text += "resident blocks by frames used:\n"
        let most = max(1, frames.blockOccupancy.max() ?? 1)
        let framesPerBlock = frames.blockSize / frames.frameSize
        for (eighths, count) in frames.blockOccupancy.enumerated() {
            let label =
                eighths == 0 ? "empty" : "\((eighths - 1) * framesPerBlock / 8 + 1)-\(eighths * framesPerBlock / 8)"
            let bar = String(repeating: "#", count: count == 0 ? 0 : max(1, count * 40 / most))
            text += "  " + pad(label, 7, left: true) + pad("\(count)", 7, left: false) + " |" + bar + "\n"
        }
        return text
    }

    public static func compactSummary(_ result: CompactDocument) -> String {
        let compaction = result.pass.compaction
        let migration = result.pass.migration
        var text = "compaction: \(compaction.framesFreed) frames freed"
        text += " (\(ByteSize.format(compaction.framesFreed * result.frameSize))),"
        text += " \(compaction.objectsMoved) objects moved (\(ByteSize.format(compaction.bytesMoved)))"
        if compaction.objectsSkipped > 0 { text += ", \(compaction.objectsSkipped) busy objects left" }
        text += "\nmigration: \(migration.framesMigrated) frames migrated,"
        text += " \(migration.blocksReleased) blocks released"
        text += " (\(ByteSize.format(migration.blocksReleased * result.blockSize)))"
        if migration.framesSkipped > 0 { text += ", \(migration.framesSkipped) busy frames left" }
        text += "\nmem_used_total \(ByteSize.format(result.pass.memUsedTotalBefore)) -> "
        text += "\(ByteSize.format(result.pass.memUsedTotalAfter)),"
        text += " RSS \(ByteSize.format(result.rssBytesBefore)) -> \(ByteSize.format(result.rssBytesAfter))"
        text += " in \(formatSeconds(result.pass.seconds))\n"
        return text
    }

    public static func memLimitLine(_ limit: MemLimitDocument) -> String {
        "mem_limit " + (limit.memLimit == 0 ? "none" : "\(ByteSize.format(limit.memLimit)) (\(limit.memLimit) bytes)")
            + "\n"
    }

    /// The maintenance thread's totals, a few lines.
    public static func maintenanceView(_ maintenance: MaintenanceFigures) -> String {
        var text = "maintenance: compaction \(maintenance.compaction), migration \(maintenance.migration),"
        text += " memory pressure " + (maintenance.pressureSource.map { "from \($0)" } ?? "not watched") + "\n"
        let passes = maintenance.passes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
        text += "passes: " + passes.joined(separator: ", ") + "; \(formatSeconds(maintenance.secondsSpent)) spent\n"
        text += "compaction: \(maintenance.pagesCompacted) frames freed, \(maintenance.objectsMoved) objects moved"
        text += " (\(ByteSize.format(maintenance.bytesMoved))), \(maintenance.objectsSkipped) busy\n"
        text += "migration: \(maintenance.framesMigrated) frames moved, \(maintenance.blocksReleased) blocks released,"
        text += " \(maintenance.framesSkipped) busy; heap trimmed \(maintenance.heapTrims) times\n"
        if let age = maintenance.recompressIdleAgeSeconds {
            text += "recompression of pages idle \(formatSeconds(age)): \(maintenance.recompressionSweeps) sweeps, "
            text += recompressionLine(maintenance.recompression) + "\n"
        }
        return text
    }

    // MARK: Layout

    static func formatSeconds(_ seconds: Double) -> String {
        seconds < 1 ? "\(Int((seconds * 1000).rounded())) ms" : "\(Double(Int(seconds * 100)) / 100) s"
    }

    static func formatRatio(_ ratio: Double) -> String {
        let hundredths = Int((ratio * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100)." + (fraction < 10 ? "0" : "") + "\(fraction)"
    }

    /// Columns as wide as their widest cell; the first `leftAligned`
    /// columns flush left, the rest (figures) flush right.
    static func table(_ rows: [[String]], leftAligned: Int) -> String {
        let columns = rows.map(\.count).max() ?? 0
        let widths = (0..<columns).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { pad($0.element, widths[$0.offset], left: $0.offset < leftAligned) }
                .joined(separator: " ").trailingSpacesRemoved()
        }.joined(separator: "\n") + "\n"
    }

    static func pad(_ text: String, _ width: Int, left: Bool) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.count))
        return left ? text + padding : padding + text
    }
}

extension String {
    fileprivate func trailingSpacesRemoved() -> String {
        var text = self
        while text.last == " " { text.removeLast() }
        return text
    }
}
