// ZNBDControlServer: the control endpoint over a running device, for
// znbdctl, curl and Prometheus.
//
// THE MAP
//   ControlEndpoint.swift  the routes (one table: method, path, answer) as
//                          plain code over the device, its maintenance and
//                          the NBD server's figures; testable without a
//                          socket (this file)
//   ControlServer.swift    HTTP/1.1 on a Unix socket (SwiftNIO), its own
//                          event loop and worker threads
//   CoreFigures.swift      the core's structured figures (class rows, frame
//                          maps, passes, codec names) as the API's documents
//   Prometheus.swift       /metrics, rendered from the figures' declarations

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
public import NBD
public import ZNBDControlAPI
import ZNBDFigures
import ZNBDSystem
public import ZRAM
public import ZSPool

/// One HTTP request as the endpoint sees it, whatever carried it.
public struct ControlRequest: Sendable {
    public var method: String
    /// The path without its query string.
    public var path: String
    public var body: [UInt8]

    public init(method: String, target: String, body: [UInt8] = []) {
        self.method = method
        path = String(target.prefix { $0 != "?" && $0 != "#" })
        self.body = body
    }
}

/// Why a request's body was refused.
public struct ControlBodyError: Error, CustomStringConvertible {
    public let description: String
}

/// One answer: a status, a content type, a body, and for 405 the methods
/// the path allows.
public struct ControlResponse: Sendable, Equatable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public var allow: [String]

    static let json = "application/json"
    /// The Prometheus text format's content type.
    static let prometheusText = "text/plain; version=0.0.4; charset=utf-8"
}

/// The control endpoint's routes, as plain code over the device, its
/// maintenance and the server's counters, testable without a socket. It
/// reads counters and takes the pool's class locks one at a time, as an I/O
/// request would; only POST /v1/compact does more (a maintenance pass: one
/// zspage per class-lock hold). `routes` is the one list of what it serves
/// (docs/ARCHITECTURE.md's list is checked against it).
public final class ControlEndpoint: Sendable {
    public let maintenance: DeviceMaintenance
    public let export: ExportSummary
    private let serverFigures: @Sendable () -> NBDServerFigures
    private let stateBytes: @Sendable () -> Int

    public var device: CompressedBlockDevice { maintenance.device }

    /// A body larger than this is refused (413) before it is read whole.
    public static let maximumBodyBytes = 64 << 10

    public init(
        maintenance: DeviceMaintenance, export: ExportSummary,
        serverFigures: @escaping @Sendable () -> NBDServerFigures, stateBytes: @escaping @Sendable () -> Int = { 0 }
    ) {
        self.maintenance = maintenance
        self.export = export
        self.serverFigures = serverFigures
        self.stateBytes = stateBytes
    }

    /// One route: a method and a path, what it answers, and the code that
    /// answers it (given the endpoint and the request's body).
    public struct Route: Sendable {
        public let method: String
        public let path: String
        public let summary: String
        let answer: @Sendable (ControlEndpoint, [UInt8]) -> ControlResponse
    }

    /// Every route, in the order docs/ARCHITECTURE.md lists them.
    public static let routes: [Route] = [
        Route(method: "GET", path: "/v1/stats", summary: "StatsDocument: every figure, under its declared key") {
            endpoint, _ in document(endpoint.stats(pool: endpoint.device.poolFigures()))
        },
        Route(method: "GET", path: "/v1/classes", summary: "ClassesDocument: zsmalloc's per-class table") {
            endpoint, _ in document(ClassesDocument(endpoint.device.poolFigures()))
        },
        Route(method: "GET", path: "/v1/frames", summary: "FramesDocument: buddyinfo-style free runs, block occupancy")
        {
            endpoint, _ in document(FramesDocument(endpoint.device.poolFigures()))
        },
        Route(
            method: "POST", path: "/v1/compact",
            summary: "CompactDocument: one maintenance pass (compaction, migration), now"
        ) { endpoint, _ in document(endpoint.compact()) },
        Route(
            method: "POST", path: "/v1/idle",
            summary: "IdleDocument: mark pages idle; body empty or all, SECONDS, or {\"older_than_seconds\": N}"
        ) { endpoint, body in endpoint.markIdle(body: body) },
        Route(
            method: "POST", path: "/v1/recompress",
            summary: "RecompressDocument: a recompression run, now; body type=... threshold=... max_pages=... or JSON"
        ) { endpoint, body in endpoint.recompress(body: body) },
        Route(method: "GET", path: "/v1/mem-limit", summary: "MemLimitDocument") { endpoint, _ in
            document(MemLimitDocument(memLimit: endpoint.device.memLimitBytes ?? 0))
        },
        Route(
            method: "PUT", path: "/v1/mem-limit",
            summary: "body {\"mem_limit\": BYTES}, {\"mem_limit\": \"512M\"} or 512M; 0 lifts it"
        ) { endpoint, body in endpoint.setMemLimit(body: body) },
        Route(method: "GET", path: "/metrics", summary: "Prometheus text exposition") { endpoint, _ in
            endpoint.metrics()
        },
    ]

