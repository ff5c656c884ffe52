import Logging
import NBD
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import ZNBDControlAPI
import ZNBDControlServer
import ZNBDFigures
import ZNBDSystem
import ZNBDCommandLine
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
    /// The locked state directory, held until the process ends.
    private let stateDirectory = NIOLockedValueBox<StateDirectory?>(nil)

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
        ServiceManager.notify(
            "READY=1\nSTATUS=serving \(ByteSize.format(configuration.sizeBytes)) on \(configuration.socketPath)")
        try? await gracefulShutdown()
        ServiceManager.notify("STOPPING=1")
        let open = running.server.figures()[.connectionsOpen]
        if open > 0, let state = configuration.stateDirectory {
            logger.warning(
                "stopping with \(open) client connection\(open == 1 ? "" : "s") open: answering requests already received, then closing; the disk stays in \(state) for the next daemon, and what is attached sees errors until one serves it"
            )
        } else if open > 0 {
            // Whatever is attached loses its disk: say so where the operator
            // looks (--state-dir none: the disk is this process's memory).
            logger.warning(
                "stopping with \(open) client connection\(open == 1 ? "" : "s") open: answering requests already received, then closing; what is attached (a mounted filesystem, swap) loses this disk's data"
            )
        } else {
            logger.info("stopping: no client connected")
        }
        await running.stop()
        logger.info("stopped")
    }

    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }

    /// What a started daemon holds.
    private struct Running {
        let server: NBDServer
        let control: ControlServer
        let maintenance: DeviceMaintenance
        let socketPaths: [String]
        let madeDirectories: [String]
        let noSpaceWatch: Task<Void, Never>

        func stop() async {
            noSpaceWatch.cancel()
            await server.shutdown(drainTimeout: .milliseconds(1500))
            await control.shutdown()
            maintenance.stop()
            socketPaths.forEach(SocketFile.remove)
            madeDirectories.forEach(SocketFile.removeDirectory)
        }
    }

    private func start() async throws(StartupError) -> Running {
        let configuration = self.configuration
        // Request and reply buffers of 128 KiB and more (large reads and
        // writes) go back to the kernel when freed, so the RSS falls once a
        // burst of large requests or a client that stopped reading is gone.
        HeapPolicy.mapLargeAllocations(atLeast: 128 << 10)
        // A socket systemd passed for --socket (znbd@.socket) is served as it
        // is: systemd made it, holds it across restarts (connections wait in
        // its backlog meanwhile) and removes it.
        let passed = inheritedListeners.withLock { $0 }
        let inherited = passed.first { $0.path == configuration.socketPath }?.descriptor
        for socket in passed where socket.descriptor != inherited { close(socket.descriptor) }
        if !passed.isEmpty && inherited == nil {
            logger.warning(
                "systemd passed sockets (\(passed.map(\.path).joined(separator: ", "))), none of them --socket \(configuration.socketPath): binding it"
            )
        }
        // Directories made here are removed at exit, newest first, if empty.
        var madeDirectories: [String] = []
        do throws(StartupError) {
            for (path, role) in [
                (configuration.socketPath, "NBD socket (--socket)"),
                (configuration.controlPath, "control socket (--control)"),
            ] where !(inherited != nil && path == configuration.socketPath) {
                if let made = try await SocketFile.prepare(path, role: role) { madeDirectories.insert(made, at: 0) }
            }
        } catch {
            madeDirectories.forEach(SocketFile.removeDirectory)
            throw error
        }
        var rollback = StartupRollback()
        rollback.onFailure { [madeDirectories] in madeDirectories.forEach(SocketFile.removeDirectory) }

        // The state directory is locked first and held to the end of the
        // process: the device's files are this daemon's alone.
        var placement = RegionPlacement.anonymous
        if let path = configuration.stateDirectory {
            do throws(StartupError) {
                stateDirectory.withLockedValue { $0 = nil }
                let directory = try StateDirectory(path)
                stateDirectory.withLockedValue { $0 = directory }
            } catch {
                throw await rollback.fail(error.description)
            }
            placement = .directory(path)
        }
        let device: CompressedBlockDevice
        do {
            device = try CompressedBlockDevice(
                .init(
                    byteCount: configuration.sizeBytes, maxChain: configuration.maxChain,
                    memLimitBytes: configuration.memLimitBytes, algorithm: configuration.algorithm,
                    recompressionAlgorithm: configuration.recompressionAlgorithm, placement: placement))
        } catch .stateRefused(let directory, let why) {
            throw await rollback.fail(
                "the state in \(directory) cannot be resumed: \(why); start with the options it was made with, or remove it (znbd discard-state --state-dir \(directory))"
            )
        } catch {
            throw await rollback.fail("cannot create a \(ByteSize.format(configuration.sizeBytes)) device: \(error)")
        }
        // Said once serving, with the other start lines. A state made by
        // this start goes again if the start fails: it never served.
        var stateLines: [(Logger.Level, String)] = []
        if let path = configuration.stateDirectory {
            if let resumed = device.resumption {
                let pool = resumed.pool
                stateLines.append(
                    (
                        .info,
                        "resumed the state in \(path) (start \(resumed.starts)): \(pool.objects) objects in \(pool.zspages) zspages, \(ByteSize.format(device.memUsedTotal)) of pool memory, in \(Self.milliseconds(resumed.duration)) ms; freed at resume: \(pool.objectsFreed) objects no page named, \(pool.framesFreed) frames, \(pool.emptyZspagesFreed) empty zspages"
                    ))
            } else {
                stateLines.append((.info, "new state in \(path)"))
                let held = stateDirectory
                rollback.onFailure { held.withLockedValue { $0?.removeFiles() } }
            }
            if let warning = stateDirectory.withLockedValue({
                $0?.roomWarning(deviceBytes: configuration.sizeBytes, memLimitBytes: configuration.memLimitBytes)
            }) {
                stateLines.append((.warning, warning))
            }
        }
        let export = NBDExport(
            name: configuration.name,
            description: "znbd compressed RAM disk, \(ByteSize.format(configuration.sizeBytes))",
            device: device, readOnly: configuration.readOnly)
        let server = NBDServer(
            export: export,
            configuration: .init(
                unixSocketPath: configuration.socketPath, tcpHost: configuration.tcp?.host,
                tcpPort: configuration.tcp?.port ?? 0, workerThreads: configuration.workers,
                inheritedUnixListener: inherited))
        rollback.onFailure {
            await server.shutdown(drainTimeout: .zero)
            if inherited == nil { SocketFile.remove(configuration.socketPath) }
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
            compaction: configuration.maintenance.automatic ? "auto" : "off",
            stateDirectory: configuration.stateDirectory)
        let control = ControlServer(
            endpoint: ControlEndpoint(
                maintenance: maintenance, export: summary, serverFigures: { server.figures() },
                stateBytes: { configuration.stateDirectory.map(StateDirectory.allocatedBytes) ?? 0 }),
            socketPath: configuration.controlPath)
        rollback.onFailure { await control.shutdown() }
        do {
            try await control.start()
        } catch {
            throw await rollback.fail("cannot listen on \(configuration.controlPath): \(SocketFile.describe(error))")
        }
        maintenance.start()
        for line in protection.lines { logger.log(level: line.level, "\(line.text)") }
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
        for (level, line) in stateLines { logger.log(level: level, "\(line)") }
        if inherited != nil {
            logger.info(
                "the NBD socket \(configuration.socketPath) is systemd's (socket activation): connections made while the daemon restarts wait in its backlog"
            )
        }
        logger.info("\(Self.attachLine(configuration, tcpAddress: tcpAddress))")
        let logger = self.logger
        let noSpaceWatch = Task {
            var warnings = NoSpaceWarnings()
            while !Task.isCancelled {
                if let line = warnings.observe(device.figures(), now: .now) { logger.warning("\(line)") }
                try? await Task.sleep(for: .seconds(1))
            }
        }
        return Running(
            server: server, control: control, maintenance: maintenance,
            socketPaths: (inherited == nil ? [configuration.socketPath] : []) + [configuration.controlPath],
            madeDirectories: madeDirectories,
            noSpaceWatch: noSpaceWatch)
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

/// When writes start failing for want of pool memory, one warning with the
/// figures, then at most one a minute while they go on failing: a client
/// sees only EIO, and a filesystem above it may go read-only without a word
/// from anyone else.
struct NoSpaceWarnings {
    static let interval = Duration.seconds(60)
    private var counted = 0
    private var warned: (at: ContinuousClock.Instant, count: Int)?

    /// The warning to log for the figures read at `now`, if one is due.
    mutating func observe(_ figures: Figures<DeviceFigure>, now: ContinuousClock.Instant) -> String? {
        let count = figures[.failedWritesNoSpace]
        defer { counted = count }
        guard count > counted else { return nil }
        if let warned, now - warned.at < Self.interval { return nil }
        let new = count - (warned?.count ?? counted)
        warned = (now, count)
        let limit = figures[.memLimit]
        let used = ByteSize.format(figures[.memUsedTotal])
        let cause =
            limit > 0
            ? "the pool is at its memory limit (mem_used_total \(used), mem_limit \(ByteSize.format(limit)))"
            : "the pool has no memory left (mem_used_total \(used), no mem_limit)"
        return "writes refused with ENOSPC: \(cause); \(new) write\(new == 1 ? "" : "s") failed"
            + " (failed_writes_no_space \(count) since the start). A filesystem on the device may go read-only:"
            + " raise the limit with `znbdctl mem-limit`, then see docs/OPERATIONS.md, \"When the pool is full\""
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
