import NIOConcurrencyHelpers
import ZNBDSystem
public import NIOCore
import NIOPosix

/// Serves one export over NBD on a Unix socket and/or a TCP address, to any
/// number of clients at once.
public final class NBDServer: Sendable {
    public struct Configuration: Sendable {
        /// Listen on this Unix socket path (an existing file is replaced).
        public var unixSocketPath: String?
        /// A listening Unix socket already bound to `unixSocketPath` (one a
        /// service manager passed): served as it is, never bound again.
        public var inheritedUnixListener: Int32?
        /// Listen on this TCP host and port (port 0: any free port).
        public var tcpHost: String?
        public var tcpPort: Int
        /// Event loop threads: sockets, framing, replies.
        public var eventLoopThreads: Int
        /// Threads that run writes on the device (where a compressing device
        /// spends its time); 0 runs them on the event loop, as every other
        /// command runs (right for a device whose writes cost a memcpy).
        public var workerThreads: Int
        /// Per connection: requests in progress, from parse until the reply
        /// has been handed to the socket.
        public var maximumInFlightRequests: Int
        /// Per connection: the bytes those requests may hold (write payloads,
        /// read data), so a client that never reads costs at most this.
        public var maximumInFlightBytes: Int
        /// All connections together (InFlightBudget).
        public var maximumInFlightBytesTotal: Int
        /// Requests larger than this run on the workers, whatever they are.
        public var inlineLimit: Int

        public init(
            unixSocketPath: String? = nil, tcpHost: String? = nil, tcpPort: Int = 10809,
            eventLoopThreads: Int = System.coreCount, workerThreads: Int = System.coreCount,
            maximumInFlightRequests: Int = 128, maximumInFlightBytes: Int = 64 << 20,
            maximumInFlightBytesTotal: Int = 512 << 20, inlineLimit: Int = 256 << 10,
            inheritedUnixListener: Int32? = nil
        ) {
            self.inheritedUnixListener = inheritedUnixListener
            self.unixSocketPath = unixSocketPath
            self.tcpHost = tcpHost
            self.tcpPort = tcpPort
            self.eventLoopThreads = eventLoopThreads
            self.workerThreads = workerThreads
            self.maximumInFlightRequests = maximumInFlightRequests
            self.maximumInFlightBytes = maximumInFlightBytes
            self.maximumInFlightBytesTotal = maximumInFlightBytesTotal
            self.inlineLimit = inlineLimit
        }
    }

    /// Sent down each connection's pipeline when the server stops: answer
    /// what has arrived, then close.
    struct Drain: Sendable {}

    public let export: NBDExport
    public let configuration: Configuration
    private let group: MultiThreadedEventLoopGroup
    private let workers: WorkerThreads<WorkerJob>?
    private let counters = ServerCounters()
    private let budget: InFlightBudget
    /// Listeners and live connections; `stopping` once shutdown() has taken
    /// its list of connections to drain, after which a connection the
    /// listeners still accept is closed before its handshake.
    private let channels = NIOLockedValueBox<
        (listeners: [any Channel], connections: [ObjectIdentifier: any Channel], stopping: Bool)
    >(([], [:], false))