    public func respond(to request: ControlRequest) -> ControlResponse {
        let onPath = Self.routes.filter { $0.path == request.path }
        guard !onPath.isEmpty else {
            let known = Set(Self.routes.map(\.path)).sorted().joined(separator: ", ")
            return Self.error(404, "no such endpoint: \(request.path) (endpoints: \(known))")
        }
        guard let route = onPath.first(where: { $0.method == request.method }) else {
            let methods = onPath.map(\.method)
            var response = Self.error(
                405, "\(request.method) is not allowed on \(request.path); use \(methods.joined(separator: " or "))")
            response.allow = methods
            return response
        }
        return route.answer(self, request.body)
    }

    /// /v1/stats, given the pool's figures (one walk of the pool per
    /// request, shared with /metrics' per-class figures).
    public func stats(pool: ZSPoolFigures) -> StatsDocument {
        var process = Figures<ProcessFigure>()
        process[.rssBytes] = residentMemoryBytes()
        return StatsDocument(
            device: device.figures(), process: process, export: export, pool: pool.totals,
            nbd: StatsDocument.NBD(serverFigures()), maintenance: StatsDocument.Maintenance(maintenance.figures()),
            compression: StatsDocument.Compression(device.compressionFigures()), state: stateFigures())
    }

    /// The state directory's figures: all 0 without one.
    private func stateFigures() -> Figures<StateFigure> {
        var figures = Figures<StateFigure>()
        guard export.stateDirectory != nil else { return figures }
        let resumption = device.resumption
        figures[.bytes] = stateBytes()
        figures[.starts] = resumption?.starts ?? 1
        if let resumption {
            let (seconds, attoseconds) = resumption.duration.components
            figures[.resumeTime] = Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
            figures[.objectsFreedAtResume] = resumption.pool.objectsFreed
            figures[.framesFreedAtResume] = resumption.pool.framesFreed
        }
        return figures
    }

    /// GET /metrics: /v1/stats, the class table and the frame map.
    private func metrics() -> ControlResponse {
        let pool = device.poolFigures()
        let text = PrometheusExposition.render(
            stats: stats(pool: pool), classes: ClassesDocument(pool), frames: FramesDocument(pool))
        return ControlResponse(
            status: 200, contentType: ControlResponse.prometheusText, body: Array(text.utf8), allow: [])
    }

    /// A maintenance pass now, as the thread runs them but without rests.
    fileprivate func compact() -> CompactDocument {
        let rssBefore = residentMemoryBytes()
        let pass = maintenance.runPass(.manual)
        return CompactDocument(
            pass: MaintenancePassDocument(pass), frameSize: ZSPool.frameSize, blockSize: ZSPool.blockSize,
            rssBytesBefore: rssBefore, rssBytesAfter: residentMemoryBytes())
    }

    fileprivate func markIdle(body: [UInt8]) -> ControlResponse {
        let age: Duration?
        do {
            age = try Self.parseIdleAge(body)
        } catch {
            return Self.error(400, "\(error.description); send nothing or all, SECONDS, or {\"older_than_seconds\": N}")
        }
        let marked = device.markIdle(notAccessedFor: age)
        return Self.document(IdleDocument(pagesMarked: marked, idlePages: device.compressionFigures().idlePages))
    }

    /// Nothing or "all" (every stored page), a number of seconds, or JSON
    /// with "older_than_seconds".
    static func parseIdleAge(_ body: [UInt8]) throws(ControlBodyError) -> Duration? {
        let text = String(decoding: body, as: UTF8.self).trimmingWhitespace()
        if text.isEmpty || text == "all" { return nil }
        if text.hasPrefix("{") {
            struct Age: Decodable {
                var olderThanSeconds: Int?
                enum CodingKeys: String, CodingKey { case olderThanSeconds = "older_than_seconds" }
            }
            guard let age = try? JSONDecoder().decode(Age.self, from: Data(body)) else {
                throw ControlBodyError(description: "the body is not JSON with a whole older_than_seconds")
            }
            guard let seconds = age.olderThanSeconds else { return nil }
            guard seconds >= 0 else { throw ControlBodyError(description: "a negative age") }
            return .seconds(seconds)
        }
        guard let seconds = Int(text), seconds >= 0 else {
            throw ControlBodyError(description: "'\(text)' is not a number of seconds")
        }
        return .seconds(seconds)
    }

