// znbd: the daemon. It wires ZRAM's device to the NBD server and the
// control endpoint, and runs until SIGTERM or SIGINT.
//
// THE MAP, in the order a start runs
//   ServeCommand.swift      `znbd serve`: the options, checked into a
//                           DaemonConfiguration (this file)
//   ConfigurationFile.swift /etc/znbd/znbd.conf: a section per device, its
//                           keys `znbd serve` options (--config, --device)
//   SystemdGenerator.swift  the sections as systemd units at boot: daemon,
//                           nbd-client, mount or swap (znbd-generator)
//   ProcessProtection.swift what keeps it serving as this machine's swap
//                           (I/O flusher, memory lock, OOM score), applied
//                           before any thread exists
//   SocketFile.swift        the socket files: directories, a live server's
//                           refused, a dead one's replaced, removal at exit
//   Daemon.swift            start (device, NBD server, maintenance, control
//                           endpoint; undone newest first if a step fails),
//                           the start line, the clean stop
//   LogOutput.swift         the log lines: a syslog priority for the
//                           journal, a time and level elsewhere

import ArgumentParser
#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import Logging
import NIOCore
import PageCodec
import Synchronization
import ZNBDCommandLine
import ZNBDControlAPI
import ZNBDSystem
import ZRAM
import ZSPool

#if canImport(Glibc)
    import Glibc
#endif

/// `znbd` with no subcommand serves, as `znbd serve` does.
@main
struct ZNBDCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "znbd",
        abstract: "A compressed RAM disk in the manner of zram, served over NBD.",
        discussion: """
            Pages are compressed with LZO1X-1 into a zsmalloc-style pool; pages of one repeated \
            word cost no memory. Attach with nbd-client, nbdfuse or qemu; read figures with znbdctl.
            """,
        version: "znbd \(ZNBDVersion.number)",
        subcommands: [Serve.self, DiscardState.self, SystemdGenerator.self],
        defaultSubcommand: Serve.self)

    /// Bad arguments, and sockets or addresses that cannot be had, exit 64
    /// (EX_USAGE) with one line on stderr.
    static func main() async {
        let helpHint = "znbd serve --help"
        var arguments = Array(CommandLine.arguments.dropFirst())
        // systemd runs the generator by its link's name.
        if CommandLine.arguments.first?.split(separator: "/").last.map(String.init) == SystemdGenerator.linkName {
            arguments.insert(SystemdGenerator.configuration.commandName ?? "", at: 0)
        }
        let listeners = ServiceManager.listeningUnixSockets()
        inheritedListeners.withLock { $0 = listeners }
        let fromFile: ConfiguredDevice?
        do throws(ConfigurationFile.Failure) {
            fromFile = try ConfiguredDevice.expand(&arguments)
        } catch {
            exitWithOneLineError(error, helpHint: helpHint)
        }
        // Parsed and protected here, on the main thread and before the first
        // suspension: no other thread exists yet, so every thread made later
        // descends from this one and inherits the I/O flusher flag. (Calling
        // an async function hops to the runtime's thread pool, whose first
        // thread would be made before the flag.)
        let command = parseWithOneLineErrors(
            arguments, helpHint: helpHint, context: fromFile.map { "with the options of \($0)" })
        if let serve = command as? Serve {
            do throws(StartupError) {
                try serve.protectProcess()
            } catch {
                exitWithOneLineError(error, helpHint: helpHint)
            }
        }
        await runWithOneLineErrors(command, helpHint: helpHint)
    }
}

/// A startup failure caused by what was asked for: a socket in use, an
/// address taken, a size the machine cannot reserve.
struct StartupError: CommandLineFailure, Sendable {
    let description: String
    /// 64 (EX_USAGE), or 77 (EX_NOPERM) for a protection asked for with
    /// `on` that the process may not have.
    var exitCode: Int32 = 64
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a compressed RAM disk over NBD (the default command).")

    // Options that take numbers are parsed unconditionally, so that `-1G`
    // is a value to refuse with a reason, not a missing one.
    @Option(
        parsing: .unconditional, help: "Device size, a multiple of 4 KiB, with K, M, G or T (binary units).")
    var size = "1G"

