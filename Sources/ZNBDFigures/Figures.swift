// ZNBDFigures: every figure znbd reports, declared once. The modules that
// count (ZRAM, ZSPool, NBD) fill a `Figures` value keyed by the declaring
// enum; the control endpoint derives its JSON, /metrics and znbdctl's text
// from the declarations, so a figure is added by adding its case, its
// declaration and the code that counts it (and its row in
// docs/OPERATIONS.md, which a test checks). No dependencies: znbdctl links
// this and not the modules that count.
//
// THE MAP
//   Figures.swift        what a declaration says (JSON key, Prometheus
//                        family and labels, unit, text column, the kernel
//                        figure it mirrors), FigureFamily, and Figures<F>,
//                        the values of one family (with its Codable form)
//   DeviceFigures.swift  the device's figures (zram's mm_stat, io_stat and
//                        request counts) and the process's
//   PoolFigures.swift    the pool's totals (zsmalloc's)
//   ServerFigures.swift  the NBD server's totals
//   MaintenanceFigures.swift  the maintenance thread's totals, compression
//                        and recompression
//   StateFigures.swift   the state directory's cost and what resuming found
//   Catalog.swift        every family, and the metric families of the tables
//                        (per class, per command, frame runs, codecs), which
//                        the control endpoint renders from its documents

/// How Prometheus reads a family: a running count or a level.
public enum MetricType: String, Sendable {
    case counter, gauge
}

/// One Prometheus metric family: its name (after the family's prefix, see
/// FigureFamily.metricPrefix), type and help text. Figures that share one
/// (requests by operation) declare the same value with different labels.
public struct MetricFamily: Sendable, Hashable {
    public var name: String
    public var type: MetricType
    public var help: String

    public init(_ name: String, _ type: MetricType, help: String) {
        self.name = name
        self.type = type
        self.help = help
    }
}

/// A label of a figure's sample inside its family ("op" = "read").
public struct MetricLabel: Sendable, Hashable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// What a figure counts, for formatting: bytes print as sizes ("1.5M"),
/// durations are kept in milliseconds and carried in JSON as seconds.
public enum FigureUnit: Sendable {
    case count
    case bytes
    case milliseconds
}

/// The figure of the kernel's zram a figure mirrors.
public enum KernelFigure: Sendable, Hashable, CustomStringConvertible {
    /// /sys/block/zramN/mm_stat, field `position` (1-based).
    case mmStat(Int, String)
    /// /sys/block/zramN/io_stat, field `position`.
    case ioStat(Int, String)
    /// Another zram attribute or statistic, by name.
    case other(String)

    public var description: String {
        switch self {
        case .mmStat(let position, let name): "mm_stat \(position) \(name)"
        case .ioStat(let position, let name): "io_stat \(position) \(name)"
        case .other(let name): name
        }
    }
}

/// Everything about one figure but its value.
public struct FigureDeclaration: Sendable {
    /// The JSON key, in its family's object.
    public var key: String
    /// The Prometheus family it is a sample of, and its labels there.
    public var metric: MetricFamily
    public var labels: [MetricLabel]
    public var unit: FigureUnit
    /// A labelled figure holds one value per label value ("trigger" =
    /// "discard"), a JSON object and one sample each; nil for a number.
    public var label: String?
    /// Its column in `znbdctl stats`' table, if it has one.
    public var column: String?
    public var kernel: KernelFigure?

    public init(
        _ key: String, _ metric: MetricFamily, labels: [MetricLabel] = [], unit: FigureUnit = .count,
        label: String? = nil, column: String? = nil, kernel: KernelFigure? = nil
    ) {
        self.key = key
        self.metric = metric
        self.labels = labels
        self.unit = unit
        self.label = label
        self.column = column
        self.kernel = kernel
    }

    /// A figure with a family of its own.
    public init(
        _ key: String, _ type: MetricType, metric name: String, help: String, unit: FigureUnit = .count,
        label: String? = nil, column: String? = nil, kernel: KernelFigure? = nil
    ) {
        self.init(
            key, MetricFamily(name, type, help: help), unit: unit, label: label, column: column, kernel: kernel)
    }
}

/// A family of figures: an enum whose cases are the figures, numbered from
/// 0 in declaration order (the order of JSON keys, metrics and text).
public protocol FigureFamily: CaseIterable, Hashable, Sendable, RawRepresentable
where RawValue == Int, AllCases == [Self] {
    /// What the family is, as the text views head it.
    static var title: String { get }
    /// Where its figures sit in GET /v1/stats, as docs/OPERATIONS.md
    /// writes their keys ("" for the top level, "pool", ...).
    static var path: String { get }
    /// The start of its Prometheus names ("znbd_", "znbd_pool_").
    static var metricPrefix: String { get }
    var declaration: FigureDeclaration { get }
}