    public init(export: NBDExport, configuration: Configuration) {
        self.export = export
        self.configuration = configuration
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventLoopThreads))
        budget = InFlightBudget(limit: configuration.maximumInFlightBytesTotal)
        if configuration.workerThreads > 0 {
            workers = WorkerThreads(count: configuration.workerThreads, name: "znbd-worker") { job in
                job.connection.run(job)
            }
        } else {
            workers = nil
        }
    }

    /// Why a connection accepted while the server stops is closed at once.
    struct ServerStopping: Error {}

    /// A listener that could not be had, and why (EADDRINUSE, EACCES, …).
    public struct BindError: Error, CustomStringConvertible {
        /// The Unix socket path, or HOST:PORT.
        public let endpoint: String
        public let underlying: any Error

        public var description: String { "cannot listen on \(endpoint): \(underlying)" }
    }

    /// Starts listening; returns the bound addresses (Unix first, then TCP).
    /// Throws a BindError naming the endpoint that failed; listeners already
    /// bound stay open until shutdown().
    public func start() async throws(BindError) -> [SocketAddress] {
        var addresses: [SocketAddress] = []
        if let path = configuration.unixSocketPath {
            let channel: any Channel
            do {
                if let descriptor = configuration.inheritedUnixListener {
                    channel = try await bootstrap(tcp: false).withBoundSocket(descriptor).get()
                } else {
                    channel = try await bootstrap(tcp: false)
                        .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
                }
            } catch {
                throw BindError(endpoint: path, underlying: error)
            }
            track(listener: channel)
            if let address = channel.localAddress { addresses.append(address) }
        }
        if let host = configuration.tcpHost {
            let channel: any Channel
            do {
                channel = try await bootstrap(tcp: true).bind(host: host, port: configuration.tcpPort).get()
            } catch {
                let endpoint =
                    host.contains(":") ? "[\(host)]:\(configuration.tcpPort)" : "\(host):\(configuration.tcpPort)"
                throw BindError(endpoint: endpoint, underlying: error)
            }
            track(listener: channel)
            if let address = channel.localAddress { addresses.append(address) }
        }
        return addresses
    }

    private func track(listener: any Channel) {
        channels.withLockedValue { $0.listeners.append(listener) }
    }

    private func bootstrap(tcp: Bool) -> ServerBootstrap {
        let export = self.export
        let limits = NBDConnectionHandler.Limits(
            maximumInFlightRequests: configuration.maximumInFlightRequests,
            maximumInFlightBytes: configuration.maximumInFlightBytes,
            inlineLimit: self.workers == nil ? Int.max : configuration.inlineLimit,
            inlineWorkPerPass: max(configuration.inlineLimit, 1 << 20))
        let workers = self.workers
        let counters = self.counters
        let budget = self.budget
        let channels = self.channels
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 << 10, maximum: 256 << 10)
            )
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                let stopping = channels.withLockedValue { state in
                    if !state.stopping { state.connections[id] = channel }
                    return state.stopping
                }
                // Accepted after shutdown() listed the connections to drain:
                // nothing would drain or time it out, so refuse it now (the
                // bootstrap closes a child whose initializer fails).
                if stopping { return channel.eventLoop.makeFailedFuture(ServerStopping()) }
                channel.closeFuture.whenComplete { _ in
                    _ = channels.withLockedValue { $0.connections.removeValue(forKey: id) }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NBDConnectionHandler(
                            export: export, limits: limits, workers: workers, counters: counters, budget: budget))
                }
            }
        if tcp {
            bootstrap = bootstrap.childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        }
        return bootstrap
    }

    /// Stops accepting, lets every connection answer what it has received,
    /// waits up to `drainTimeout` for them to close, closes what is left,
    /// and stops the threads.
    public func shutdown(drainTimeout: TimeAmount = .seconds(2)) async {
        let (listeners, connections) = channels.withLockedValue { state in
            state.stopping = true
            return (state.listeners, Array(state.connections.values))
        }
        for listener in listeners { try? await listener.close() }
        for connection in connections { connection.pipeline.fireUserInboundEventTriggered(Drain()) }
        let deadline = NIODeadline.now() + drainTimeout
        for connection in connections {
            let remaining = deadline - .now()
            let timer = connection.eventLoop.scheduleTask(in: max(remaining, .zero)) { connection.close(promise: nil) }
            try? await connection.closeFuture.get()
            timer.cancel()
        }
        // Every connection has closed: what is still queued is skipped, and
        // joining waits at most for the requests being run.
        await workers?.shutdown()
        try? await group.shutdownGracefully()
    }

    /// The server's figures now.
    public func figures() -> NBDServerFigures {
        counters.snapshot(bytesInFlight: budget.bytesInUse)
    }
}