    @Option(
        help: ArgumentHelp(
            "Serve device NAME of the configuration file: its section's keys are options, those given here win (default socket: NAME.sock in /run/znbd).",
            valueName: "name"))
    var device: String?

    @Option(
        help: ArgumentHelp(
            "The configuration file --device reads (docs/OPERATIONS.md, \"Several devices\").",
            valueName: "path"))
    var config = ConfigurationFile.defaultPath

    @Option(help: "Export name clients ask for (default: empty, the default export).")
    var name = ""

    @Option(
        help: ArgumentHelp(
            "Unix socket for NBD clients (default: /run/znbd/nbd.sock for root, else $XDG_RUNTIME_DIR/znbd/nbd.sock).",
            valueName: "path"))
    var socket: String?

    @Option(
        help: ArgumentHelp(
            "Also listen for NBD on TCP (off unless given; [::1]:PORT for IPv6).", valueName: "host:port"))
    var listen: String?

    @Flag(inversion: .prefixedNo, help: "Serve the export read-only.")
    var readOnly = false

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Cap on pool memory, as zram's mem_limit (0: none).", valueName: "size"))
    var memLimit: String?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Most frames per zspage, 1-\(SizeClassTable.maxChainLimit).", valueName: "n"))
    var maxChain = SizeClassTable.defaultMaxChain

    @Option(
        help: ArgumentHelp(
            "The codec every write uses, as zram's comp_algorithm (lzo is LZO1X-1).",
            valueName: "name"))
    var algorithm = AlgorithmOption(.lzo)

    @Option(
        help: ArgumentHelp(
            "The codec's parameter, as zram's algorithm_params: level=N for zstd (\(ZstdCodec.levelRange.lowerBound) to \(ZstdCodec.levelRange.upperBound), default \(ZstdCodec.defaultLevel)); level=N or acceleration=N for lz4 (default 1).",
            valueName: "params"))
    var algorithmParams = ""

    @Option(
        help: ArgumentHelp(
            "A second, stronger codec for idle and huge pages, as zram's recomp_algorithm: zstd, zstd:LEVEL, lz4 or lzo. znbdctl recompress runs it; the maintenance thread runs it on pages idle for --recompress-idle-age.",
            valueName: "name[:level]"))
    var recompressAlgorithm: String?

