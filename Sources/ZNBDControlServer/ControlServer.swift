import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ZNBDControlAPI

/// Serves a ControlEndpoint as HTTP/1.1 on a Unix socket (so that
/// `curl --unix-socket PATH http://localhost/v1/stats` works).
///
/// It has its own event loop and two worker threads, apart from the NBD
/// server's: a slow scrape or a long compaction never occupies a thread that
/// serves NBD clients. (The device itself is shared: a compaction step holds
/// one class's lock while it empties one zspage, as in zsmalloc.) Requests
/// on one connection are answered in order; bodies
/// over ControlEndpoint.maximumBodyBytes get 413; malformed HTTP gets 400
/// and a closed connection.
public final class ControlServer: Sendable {
    public let endpoint: ControlEndpoint
    public let socketPath: String
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    /// Two: a long request (a recompression run over a large device, a
    /// compaction pass) leaves the other thread for stats and the rest.
    private let worker = NIOThreadPool(numberOfThreads: 2)
    private let listener = NIOLockedValueBox<(any Channel)?>(nil)

    public init(endpoint: ControlEndpoint, socketPath: String) {
        self.endpoint = endpoint
        self.socketPath = socketPath
        worker.start()
    }

    /// Binds the socket (replacing a stale file: the caller checked that no
    /// live server owns it) and starts answering.
    public func start() async throws {
        let endpoint = self.endpoint
        let worker = self.worker
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        ControlHTTPHandler(endpoint: endpoint, worker: worker))
                }
            }
            .bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).get()
        listener.withLockedValue { $0 = channel }
    }

    /// Stops listening, then stops the threads (a request in progress is
    /// cut off: the control plane holds no data).
    public func shutdown() async {
        let channel = listener.withLockedValue { $0 }
        try? await channel?.close()
        try? await worker.shutdownGracefully()
        try? await group.shutdownGracefully()
    }
}

/// One HTTP connection: gathers a request, runs it on the worker thread,
/// writes the answer.
final class ControlHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoint: ControlEndpoint
    private let worker: NIOThreadPool
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var bodyTooLarge = false

    init(endpoint: ControlEndpoint, worker: NIOThreadPool) {
        self.endpoint = endpoint
        self.worker = worker
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            head = requestHead
            body = []
            bodyTooLarge = false
        case .body(var chunk):
            if body.count + chunk.readableBytes > ControlEndpoint.maximumBodyBytes {
                bodyTooLarge = true
            } else if let bytes = chunk.readBytes(length: chunk.readableBytes) {
                body += bytes
            }
        case .end:
            guard let requestHead = head else { return }
            head = nil
            answer(requestHead, context: context)
        }
    }

    /// Malformed HTTP (NIO has answered 400 already), or a reset: this
    /// connection ends; nothing else notices.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func answer(_ requestHead: HTTPRequestHead, context: ChannelHandlerContext) {
        let keepAlive = requestHead.isKeepAlive
        if bodyTooLarge {
            let limit = ControlEndpoint.maximumBodyBytes
            write(
                ControlEndpoint.error(413, "the body is over \(limit) bytes"), version: requestHead.version,
                keepAlive: false, context: context)
            return
        }
        let request = ControlRequest(method: requestHead.method.rawValue, target: requestHead.uri, body: body)
        body = []
        let endpoint = self.endpoint
        worker.runIfActive(eventLoop: context.eventLoop) { endpoint.respond(to: request) }
            .assumeIsolated()
            .whenComplete { result in
                let response = (try? result.get()) ?? ControlEndpoint.error(503, "znbd is shutting down")
                self.write(response, version: requestHead.version, keepAlive: keepAlive, context: context)
            }
    }

    private func write(
        _ response: ControlResponse, version: HTTPVersion, keepAlive: Bool, context: ChannelHandlerContext
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        if !response.allow.isEmpty { headers.add(name: "Allow", value: response.allow.joined(separator: ", ")) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let head = HTTPResponseHead(
            version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
        if !keepAlive {
            done.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }
}
