#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
public import NBD
public import ZNBDControlAPI
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
/// zspage per class-lock hold).
///
///   GET  /v1/stats       StatsDocument: mm_stat, io_stat, pool totals, NBD counters, RSS
///   GET  /v1/classes     ClassesDocument: zsmalloc's per-class table
///   GET  /v1/frames      FramesDocument: buddyinfo-style free runs, block occupancy
///   POST /v1/compact     CompactDocument: one maintenance pass (compaction, migration), now
///   POST /v1/idle        IdleDocument: mark pages idle; body empty or "all", SECONDS, or
///                        {"older_than_seconds": N}
///   POST /v1/recompress  RecompressDocument: a recompression run, now; body zram's
///                        "type=idle threshold=BYTES max_pages=N" or the same as JSON
///   GET  /v1/mem-limit   MemLimitDocument
///   PUT  /v1/mem-limit   body {"mem_limit": BYTES}, {"mem_limit": "512M"} or 512M; 0 lifts it
///   GET  /metrics        Prometheus text exposition
public final class ControlEndpoint: Sendable {
    public let maintenance: DeviceMaintenance
    public let export: ExportSummary
    private let nbdStats: @Sendable () -> NBDServerStats

    public var device: CompressedBlockDevice { maintenance.device }

    /// A body larger than this is refused (413) before it is read whole.
    public static let maximumBodyBytes = 64 << 10

    public init(
        maintenance: DeviceMaintenance, export: ExportSummary, nbdStats: @escaping @Sendable () -> NBDServerStats
    ) {
        self.maintenance = maintenance
        self.export = export
        self.nbdStats = nbdStats
    }

    private static let routes: [String: [String]] = [
        "/v1/stats": ["GET"], "/v1/classes": ["GET"], "/v1/frames": ["GET"], "/v1/compact": ["POST"],
        "/v1/idle": ["POST"], "/v1/recompress": ["POST"], "/v1/mem-limit": ["GET", "PUT"], "/metrics": ["GET"],
    ]

    public func respond(to request: ControlRequest) -> ControlResponse {
        guard let methods = Self.routes[request.path] else {
            let known = Self.routes.keys.sorted().joined(separator: ", ")
            return Self.error(404, "no such endpoint: \(request.path) (endpoints: \(known))")
        }
        guard methods.contains(request.method) else {
            var response = Self.error(
                405, "\(request.method) is not allowed on \(request.path); use \(methods.joined(separator: " or "))")
            response.allow = methods
            return response
        }
        switch (request.method, request.path) {
        case ("GET", "/v1/stats"):
            return Self.document(stats(pool: device.poolStats()))
        case ("GET", "/v1/classes"):
            return Self.document(ClassesDocument(device.poolStats()))
        case ("GET", "/v1/frames"):
            return Self.document(FramesDocument(device.poolStats()))
        case ("POST", "/v1/compact"):
            return Self.document(compact())
        case ("POST", "/v1/idle"):
            return markIdle(body: request.body)
        case ("POST", "/v1/recompress"):
            return recompress(body: request.body)
        case ("GET", "/v1/mem-limit"):
            return Self.document(MemLimitDocument(memLimit: device.memLimitBytes ?? 0))
        case ("PUT", "/v1/mem-limit"):
            return setMemLimit(body: request.body)
        default:  // GET /metrics
            let pool = device.poolStats()
            let text = PrometheusExposition.render(
                stats: stats(pool: pool), classes: ClassesDocument(pool), frames: FramesDocument(pool))
            return ControlResponse(
                status: 200, contentType: ControlResponse.prometheusText, body: Array(text.utf8), allow: [])
        }
    }

    /// /v1/stats, given the pool's figures (one walk of the pool per
    /// request, shared with /metrics' per-class figures).
    public func stats(pool: ZSPoolStats) -> StatsDocument {
        StatsDocument(
            device: DeviceFigures(device.stats()), rssBytes: residentMemoryBytes(), export: export,
            pool: PoolSummary(pool), nbd: NBDFigures(nbdStats()), maintenance: MaintenanceFigures(maintenance.stats()),
            compression: CompressionFigures(device.compressionStats()))
    }

    /// A maintenance pass now, as the thread runs them but without rests.
    private func compact() -> CompactDocument {
        let rssBefore = residentMemoryBytes()
        let pass = maintenance.runPass(.manual)
        return CompactDocument(
            pass: MaintenancePassFigures(pass), frameSize: ZSPool.frameSize, blockSize: ZSPool.blockSize,
            rssBytesBefore: rssBefore, rssBytesAfter: residentMemoryBytes())
    }

    private func markIdle(body: [UInt8]) -> ControlResponse {
        let age: Duration?
        do {
            age = try Self.parseIdleAge(body)
        } catch {
            return Self.error(400, "\(error.description); send nothing or all, SECONDS, or {\"older_than_seconds\": N}")
        }
        let marked = device.markIdle(notAccessedFor: age)
        return Self.document(IdleDocument(pagesMarked: marked, idlePages: device.compressionStats().idlePages))
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

    private func recompress(body: [UInt8]) -> ControlResponse {
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
        let before = device.stats().memUsedTotal
        do {
            let result = try maintenance.recompress(request)
            return Self.document(
                RecompressDocument(
                    type: request.type.rawValue, threshold: request.thresholdBytes, maxPages: request.maxPages,
                    algorithm: algorithm.description,
                    result: RecompressionFigures(result, scanned: true, finished: result.finished),
                    seconds: (clock.now - start).seconds, memUsedTotalBefore: before,
                    memUsedTotalAfter: device.stats().memUsedTotal))
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

    private func setMemLimit(body: [UInt8]) -> ControlResponse {
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
