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
