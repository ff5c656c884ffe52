import Logging
import NBD
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import ZNBDControlAPI
import ZNBDControlServer
import ZNBDSystem
import ZRAM

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's life: check the sockets, build the device, start the NBD
/// server and the control endpoint, say how to attach, then on SIGTERM or
/// SIGINT stop accepting, answer what clients sent, close, and remove the
/// socket files.
///
/// Startup runs inside the service group, after its signal handlers are in
/// place, so a signal that arrives the moment the sockets appear is a clean
/// stop, never a kill.
final class Daemon: Service {
    let configuration: DaemonConfiguration
    /// What ProcessProtection did before the daemon's threads existed.
    let protection: ProcessProtection.Outcome
    private let logger = Logger(label: "znbd")
    private let startupFailure = NIOLockedValueBox<StartupError?>(nil)

    init(configuration: DaemonConfiguration, protection: ProcessProtection.Outcome) {
        self.configuration = configuration
        self.protection = protection
    }

    /// Runs until SIGTERM or SIGINT; throws what kept the daemon from starting.
    func serve() async throws {
        let group = ServiceGroup(
            configuration: .init(
                // The service returns once it has stopped, or at once when
                // it could not start: either way the group is done.
                services: [.init(service: self, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        if let failure = startupFailure.withLockedValue({ $0 }) { throw failure }
    }

    // MARK: Service

    func run() async throws {
        let running: Running
        do {
            running = try await start()
        } catch {
            startupFailure.withLockedValue { $0 = error }
            return
        }
        try? await gracefulShutdown()
        logger.info("stopping: answering requests already received, then closing")
        await running.stop()
        logger.info("stopped")
    }

    /// What a started daemon holds.
    private struct Running {
        let server: NBDServer
        let control: ControlServer
        let maintenance: DeviceMaintenance
        let socketPaths: [String]

        func stop() async {
            await server.shutdown(drainTimeout: .milliseconds(1500))
            await control.shutdown()
            maintenance.stop()
            socketPaths.forEach(SocketFile.remove)
        }
    }

    private func start() async throws(StartupError) -> Running {
        let configuration = self.configuration
        // Request and reply buffers of 128 KiB and more (large reads and
        // writes) go back to the kernel when freed, so the RSS falls once a
        // burst of large requests or a client that stopped reading is gone.
        HeapPolicy.mapLargeAllocations(atLeast: 128 << 10)
        try await SocketFile.prepare(configuration.socketPath, role: "NBD socket (--socket)")
        try await SocketFile.prepare(configuration.controlPath, role: "control socket (--control)")

        let device: CompressedBlockDevice
        do {
            device = try CompressedBlockDevice(
                .init(
                    byteCount: configuration.sizeBytes, maxChain: configuration.maxChain,
                    memLimitBytes: configuration.memLimitBytes, algorithm: configuration.algorithm,
                    recompressionAlgorithm: configuration.recompressionAlgorithm))
        } catch {
            throw StartupError(
                description: "cannot create a \(ByteSize.format(configuration.sizeBytes)) device: \(error)")
        }
        let export = NBDExport(
            name: configuration.name,
            description: "znbd compressed RAM disk, \(ByteSize.format(configuration.sizeBytes))",
            device: device, readOnly: configuration.readOnly)
        let server = NBDServer(
            export: export,
            configuration: .init(
                unixSocketPath: configuration.socketPath, tcpHost: configuration.tcp?.host,
                tcpPort: configuration.tcp?.port ?? 0, workerThreads: configuration.workers))
        var rollback = StartupRollback()
        rollback.onFailure {
            await server.shutdown(drainTimeout: .zero)
            SocketFile.remove(configuration.socketPath)
        }
        let addresses: [SocketAddress]
        do {
            addresses = try await server.start()
        } catch {
            throw await rollback.fail("cannot listen on \(error.endpoint): \(SocketFile.describe(error.underlying))")
        }
        var tcpAddress: String?
        if configuration.tcp != nil, let address = addresses.last, let port = address.port {
            tcpAddress = TCPAddress.description(host: address.ipAddress ?? "?", port: port)
        }
        let maintenance: DeviceMaintenance
        do {
            maintenance = try DeviceMaintenance(device: device, policy: configuration.maintenance)
        } catch {
            throw await rollback.fail("cannot set up maintenance: \(error)")
        }
        let summary = ExportSummary(
            name: configuration.name, sizeBytes: configuration.sizeBytes, readOnly: configuration.readOnly,
            nbdSocket: configuration.socketPath, tcpAddress: tcpAddress,
            compaction: configuration.maintenance.automatic ? "auto" : "off")
        let control = ControlServer(
            endpoint: ControlEndpoint(maintenance: maintenance, export: summary, serverFigures: { server.figures() }),
            socketPath: configuration.controlPath)
        rollback.onFailure { await control.shutdown() }
        do {
            try await control.start()
        } catch {
            throw await rollback.fail("cannot listen on \(configuration.controlPath): \(SocketFile.describe(error))")
        }
        maintenance.start()
        for line in protection.lines {
            if line.isWarning { logger.warning("\(line.text)") } else { logger.info("\(line.text)") }
        }
        if configuration.protection.ioFlusher != .off {
            let threads = ProcessControls.ioFlusherThreads()
            logger.info("I/O flusher threads: \(threads.flushers) of \(threads.threads)")
        }
        if configuration.maintenance.automatic {
            let source = maintenance.figures().pressureSource
            logger.info(
                "maintenance: compaction auto, migration \(configuration.maintenance.migrationEnabled ? "auto" : "off"), memory pressure \(source.map { "from \($0)" } ?? "not watched (no PSI here)")"
            )
        }
        var codecs = "algorithm \(configuration.algorithm)"
        if let recompression = configuration.recompressionAlgorithm {
            let age = configuration.maintenance.recompressIdleAge.map {
                "pages idle \($0.components.seconds) s, at most \(configuration.maintenance.recompressPagesPerSecond) a second"
            }
            codecs += ", recompression \(recompression) (automatic: \(age ?? "off; znbdctl recompress"))"
        }
        logger.info("\(codecs)")
        logger.info("\(Self.attachLine(configuration, tcpAddress: tcpAddress))")
        return Running(
            server: server, control: control, maintenance: maintenance,
            socketPaths: [configuration.socketPath, configuration.controlPath])
    }

    /// The start line: what is served, and how each kind of client attaches.
    static func attachLine(_ configuration: DaemonConfiguration, tcpAddress: String?) -> String {
        let socket = configuration.socketPath
        let name = configuration.name
        let nameOption = name.isEmpty ? "" : " -N \(shellQuoted(name))"
        var line = "serving a \(ByteSize.format(configuration.sizeBytes)) compressed RAM disk"
        line += name.isEmpty ? " (the default export)" : " (export \(shellQuoted(name)))"
        line += configuration.readOnly ? ", read-only," : ""
        line += " on \(socket)"
        if let tcpAddress { line += " and nbd://\(tcpAddress)/\(name)" }
        line += "; attach with: nbd-client -unix \(socket) /dev/nbd0\(nameOption) -b \(pageSize)"
        line += " | nbdfuse DIR/disk --unix \(socket)"
        line += " | qemu -drive file=nbd+unix:///\(name)?socket=\(socket)"
        line += "; figures: znbdctl --control \(configuration.controlPath) stats"
        return line
    }

    static func shellQuoted(_ text: String) -> String {
        let plain = text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_./:@".contains($0)) }
        return plain && !text.isEmpty
            ? text
            : "'"
                + text.split(separator: "'", omittingEmptySubsequences: false)
                .joined(separator: "'\\''") + "'"
    }
}

/// What `Daemon.start` has set up so far, undone newest first when a later
/// step fails: one place that knows how to take a half-started daemon down.
private struct StartupRollback {
    private var steps: [@Sendable () async -> Void] = []

    /// Registers how to undo the step just taken.
    mutating func onFailure(_ step: @escaping @Sendable () async -> Void) {
        steps.append(step)
    }

    /// Undoes every step taken, newest first; returns the error to throw.
    func fail(_ description: String) async -> StartupError {
        for step in steps.reversed() { await step() }
        return StartupError(description: description)
    }
}
