public import ZNBDFigures
import Synchronization
import ZNBDSystem

/// The server's figures: its totals (connections open and accepted,
/// connections closed for a protocol violation, bytes held for requests in
/// progress), and per command name (read, write, …, "unknown") the
/// requests, payload bytes and errors by errno name (absent names are zero).
public struct NBDServerFigures: Sendable, Equatable {
    public var totals: Figures<ServerFigure>
    public var commands: [String: CommandFigures]

    public init(totals: Figures<ServerFigure>, commands: [String: CommandFigures]) {
        self.totals = totals
        self.commands = commands
    }

    public subscript(figure: ServerFigure) -> Int { totals[figure] }
}

/// The running counters behind NBDServerFigures.
final class ServerCounters: Sendable {
    /// Per command kind: requests, bytes, then one per NBDError case.
    private static let perCommand = 2 + NBDError.allCases.count
    /// Command kinds: the eight known commands, then every unknown type.
    private static let kinds = NBDCommand.known.count + 1
    private let counters = ShardedCounters(count: kinds * perCommand)
    let connectionsOpen = Atomic<Int>(0)
    let connectionsTotal = Atomic<Int>(0)
    let protocolErrors = Atomic<Int>(0)

    private static func base(_ command: NBDCommand) -> Int {
        switch command {
        case .unknown: NBDCommand.known.count * perCommand
        default: Int(command.rawValue) * perCommand
        }
    }

    func record(_ outcome: NBDRequestProcessor.Outcome) {
        let base = Self.base(outcome.command)
        counters.add(base, 1)
        if outcome.bytes > 0 { counters.add(base + 1, outcome.bytes) }
        if let error = outcome.error, let index = NBDError.allCases.firstIndex(of: error) {
            counters.add(base + 2 + index, 1)
        }
    }

    func snapshot(bytesInFlight: Int) -> NBDServerFigures {
        var commands: [String: CommandFigures] = [:]
        for command in NBDCommand.known + [.unknown(UInt16.max)] {
            let base = Self.base(command)
            var errors: [String: Int] = [:]
            for (index, error) in NBDError.allCases.enumerated() {
                let count = counters.load(base + 2 + index)
                if count > 0 { errors[error.name] = count }
            }
            commands[command.name] = .init(
                requests: counters.load(base), bytes: counters.load(base + 1), errors: errors)
        }
        var totals = Figures<ServerFigure>()
        for figure in ServerFigure.allCases {
            totals[figure] =
                switch figure {
                case .connectionsOpen: connectionsOpen.load(ordering: .relaxed)
                case .connectionsTotal: connectionsTotal.load(ordering: .relaxed)
                case .protocolErrors: protocolErrors.load(ordering: .relaxed)
                case .bytesInFlight: bytesInFlight
                }
        }
        return NBDServerFigures(totals: totals, commands: commands)
    }
}