    fileprivate func recompress(body: [UInt8]) -> ControlResponse {
        let request: RecompressionRequest
        do {
            request = try Self.parseRecompression(body)
        } catch {
            return Self.error(
                400,
                "\(error.description); send type=idle|huge|huge_idle|all threshold=BYTES max_pages=N, or the same as JSON"
            )
        }
        guard let algorithm = device.recompressionAlgorithm else {
            return Self.error(409, RecompressionRefused.unavailable.description)
        }
        let clock = ContinuousClock()
        let start = clock.now
        let before = device.memUsedTotal
        do {
            let result = try maintenance.recompress(request)
            return Self.document(
                RecompressDocument(
                    type: request.type.rawValue, threshold: request.thresholdBytes, maxPages: request.maxPages,
                    algorithm: algorithm.description,
                    result: RecompressDocument.Result(figures: result.figures, finished: result.finished),
                    seconds: (clock.now - start).seconds, memUsedTotalBefore: before,
                    memUsedTotalAfter: device.memUsedTotal))
        } catch {
            return Self.error(409, error.description)
        }
    }

    /// zram's `recompress` text ("type=huge threshold=3000 max_pages=100";
    /// every field optional, type all by default) or a JSON object with the
    /// same keys.
    static func parseRecompression(_ body: [UInt8]) throws(ControlBodyError) -> RecompressionRequest {
        let text = String(decoding: body, as: UTF8.self).trimmingWhitespace()
        var fields: [String: String] = [:]
        if text.hasPrefix("{") {
            struct Fields: Decodable {
                var type: String?
                var threshold: Int?
                var maxPages: Int?
                enum CodingKeys: String, CodingKey {
                    case type, threshold
                    case maxPages = "max_pages"
                }
            }
            guard let decoded = try? JSONDecoder().decode(Fields.self, from: Data(body)) else {
                throw ControlBodyError(description: "the body is not JSON with type, threshold and max_pages")
            }
            fields["type"] = decoded.type
            fields["threshold"] = decoded.threshold.map(String.init)
            fields["max_pages"] = decoded.maxPages.map(String.init)
        } else {
            for field in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
                let pair = field.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, ["type", "threshold", "max_pages"].contains(String(pair[0])) else {
                    throw ControlBodyError(description: "unknown field '\(field)'")
                }
                fields[String(pair[0])] = String(pair[1])
            }
        }
        guard let type = RecompressionType(rawValue: fields["type"] ?? "all") else {
            throw ControlBodyError(description: "unknown type '\(fields["type"] ?? "")'")
        }
        func count(_ key: String) throws(ControlBodyError) -> Int? {
            guard let value = fields[key] else { return nil }
            guard let number = Int(value), number > 0 else {
                throw ControlBodyError(description: "\(key) must be a positive whole number, got '\(value)'")
            }
            return number
        }
        return RecompressionRequest(
            type: type, thresholdBytes: try count("threshold"), maxPages: try count("max_pages"))
    }

    fileprivate func setMemLimit(body: [UInt8]) -> ControlResponse {
        let limit: Int
        do {
            limit = try Self.parseMemLimit(body)
        } catch {
            return Self.error(
                400, "\(error); send {\"mem_limit\": BYTES}, {\"mem_limit\": \"512M\"} or 512M (0: no limit)")
        }
        device.memLimitBytes = limit == 0 ? nil : limit
        return Self.document(MemLimitDocument(memLimit: device.memLimitBytes ?? 0))
    }

    /// A JSON object with "mem_limit" as bytes or a size string, or a bare
    /// size as zram's mem_limit attribute takes it ("512M").
    static func parseMemLimit(_ body: [UInt8]) throws(ByteSize.ParseError) -> Int {
        let text = String(decoding: body, as: UTF8.self).trimmingWhitespace()
        guard text.hasPrefix("{") else { return try ByteSize.parse(String(text)) }
        struct Limit<Value: Decodable>: Decodable {
            var memLimit: Value
            enum CodingKeys: String, CodingKey { case memLimit = "mem_limit" }
        }
        let decoder = JSONDecoder()
        if let numeric = try? decoder.decode(Limit<Int>.self, from: Data(body)) {
            guard numeric.memLimit >= 0 else { throw ByteSize.ParseError(description: "a negative mem_limit") }
            return numeric.memLimit
        }
        if let textual = try? decoder.decode(Limit<String>.self, from: Data(body)) {
            return try ByteSize.parse(textual.memLimit)
        }
        throw ByteSize.ParseError(description: "the body is JSON without a mem_limit number or size")
    }

    // MARK: Encoding

    /// Pretty, sorted (stable for diffs and eyes), paths left as written.
    private static func encoder(pretty: Bool) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting =
            pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.withoutEscapingSlashes]
        return encoder
    }

    static func document(_ value: some Encodable) -> ControlResponse {
        do {
            var body = [UInt8](try encoder(pretty: true).encode(value))
            body.append(UInt8(ascii: "\n"))
            return ControlResponse(status: 200, contentType: ControlResponse.json, body: body, allow: [])
        } catch {
            return Self.error(500, "encoding the answer failed: \(error)")
        }
    }

    public static func error(_ status: Int, _ message: String) -> ControlResponse {
        let body = (try? encoder(pretty: false).encode(ErrorDocument(error: message))).map {
            [UInt8]($0) + [UInt8(ascii: "\n")]
        }
        return ControlResponse(
            status: status, contentType: ControlResponse.json, body: body ?? Array("{}\n".utf8), allow: [])
    }
}
