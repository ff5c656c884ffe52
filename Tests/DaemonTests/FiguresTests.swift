import Foundation
import Testing
import PageCodec
import TestSupport
import ZNBDControlAPI
import ZNBDControlServer
import ZNBDFigures
import ZRAM

/// Every figure is declared once (ZNBDFigures) and everything that shows
/// figures is derived from the declarations. These tests hold each derived
/// output to the declarations, both ways: a declared figure missing from the
/// JSON, /metrics, znbdctl's text or the operator's guide fails, and so does
/// a figure one of them shows that nobody declared.
@Suite("Figures: declared once, and every output derived from the declarations")
struct FiguresTests {
    /// A family's placements in GET /v1/stats: the JSON path of the object
    /// its figures sit in, the Prometheus prefix they are rendered with, and
    /// the heading of their section in `znbdctl stats --details`.
    struct Placement {
        var family: any FigureFamily.Type
        var path: [String]
        var prefix: String
        var title: String

        init(_ family: any FigureFamily.Type, path: [String], prefix: String? = nil, title: String? = nil) {
            self.family = family
            self.path = path
            self.prefix = prefix ?? family.metricPrefix
            self.title = title ?? family.title
        }
    }

    static let placements: [Placement] = [
        Placement(DeviceFigure.self, path: []),
        Placement(ProcessFigure.self, path: []),
        Placement(PoolFigure.self, path: ["pool"]),
        Placement(ServerFigure.self, path: ["nbd"]),
        Placement(MaintenanceFigure.self, path: ["maintenance"]),
        Placement(
            RecompressionFigure.self, path: ["maintenance", "recompression"],
            prefix: FigureCatalog.maintenanceRecompressionPrefix, title: "recompression by the maintenance thread"),
        Placement(CompressionFigure.self, path: ["compression"]),
        Placement(RecompressionFigure.self, path: ["compression", "recompression"]),
        Placement(StateFigure.self, path: ["state"]),
    ]

    /// The keys of each figure object that are not figures: the document's
    /// own fields (names, settings, nested objects), by JSON path.
    static let structuralKeys: [[String]: Set<String>] = [
        []: ["mm_stat", "io_stat", "export", "pool", "nbd", "maintenance", "compression", "state"],
        ["nbd"]: ["commands"],
        ["maintenance"]: [
            "compaction", "migration", "pressure_source", "last_pass", "recompress_idle_age_seconds", "recompression",
        ],
        ["compression"]: [
            "algorithm", "algorithm_params", "recompress_algorithm", "recompress_algorithm_params", "recompression",
        ],
    ]

    @Test("each family: cases numbered 0...n-1, keys unique, shared metric families agree, labelled figures named")
    func declarations() {
        var metrics: [String: MetricFamily] = [:]
        for family in FigureCatalog.families {
            let declarations = family.declarations
            #expect(family.rawValues == Array(0..<declarations.count), "\(family): cases out of order")
            #expect(Set(declarations.map(\.key)).count == declarations.count, "\(family): a key twice")
            for declaration in declarations {
                let name = family.metricPrefix + declaration.metric.name
                if let earlier = metrics[name] {
                    #expect(earlier == declaration.metric, "\(name) declared twice, differently")
                }
                metrics[name] = declaration.metric
                if declaration.label != nil {
                    #expect(declaration.unit != .milliseconds, "\(declaration.key): a labelled duration")
                }
                #expect(declaration.metric.type == .counter ? name.hasSuffix("_total") : !name.hasSuffix("_total"))
                #expect(declaration.unit != .bytes || name.contains("_bytes"), "\(name): a size without _bytes")
            }
        }
        for table in FigureCatalog.Table.all {
            #expect(metrics[table.name] == nil, "\(table.name): a table and a figure")
        }
    }

