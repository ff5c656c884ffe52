public import ZNBDControlAPI
public import ZNBDFigures

/// Prometheus text exposition format 0.0.4, the format node_exporter serves:
/// per metric family one `# HELP` and one `# TYPE` line, then its samples.
///
/// Not swift-prometheus: its registry keeps live metric objects that code
/// updates as events happen, while znbd's figures are snapshots read at
/// scrape time; a registry rebuilt per scrape would print this same text.
/// The tests parse the output with Debian's python3-prometheus-client.
public struct PrometheusExposition {
    public private(set) var text = ""

    public init() {}

    /// One family: `name` with its help text and type, then one sample per
    /// element of `samples` (labels, value).
    public mutating func family(
        _ name: String, _ type: ZNBDFigures.MetricType, help: String,
        samples: [(labels: [(String, String)], value: Int)]
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

    public mutating func family(_ name: String, _ type: ZNBDFigures.MetricType, help: String, value: Int) {
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
    /// GET /metrics: every figure family of /v1/stats under its declared
    /// names (ZNBDFigures: byte figures in bytes with the _bytes suffix,
    /// running counts as counters with _total), then the tables' families
    /// (per class, per command, the frame map, the codecs), declared in
    /// FigureCatalog.Table.
    public static func render(stats: StatsDocument, classes: ClassesDocument, frames: FramesDocument) -> String {
        var out = PrometheusExposition()
        out.figures(stats.device)
        out.figures(stats.process)
        out.figures(stats.pool)
        renderClasses(classes, frames: frames, into: &out)
        out.figures(stats.nbd.totals)
        renderCommands(stats.nbd, into: &out)
        out.figures(stats.maintenance.totals)
        out.figures(stats.maintenance.recompression, prefix: FigureCatalog.maintenanceRecompressionPrefix)
        renderCodecs(stats.compression, into: &out)
        out.figures(stats.compression.figures)
        out.figures(stats.compression.recompression)
        out.figures(stats.state)
        return out.text
    }

    /// One family's figures: a metric family per declared family, in the
    /// order its first figure is declared, with one sample per figure (per
    /// label value for a labelled one). Durations kept in milliseconds are
    /// exported as they are.
    mutating func figures<Family: FigureFamily>(_ figures: Figures<Family>, prefix: String = Family.metricPrefix) {
        var order: [MetricFamily] = []
        var samples: [MetricFamily: [(labels: [(String, String)], value: Int)]] = [:]
        for figure in Family.allCases {
            let declaration = figure.declaration
            if samples[declaration.metric] == nil {
                order.append(declaration.metric)
                samples[declaration.metric] = []
            }
            let fixed = declaration.labels.map { ($0.name, $0.value) }
            if let label = declaration.label {
                for (value, count) in figures.values(of: figure).sorted(by: { $0.key < $1.key }) {
                    samples[declaration.metric]!.append((fixed + [(label, value)], count))
                }
            } else {
                samples[declaration.metric]!.append((fixed, figures[figure]))
            }
        }
        for metric in order {
            family(prefix + metric.name, metric.type, help: metric.help, samples: samples[metric]!)
        }
    }

    private mutating func family(_ metric: MetricFamily, samples: [(labels: [(String, String)], value: Int)]) {
        family(metric.name, metric.type, help: metric.help, samples: samples)
    }

    private static func renderClasses(
        _ classes: ClassesDocument, frames: FramesDocument, into out: inout PrometheusExposition
    ) {
        typealias Table = FigureCatalog.Table
        let inUse = classes.classes.filter { $0.zspages > 0 }
        func perClass(_ value: (ClassesDocument.Class) -> Int) -> [(labels: [(String, String)], value: Int)] {
            inUse.map { ([("class", "\($0.index)"), ("size", "\($0.size)")], value($0)) }
        }
        out.family(Table.classZspages, samples: perClass(\.zspages))
        out.family(Table.classObjectsUsed, samples: perClass(\.objectsUsed))
        out.family(Table.classObjectsAllocated, samples: perClass(\.objectsAllocated))
        out.family(
            Table.freeRuns,
            samples: frames.freeRunsByOrder.enumerated().map { ([("order", "\($0.offset)")], $0.element) })
        out.family(
            Table.blocksByOccupancy,
            samples: frames.blockOccupancy.enumerated().map { ([("eighths", "\($0.offset)")], $0.element) })
    }

    private static func renderCommands(_ nbd: StatsDocument.NBD, into out: inout PrometheusExposition) {
        typealias Table = FigureCatalog.Table
        let commands = nbd.commands.sorted { $0.key < $1.key }
        out.family(Table.commandRequests, samples: commands.map { ([("command", $0.key)], $0.value.requests) })
        out.family(Table.commandBytes, samples: commands.map { ([("command", $0.key)], $0.value.bytes) })
        out.family(
            Table.commandErrors,
            samples: commands.flatMap { command in
                command.value.errors.sorted { $0.key < $1.key }.map {
                    ([("command", command.key), ("errno", $0.key)], $0.value)
                }
            })
    }

    private static func renderCodecs(_ compression: StatsDocument.Compression, into out: inout PrometheusExposition) {
        var codecs = [("algorithm", compression.algorithm, compression.algorithmParams)]
        if let recompress = compression.recompressAlgorithm {
            codecs.append(("recompression", recompress, compression.recompressAlgorithmParams ?? ""))
        }
        out.family(
            FigureCatalog.Table.codecInfo,
            samples: codecs.map { ([("role", $0.0), ("algorithm", $0.1), ("params", $0.2)], 1) })
    }
}
