public import ZNBDFigures

/// The documents as znbdctl prints them for people (and, for mm_stat, for
/// scripts written against /sys/block/zramN/mm_stat). The figures' columns,
/// labels and units come from their declarations (ZNBDFigures).
public enum TextViews {
    /// zramctl's table: the name and codec, then every device and process
    /// figure that declares a column, with RATIO (DATA / COMPR) after TOTAL,
    /// as zramctl's COMP-RATIO; below it, a warning line once writes have
    /// been refused for want of memory.
    public static func statsTable(_ stats: StatsDocument) -> String { statsTable([stats], listing: false) }

    /// The same table with a row per daemon; `listing` (znbdctl list) puts
    /// each daemon's NBD socket first, as zramctl puts the device's path.
    public static func statsTable(_ documents: [StatsDocument], listing: Bool) -> String {
        var header: [String] = []
        var rows: [[String]] = []
        var warnings = ""
        for stats in documents {
            var names = listing ? ["SOCKET"] : []
            var row = listing ? [stats.export.nbdSocket ?? "-"] : []
            names += ["NAME", "ALGORITHM"]
            row += [stats.export.name.isEmpty ? "(default)" : stats.export.name, algorithmName(stats.compression)]
            func add<Family: FigureFamily>(_ figures: Figures<Family>) {
                for figure in Family.allCases {
                    let declaration = figure.declaration
                    guard let column = declaration.column else { continue }
                    names.append(column)
                    let noLimit = figure as? DeviceFigure == .memLimit
                    row.append(format(figures[figure], declaration, zeroAs: noLimit ? "-" : nil))
                    if figure as? DeviceFigure == .memUsedTotal {
                        names.append("RATIO")
                        let device = stats.device
                        let compressed = device[.comprDataSize]
                        row.append(
                            formatRatio(compressed > 0 ? Double(device[.origDataSize]) / Double(compressed) : 0))
                    }
                }
            }
            add(stats.device)
            add(stats.process)
            header = names
            rows.append(row)
            let refused = stats.device[.failedWritesNoSpace]
            if refused > 0 {
                warnings +=
                    "warning: \(listing ? (stats.export.nbdSocket ?? "-") + ": " : "")\(refused) write\(refused == 1 ? "" : "s") refused since the start: no pool memory left"
                    + (stats.device[.memLimit] > 0 ? " under mem_limit" : "")
                    + " (failed_writes_no_space); a filesystem on the device may have gone read-only"
                    + " (docs/OPERATIONS.md, \"When the pool is full\")\n"
            }
        }
        // Warnings below the rows, so scripts that read the table by line
        // keep working.
        return table([header] + rows, leftAligned: listing ? 3 : 2) + warnings
    }

    /// Every figure of the document, family by family, one per line under
    /// its JSON key, after the codecs, the maintenance thread's settings and
    /// the state directory:
    /// `znbdctl stats --details`.
    public static func details(_ stats: StatsDocument) -> String {
        let compression = stats.compression
        var text = "codecs: algorithm \(algorithmName(compression))"
        if let recompress = compression.recompressAlgorithm {
            text += ", recompression \(codecName(recompress, params: compression.recompressAlgorithmParams ?? ""))"
            if let age = stats.maintenance.recompressIdleAgeSeconds {
                text += " (by the maintenance thread after \(formatSeconds(age)) idle)"
            }
        }
        let maintenance = stats.maintenance
        text += "\nmaintenance: compaction \(maintenance.compaction), migration \(maintenance.migration),"
        text += " memory pressure " + (maintenance.pressureSource.map { "from \($0)" } ?? "not watched") + "\n"
        text += "state: " + (stats.export.stateDirectory ?? "none (the disk is this process's memory)") + "\n"
        text += figureList(stats.device) + figureList(stats.process) + figureList(stats.pool)
        text += figureList(stats.nbd.totals) + figureList(stats.compression.figures)
        text += figureList(stats.compression.recompression)
        text += figureList(stats.maintenance.totals)
        text += figureList(stats.maintenance.recompression, title: "recompression by the maintenance thread")
        text += figureList(stats.state)
        return text
    }

    /// A family's figures under its title, one line each: the JSON key and
    /// the value in its unit (a labelled figure's values on one line).
    public static func figureList<Family: FigureFamily>(
        _ figures: Figures<Family>, title: String = Family.title
    ) -> String {
        var rows: [[String]] = []
        for figure in Family.allCases {
            let declaration = figure.declaration
            var value = format(figures[figure], declaration)
            if declaration.label != nil {
                let values = figures.values(of: figure).sorted { $0.key < $1.key }
                value = values.map { "\($0.key) \(format($0.value, declaration))" }.joined(separator: ", ")
                if value.isEmpty { value = "-" }
            }
            rows.append(["  " + declaration.key, value])
        }
        return title + ":\n" + table(rows, leftAligned: 2)
    }

    /// A value as its unit reads: sizes as zramctl prints them, durations in
    /// seconds or milliseconds, counts as they are.
    static func format(_ value: Int, _ declaration: FigureDeclaration, zeroAs zero: String? = nil) -> String {
        if value == 0, let zero { return zero }
        switch declaration.unit {
        case .count: return "\(value)"
        case .bytes: return ByteSize.format(value)
        case .milliseconds: return formatSeconds(Double(value) / 1000)
        }
    }

    /// `zstd:9`, or the bare name with the library's default.
    static func algorithmName(_ compression: StatsDocument.Compression) -> String {
        codecName(compression.algorithm, params: compression.algorithmParams)
    }

    static func codecName(_ algorithm: String, params: String) -> String {
        params.hasPrefix("level=") ? "\(algorithm):\(params.dropFirst("level=".count))" : algorithm
    }

    /// What a recompression run (or the totals) did, one line.
    public static func recompressionLine(_ result: Figures<RecompressionFigure>) -> String {
        var text = "\(result[.pagesScanned]) pages scanned, "
        text += "\(result[.pagesTried]) tried, \(result[.pagesRecompressed]) recompressed"
        text += " (\(ByteSize.format(result[.bytesBefore])) -> \(ByteSize.format(result[.bytesAfter])))"
        text += ", \(result[.pagesNotSmaller]) not smaller (\(result[.pagesIncompressible]) incompressible)"
        if result[.pagesRaced] > 0 { text += ", \(result[.pagesRaced]) written meanwhile" }
        if result[.pagesWithoutRoom] > 0 { text += ", \(result[.pagesWithoutRoom]) left for want of pool room" }
        return text
    }

    public static func recompressSummary(_ run: RecompressDocument) -> String {
        var text = "recompress type=\(run.type) with \(run.algorithm): " + recompressionLine(run.result.figures) + "\n"
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
    public static func classesTable(_ classes: [ClassesDocument.Class], all: Bool) -> String {
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