    /// An endpoint over a small device with pages of every kind, a manual
    /// pass and a recompression run behind it, so that labelled figures hold
    /// values.
    static func endpoint() throws -> ControlEndpoint {
        let device = try CompressedBlockDevice(
            .init(byteCount: 8 << 20, algorithm: .lzo, recompressionAlgorithm: try CodecChoice(.zstd, level: 9)))
        var random = SeededRandom(seed: 11)
        try [UInt8](repeating: 0, count: 4096).withUnsafeBytes { try device.write($0, at: 0) }
        try random.bytes(8192).withUnsafeBytes { try device.write($0, at: 8192) }
        try [UInt8](repeating: 0x41, count: 2048).withUnsafeBytes { try device.write($0, at: 16384) }
        let maintenance = try DeviceMaintenance(device: device, policy: .manualOnly)
        maintenance.runPass(.manual)
        _ = try maintenance.recompress(RecompressionRequest(type: .all))
        let export = ExportSummary(
            name: "f", sizeBytes: 8 << 20, readOnly: false, nbdSocket: nil, tcpAddress: nil, compaction: "off")
        return ControlEndpoint(maintenance: maintenance, export: export, serverFigures: { ServerFiguresFixture.sample })
    }

    @Test("the JSON: each family's object holds every declared key, and nothing else but the document's own fields")
    func json() throws {
        let endpoint = try Self.endpoint()
        let response = endpoint.respond(to: ControlRequest(method: "GET", target: "/v1/stats"))
        let document = try #require(try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
        var declaredByPath: [[String]: Set<String>] = [:]
        for placement in Self.placements {
            let object = try #require(
                placement.path.reduce(document as Any?) { ($0 as? [String: Any])?[$1] } as? [String: Any],
                "no object at \(placement.path)")
            for declaration in placement.family.declarations {
                #expect(object[declaration.key] != nil, "\(placement.path): \(declaration.key) is missing")
                if declaration.label != nil {
                    #expect(object[declaration.key] is [String: Any], "\(declaration.key) is not an object")
                } else {
                    #expect(object[declaration.key] is NSNumber, "\(declaration.key) is not a number")
                }
            }
            declaredByPath[placement.path, default: []].formUnion(placement.family.declarations.map(\.key))
        }
        for (path, declared) in declaredByPath {
            let object = path.reduce(document as Any?) { ($0 as? [String: Any])?[$1] } as? [String: Any] ?? [:]
            let undeclared = Set(object.keys).subtracting(declared).subtracting(Self.structuralKeys[path] ?? [])
            #expect(undeclared.isEmpty, "\(path): keys no figure declares: \(undeclared.sorted())")
        }
    }

    /// The metric family names of a Prometheus text, from its TYPE lines.
    static func metricFamilies(_ text: String) -> Set<String> {
        Set(
            text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map {
                String($0.split(separator: " ")[2])
            })
    }

    @Test("/metrics: exactly the declared families, and a sample for every number figure")
    func metrics() throws {
        let endpoint = try Self.endpoint()
        let response = endpoint.respond(to: ControlRequest(method: "GET", target: "/metrics"))
        let text = String(decoding: response.body, as: UTF8.self)
        let shown = Self.metricFamilies(text)
        let declared = FigureCatalog.metricNames
        #expect(shown.subtracting(declared).isEmpty, "undeclared families: \(shown.subtracting(declared).sorted())")
        #expect(declared.subtracting(shown).isEmpty, "declared, not shown: \(declared.subtracting(shown).sorted())")
        let samples = Set(text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { $0.split(separator: " ")[0] })
        for placement in Self.placements {
            for declaration in placement.family.declarations where declaration.label == nil {
                let labels = declaration.labels.map { "\($0.name)=\"\($0.value)\"" }.joined(separator: ",")
                let sample = placement.prefix + declaration.metric.name + (labels.isEmpty ? "" : "{\(labels)}")
                #expect(samples.contains(Substring(sample)), "no sample \(sample) for \(declaration.key)")
            }
        }
    }

    @Test("znbdctl's text: each family's section of --details lists exactly its figures; the table every column")
    func text() throws {
        let endpoint = try Self.endpoint()
        let stats = endpoint.stats(pool: endpoint.device.poolFigures())
        // Sections: a heading ending in ":" alone on its line, then its
        // figures, one per line, each indented by two spaces.
        var sections: [String: [String]] = [:]
        var current: String?
        for line in TextViews.details(stats).split(separator: "\n") {
            if line.hasPrefix("  ") {
                guard let current else { continue }
                sections[current, default: []].append(String(line.dropFirst(2).prefix { $0 != " " }))
            } else if line.hasSuffix(":") {
                current = String(line.dropLast())
            } else {
                current = nil
            }
        }
        for placement in Self.placements {
            let keys = placement.family.declarations.map(\.key)
            #expect(sections[placement.title] == keys, "--details' \"\(placement.title)\" section")
        }
        #expect(Set(sections.keys) == Set(Self.placements.map(\.title)), "sections: \(sections.keys.sorted())")
        let header = TextViews.statsTable(stats).split(separator: "\n").first?.split(separator: " ").map(String.init)
        let columns = (DeviceFigure.declarations + ProcessFigure.declarations).compactMap(\.column)
        #expect(Set(columns).isSubset(of: Set(header ?? [])), "table header \(header ?? [])")
        #expect(Set(header ?? []).subtracting(columns) == ["NAME", "ALGORITHM", "RATIO"])
    }

    /// The lines of a section of a document in docs/, from its heading to
    /// the next heading of the same level.
    static func section(_ heading: String, of document: String) throws -> String {
        let text = try String(contentsOf: repositoryRoot.appending(path: document), encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let start = try #require(lines.firstIndex { $0 == heading }, "\(document) has no \"\(heading)\"")
        let level = heading.prefix { $0 == "#" }
        let end =
            lines[(start + 1)...].firstIndex {
                $0.hasPrefix(level + " ") || ($0.hasPrefix("#") && $0.count < level.count)
            }
            ?? lines.endIndex
        return lines[start..<end].joined(separator: "\n")
    }

    @Test("docs/OPERATIONS.md's table of figures has a row for every declared figure, and none for an undeclared one")
    func operatorsGuide() throws {
        let table = try Self.section("### The figures, against the kernel's", of: "docs/OPERATIONS.md")
        let rows = table.split(separator: "\n").filter { $0.hasPrefix("| `") }
        var documented = Set<String>()
        for row in rows {
            let cell = row.split(separator: "|", omittingEmptySubsequences: true).first ?? ""
            for name in cell.split(separator: "`").enumerated().filter({ $0.offset % 2 == 1 }).map { $0.element } {
                documented.insert(String(name))
            }
        }
        var declared = Set<String>()
        for family in FigureCatalog.families {
            for declaration in family.declarations {
                declared.insert(family.path.isEmpty ? declaration.key : "\(family.path).\(declaration.key)")
            }
        }
        #expect(declared.subtracting(documented).isEmpty, "no row for \(declared.subtracting(documented).sorted())")
        // Rows may also name the document's own fields (export.*, mm_stat);
        // a row naming a key in a figure family's object must name a
        // declared figure or one of that object's own fields.
        let figurePaths = Set(FigureCatalog.families.map { $0.path }.filter { !$0.isEmpty })
        var stray: [String] = []
        for name in documented {
            guard let dot = name.lastIndex(of: ".") else { continue }
            let path = String(name[..<dot])
            let key = String(name[name.index(after: dot)...])
            guard figurePaths.contains(path), !declared.contains(name) else { continue }
            let own = Self.structuralKeys[path.split(separator: ".").map(String.init)] ?? []
            if !own.contains(key) { stray.append(name) }
        }
        #expect(stray.isEmpty, "rows for undeclared figures: \(stray.sorted())")
    }

    @Test("docs/ARCHITECTURE.md lists exactly the control endpoint's routes")
    func routesDocumented() throws {
        let section = try Self.section("### Control routes", of: "docs/ARCHITECTURE.md")
        let documented = section.split(separator: "\n").filter { $0.hasPrefix("| `") }.map { row in
            String(row.split(separator: "`")[1])
        }
        let routes = ControlEndpoint.routes.map { "\($0.method) \($0.path)" }
        #expect(documented == routes)
    }
}

extension FigureFamily {
    static var rawValues: [Int] { allCases.map(\.rawValue) }
}