    @Option(
        help: ArgumentHelp(
            "With --recompress-algorithm: the maintenance thread recompresses pages not read or written for this long (seconds, or with s, m, h or d; default 1h); off: only znbdctl recompress does.",
            valueName: "age|off"))
    var recompressIdleAge: String?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("The most pages per second the maintenance thread recompresses.", valueName: "pages"))
    var recompressRate = MaintenancePolicy().recompressPagesPerSecond

    @Option(
        help: ArgumentHelp(
            "auto: a maintenance thread compacts the pool and gives memory back by itself, after discards, when waste grows, and under memory pressure; off: only znbdctl compact does.",
            valueName: "auto|off"))
    var compaction = AutoOrOff.auto

    @Option(
        help: ArgumentHelp(
            "auto: maintenance also moves frames out of sparse 2 MiB blocks so that emptied blocks return to the OS; off: compaction only.",
            valueName: "auto|off"))
    var migration = AutoOrOff.auto

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Reclaimable memory that starts a maintenance pass (default: 10% of pool memory, at least 16M).",
            valueName: "size"))
    var wasteThreshold: String?

    @Option(
        help: ArgumentHelp(
            "auto: every daemon thread is an I/O flusher where permitted (CAP_SYS_RESOURCE), so that as this machine's swap it never waits on its own device; on: exit if not permitted; off: do not.",
            valueName: "auto|on|off"))
    var ioFlusher = ProcessProtection.Choice.auto

    @Option(
        help: ArgumentHelp(
            "auto: lock the daemon's memory as it is touched (mlockall) where permitted (CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK), so none of it is swapped out; on: exit if not permitted; off: do not.",
            valueName: "auto|on|off"))
    var lockMemory = ProcessProtection.Choice.auto

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "The daemon's oom_score_adj, -1000 to 1000, or keep (default: -1000 where permitted, so the OOM killer spares the process that holds the disk; a value given here must be set or znbd exits).",
            valueName: "n|keep"))
    var oomScoreAdj: String?

    @Option(
        help: ArgumentHelp(
            "Control socket for znbdctl (default: next to the NBD socket, NAME-control.sock).",
            valueName: "path"))
    var control: String?

    @Option(
        help: ArgumentHelp(
            "Directory on a tmpfs that holds the disk, so that a restart, an upgrade or a crash of the daemon keeps it (default: /dev/shm/znbd/NAME for root, else /dev/shm/znbd-UID/NAME; NAME the --device, else the socket's name, or its whole path with dashes outside the runtime directory); none: the disk lives and dies with this process.",
            valueName: "path|none"))
    var stateDir: String?

    @Option(help: ArgumentHelp("How much the daemon logs.", valueName: "level"))
    var logLevel = LogLevelOption(.info)

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Threads that compress written pages (default: one per core); 0 runs writes on the connection's event loop thread, as every other request runs.",
            valueName: "n"))
    var workers: Int?

    /// The options, checked and turned into what the daemon needs. Called
    /// once, by run(); a ValidationError from it exits 64 like a parse error.
    func configuration() throws(ValidationError) -> DaemonConfiguration {
        func parseSize(_ text: String, option: String) throws(ValidationError) -> Int {
            do {
                return try ByteSize.parse(text)
            } catch {
                throw ValidationError("\(option) \(text): \(error)")
            }
        }
        let sizeBytes = try parseSize(size, option: "--size")
        guard sizeBytes > 0 else { throw ValidationError("--size \(size): the device needs at least one 4 KiB page") }
        guard sizeBytes % pageSize == 0 else {
            throw ValidationError("--size \(size): \(sizeBytes) bytes is not a multiple of 4 KiB (\(pageSize) bytes)")
        }
        guard sizeBytes <= CompressedBlockDevice.maximumByteCount else {
            throw ValidationError("--size \(size): at most \(ByteSize.format(CompressedBlockDevice.maximumByteCount))")
        }
        var memLimitBytes: Int?
        if let memLimit {
            let bytes = try parseSize(memLimit, option: "--mem-limit")
            memLimitBytes = bytes == 0 ? nil : bytes
        }
        guard (1...SizeClassTable.maxChainLimit).contains(maxChain) else {
            throw ValidationError("--max-chain \(maxChain): must be 1 to \(SizeClassTable.maxChainLimit)")
        }
        var maintenance = MaintenancePolicy()
        maintenance.automatic = compaction == .auto
        maintenance.migrationEnabled = migration == .auto
        if let wasteThreshold {
            maintenance.wasteThreshold = try parseSize(wasteThreshold, option: "--waste-threshold")
        }
        let codec: CodecChoice
        var recompression: CodecChoice?
        do {
            codec = try CodecChoice.parse(algorithm: algorithm.algorithm, params: algorithmParams)
        } catch {
            throw ValidationError(
                "--algorithm \(algorithm.algorithm) --algorithm-params '\(algorithmParams)': \(error)")
        }
        if let recompressAlgorithm {
            do {
                recompression = try CodecChoice.parse(recompressAlgorithm)
            } catch {
                throw ValidationError("--recompress-algorithm \(recompressAlgorithm): \(error)")
            }
        }
        if let recompressIdleAge, recompression == nil {
            throw ValidationError("--recompress-idle-age \(recompressIdleAge): needs --recompress-algorithm")
        }
        if recompression != nil {
            maintenance.recompressIdleAge = try Self.parseAge(
                recompressIdleAge ?? (maintenance.automatic ? "1h" : "off"))
            if maintenance.recompressIdleAge != nil && !maintenance.automatic {
                throw ValidationError(
                    "--recompress-idle-age \(recompressIdleAge ?? ""): the maintenance thread runs it; it needs --compaction auto"
                )
            }
        }
        guard (1...1_000_000).contains(recompressRate) else {
            throw ValidationError("--recompress-rate \(recompressRate): must be 1 to 1000000 pages a second")
        }
        maintenance.recompressPagesPerSecond = recompressRate
        var protection = ProcessProtection.Request()
        protection.ioFlusher = ioFlusher
        protection.lockMemory = lockMemory
        if let oomScoreAdj {
            if oomScoreAdj == "keep" {
                protection.oomScoreAdjustment = nil
            } else if let value = Int(oomScoreAdj), (-1000...1000).contains(value) {
                protection.oomScoreAdjustment = value
                protection.oomScoreRequired = true
            } else {
                throw ValidationError("--oom-score-adj \(oomScoreAdj): must be -1000 to 1000, or keep")
            }
        }
        let workers = self.workers ?? System.coreCount
        guard (0...256).contains(workers) else { throw ValidationError("--workers \(workers): must be 0 to 256") }
        guard name.utf8.count <= 4096 else { throw ValidationError("--name: at most 4096 bytes (the NBD limit)") }

        let environment = ProcessInfo.processInfo.environment
        let socketPath =
            socket
            ?? device.map { ConfigurationFile.defaultSocket(forDevice: $0, userID: getuid(), environment: environment) }
            ?? ControlPaths.defaultNBDSocket(userID: getuid(), environment: environment)
        let controlPath = control ?? ControlPaths.controlSocket(nextTo: socketPath)
        for (option, path) in [("--socket", socketPath), ("--control", controlPath)] {
            guard !path.isEmpty else { throw ValidationError("\(option): empty path") }
            guard path.utf8.count <= ControlPaths.maximumSocketPathBytes else {
                throw ValidationError("\(option) \(path): longer than a Unix socket path may be (107 bytes)")
            }
        }
        guard socketPath != controlPath else { throw ValidationError("--socket and --control must differ") }
        var tcp: TCPAddress?
        if let listen {
            do {
                tcp = try TCPAddress(parsing: listen)
            } catch {
                throw ValidationError("--listen \(listen): \(error)")
            }
        }
        let stateDirectory: String?
        switch stateDir {
        case "none": stateDirectory = nil
        case let path?:
            guard path.hasPrefix("/") else { throw ValidationError("--state-dir \(path): must be an absolute path") }
            stateDirectory = path
        case nil:
            stateDirectory = StateDirectory.defaultPath(
                deviceName: device
                    ?? StateDirectory.deviceName(
                        socketPath: socketPath,
                        runtimeDirectory: ControlPaths.runtimeDirectory(userID: getuid(), environment: environment)))
        }
        return DaemonConfiguration(
            sizeBytes: sizeBytes, name: name, socketPath: socketPath, tcp: tcp, readOnly: readOnly,
            memLimitBytes: memLimitBytes, maxChain: maxChain, algorithm: codec, recompressionAlgorithm: recompression,
            controlPath: controlPath, logLevel: logLevel.level, workers: workers, maintenance: maintenance,
            protection: protection, stateDirectory: stateDirectory)
    }

    /// `off`, or whole seconds with an optional unit: 90, 90s, 15m, 1h, 2d.
    static func parseAge(_ text: String) throws(ValidationError) -> Duration? {
        if text == "off" { return nil }
        let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        let unit = text.last.flatMap { units[$0] }
        let digits = unit == nil ? Substring(text) : text.dropLast()
        guard let value = Int64(digits), value >= 0, value <= Int64(UInt32.max) / (unit ?? 1) else {
            throw ValidationError("--recompress-idle-age \(text): seconds, or a number with s, m, h or d, or off")
        }
        return .seconds(value * (unit ?? 1))
    }

    /// Applies the swap-device protections the options ask for, once per
    /// process, before any thread exists (ZNBDCommand.main calls it): only
    /// threads created after the I/O flusher flag is set inherit it.
    func protectProcess() throws(StartupError) {
        // Bad options are reported by run(), as every other usage error.
        guard let request = try? configuration().protection else { return }
        let outcome = ProcessProtection.apply(request)
        appliedProtection.withLock { $0 = outcome }
        if !outcome.failures.isEmpty {
            throw StartupError(description: outcome.failures.joined(separator: "; "), exitCode: 77)
        }
    }

    func run() async throws {
        let configuration: DaemonConfiguration
        do {
            configuration = try self.configuration()
        } catch {
            guard let device else { throw error }
            throw ValidationError(
                "\(error.message) (with the options of \(ConfiguredDevice(path: config, name: device)))")
        }
        let protection = appliedProtection.withLock { $0 } ?? ProcessProtection.Outcome()
        let level = configuration.logLevel
        LoggingSystem.bootstrap { _ in DaemonLogHandler(logLevel: level) }
        try await Daemon(configuration: configuration, protection: protection).serve()
    }
}

