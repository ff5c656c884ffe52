import Synchronization
import ZNBDSync

/// The server's figures: connections, and per command the requests, bytes
/// and errors by errno name.
public struct NBDServerStats: Sendable, Codable, Equatable {
    public struct CommandStats: Sendable, Codable, Equatable {
        public var requests: Int
        public var bytes: Int
        /// Errors by errno name (EINVAL, ENOSPC, …); absent names are zero.
        public var errors: [String: Int]
    }

    public var connectionsOpen: Int
    public var connectionsTotal: Int
    /// Connections closed for a protocol violation (bad magic, bad flags).
    public var protocolErrors: Int
    /// By command name (read, write, …, and "unknown" for unknown types).
    public var commands: [String: CommandStats]

    enum CodingKeys: String, CodingKey {
        case connectionsOpen = "connections_open"
        case connectionsTotal = "connections_total"
        case protocolErrors = "protocol_errors"
        case commands
    }
}

/// The running counters behind NBDServerStats.
final class ServerCounters: Sendable {
    /// Per command kind: requests, bytes, then one per NBDError case.
    private static let perCommand = 2 + NBDError.allCases.count
    /// Command kinds: the eight commands, then "unknown".
    private static let kinds = NBDCommand.allCases.count + 1
    private let counters = ShardedCounters(count: kinds * perCommand)
    let connectionsOpen = Atomic<Int>(0)
    let connectionsTotal = Atomic<Int>(0)
    let protocolErrors = Atomic<Int>(0)

    private static func base(_ command: NBDCommand?) -> Int {
        (command.map { Int($0.rawValue) } ?? NBDCommand.allCases.count) * perCommand
    }

    func record(_ outcome: NBDRequestProcessor.Outcome) {
        let base = Self.base(outcome.command)
        counters.add(base, 1)
        if outcome.bytes > 0 { counters.add(base + 1, outcome.bytes) }
        if let error = outcome.error, let index = NBDError.allCases.firstIndex(of: error) {
            counters.add(base + 2 + index, 1)
        }
    }

    func snapshot() -> NBDServerStats {
        var commands: [String: NBDServerStats.CommandStats] = [:]
        let kinds: [NBDCommand?] = NBDCommand.allCases + [nil]
        for command in kinds {
            let base = Self.base(command)
            var errors: [String: Int] = [:]
            for (index, error) in NBDError.allCases.enumerated() {
                let count = counters.load(base + 2 + index)
                if count > 0 { errors[error.name] = count }
            }
            commands[command?.name ?? "unknown"] = .init(
                requests: counters.load(base), bytes: counters.load(base + 1), errors: errors)
        }
        return NBDServerStats(
            connectionsOpen: connectionsOpen.load(ordering: .relaxed),
            connectionsTotal: connectionsTotal.load(ordering: .relaxed),
            protocolErrors: protocolErrors.load(ordering: .relaxed),
            commands: commands)
    }
}
