/// The NBD server's totals (GET /v1/stats `nbd`). Counted by NBD's server;
/// per-command requests, bytes and errors are a table (Catalog.swift).
public enum ServerFigure: Int, FigureFamily {
    case connectionsOpen, connectionsTotal, protocolErrors, bytesInFlight

    public static let title = "NBD server"
    public static let path = "nbd"
    public static let metricPrefix = "znbd_nbd_"

    public var declaration: FigureDeclaration {
        switch self {
        case .connectionsOpen:
            .init("connections_open", .gauge, metric: "connections_open", help: "NBD connections open now.")
        case .connectionsTotal:
            .init("connections_total", .counter, metric: "connections_total", help: "NBD connections accepted.")
        case .protocolErrors:
            .init(
                "protocol_errors", .counter, metric: "protocol_errors_total",
                help: "NBD connections closed for a protocol violation.")
        case .bytesInFlight:
            .init(
                "bytes_in_flight", .gauge, metric: "bytes_in_flight",
                help: "Bytes held for NBD requests in progress: payloads not yet stored, replies not yet sent.",
                unit: .bytes)
        }
    }
}

/// One command's row of the NBD server's table (GET /v1/stats
/// `nbd.commands`, by command name): its requests, payload bytes, and
/// errors by errno name (absent names are zero). Rendered as
/// FigureCatalog.Table's command families.
public struct CommandFigures: Sendable, Codable, Equatable {
    public var requests: Int
    public var bytes: Int
    public var errors: [String: Int]

    public init(requests: Int, bytes: Int, errors: [String: Int]) {
        self.requests = requests
        self.bytes = bytes
        self.errors = errors
    }
}