/// A setting that is on by default (auto) and may be turned off.
enum AutoOrOff: String, Sendable, CaseIterable, ExpressibleByArgument {
    case auto, off
}

/// --algorithm: one of the codecs PageCodec knows, by zram's name.
struct AlgorithmOption: Sendable, ExpressibleByArgument {
    let algorithm: CompressionAlgorithm

    init(_ algorithm: CompressionAlgorithm) { self.algorithm = algorithm }
    init?(argument: String) {
        guard let algorithm = CompressionAlgorithm(name: argument) else { return nil }
        self.algorithm = algorithm
    }
    static var allValueStrings: [String] { CompressionAlgorithm.allCases.map(\.description) }
    var defaultValueDescription: String { algorithm.description }
}

/// --log-level: swift-log's levels, by name.
struct LogLevelOption: Sendable, ExpressibleByArgument {
    let level: Logger.Level

    init(_ level: Logger.Level) { self.level = level }
    init?(argument: String) {
        guard let level = Logger.Level(rawValue: argument) else { return nil }
        self.level = level
    }
    static var allValueStrings: [String] { Logger.Level.allCases.map(\.rawValue) }
    var defaultValueDescription: String { level.rawValue }
}

/// What `Serve.protectProcess` did, for the daemon to log once the logger
/// exists; nil when it did not run (then nothing was applied).
private let appliedProtection = Mutex<ProcessProtection.Outcome?>(nil)