extension FigureFamily {
    /// Every figure's declaration, in order.
    public static var declarations: [FigureDeclaration] { allCases.map(\.declaration) }
}

/// The values of one family's figures: a number each, or for a labelled
/// figure a number per label value. Encoded as one JSON object, under the
/// declared keys.
public struct Figures<Family: FigureFamily>: Sendable, Equatable {
    private var values: [Int]
    private var labelled: [Int: [String: Int]] = [:]

    public static func == (lhs: Figures, rhs: Figures) -> Bool {
        lhs.values == rhs.values
            && lhs.labelled.filter { !$0.value.isEmpty } == rhs.labelled.filter { !$0.value.isEmpty }
    }

    /// Every figure zero.
    public init() {
        values = [Int](repeating: 0, count: Family.allCases.count)
    }

    /// A number figure.
    public subscript(figure: Family) -> Int {
        get { values[figure.rawValue] }
        set { values[figure.rawValue] = newValue }
    }

    /// One label value of a labelled figure (0 when absent).
    public subscript(figure: Family, label: String) -> Int {
        get { labelled[figure.rawValue]?[label] ?? 0 }
        set { labelled[figure.rawValue, default: [:]][label] = newValue }
    }

    /// Every label value of a labelled figure.
    public func values(of figure: Family) -> [String: Int] {
        labelled[figure.rawValue] ?? [:]
    }

    /// A copy with storage of its own. For a snapshot taken under a lock and
    /// read after it, while the original goes on changing: a copy that shared
    /// the original's storage would be read on one thread while the other
    /// mutates that storage in place once the copy looks released, and the
    /// copy-on-write uniqueness check gives ThreadSanitizer (and the memory
    /// model) no happens-before edge between the two.
    public func detached() -> Figures {
        var copy = Figures()
        copy.values = values.map { $0 }
        copy.labelled = Dictionary(uniqueKeysWithValues: labelled.map { ($0.key, $0.value.mapValues { $0 }) })
        return copy
    }

    /// Adds `other`'s values to these, label by label.
    public mutating func add(_ other: Figures) {
        for index in values.indices { values[index] += other.values[index] }
        for (index, map) in other.labelled {
            for (label, value) in map { labelled[index, default: [:]][label, default: 0] += value }
        }
    }
}

/// A JSON key that is a declared figure's (or any string).
public struct FigureCodingKey: CodingKey {
    public var stringValue: String
    public var intValue: Int? { nil }

    public init(_ string: String) { stringValue = string }
    public init?(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
}

extension Figures: Codable {
    public init(from decoder: any Decoder) throws {
        self.init()
        let container = try decoder.container(keyedBy: FigureCodingKey.self)
        try decode(from: container)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: FigureCodingKey.self)
        try encode(into: &container)
    }

    /// Writes the figures into an object that may hold other keys too (a
    /// document that flattens them beside its own fields).
    public func encode(into container: inout KeyedEncodingContainer<FigureCodingKey>) throws {
        for figure in Family.allCases {
            let declaration = figure.declaration
            let key = FigureCodingKey(declaration.key)
            if declaration.label != nil {
                try container.encode(values(of: figure), forKey: key)
            } else if declaration.unit == .milliseconds {
                try container.encode(Double(self[figure]) / 1000, forKey: key)
            } else {
                try container.encode(self[figure], forKey: key)
            }
        }
    }

    /// Reads the figures from an object that may hold other keys too. A
    /// missing key reads as zero (a daemon older than this reader).
    public mutating func decode(from container: KeyedDecodingContainer<FigureCodingKey>) throws {
        for figure in Family.allCases {
            let declaration = figure.declaration
            let key = FigureCodingKey(declaration.key)
            if declaration.label != nil {
                labelled[figure.rawValue] = try container.decodeIfPresent([String: Int].self, forKey: key)
            } else if declaration.unit == .milliseconds {
                let seconds = try container.decodeIfPresent(Double.self, forKey: key) ?? 0
                self[figure] = Int((seconds * 1000).rounded())
            } else {
                self[figure] = try container.decodeIfPresent(Int.self, forKey: key) ?? 0
            }
        }
    }
}