/// The listening sockets systemd passed (socket activation), taken from the
/// environment once, on the main thread before any other exists (unsetenv
/// is not thread-safe).
let inheritedListeners = Mutex<[(descriptor: Int32, path: String)]>([])

/// HOST:PORT, [IPv6]:PORT, or :PORT for every address.
struct TCPAddress: Sendable, Equatable, CustomStringConvertible {
    var host: String
    var port: Int

    struct ParseError: Error, CustomStringConvertible {
        let description: String
    }

    init(parsing text: String) throws(ParseError) {
        guard let colon = text.lastIndex(of: ":") else { throw ParseError(description: "expected HOST:PORT") }
        var hostPart = text[..<colon]
        if hostPart.hasPrefix("[") && hostPart.hasSuffix("]") { hostPart = hostPart.dropFirst().dropLast() }
        guard !hostPart.contains(":") || text.hasPrefix("[") else {
            throw ParseError(description: "write an IPv6 address in brackets, [::1]:PORT")
        }
        guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ParseError(description: "the port must be a number from 0 to 65535")
        }
        host = hostPart.isEmpty ? "0.0.0.0" : String(hostPart)
        self.port = port
    }

    var description: String { Self.description(host: host, port: port) }

    static func description(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// What `znbd serve` was asked to do, checked.
struct DaemonConfiguration: Sendable {
    var sizeBytes: Int
    var name: String
    var socketPath: String
    var tcp: TCPAddress?
    var readOnly: Bool
    var memLimitBytes: Int?
    var maxChain: Int
    var algorithm: CodecChoice
    var recompressionAlgorithm: CodecChoice?
    var controlPath: String
    var logLevel: Logger.Level
    var workers: Int
    var maintenance: MaintenancePolicy
    var protection: ProcessProtection.Request
    /// The state directory, nil for anonymous memory (--state-dir none).
    var stateDirectory: String?
}
