import NIOCore
import NIOHTTP1
import NIOPosix
import ZNBDCommandLine
import ZNBDControlAPI

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// Why znbdctl could not get an answer, each with the exit code a script
/// can tell apart (sysexits.h).
struct ControlClientError: CommandLineFailure {
    let description: String
    let exitCode: Int32

    static let unavailable: Int32 = 69  // EX_UNAVAILABLE: no daemon there
    static let permission: Int32 = 77  // EX_NOPERM
    static let protocolError: Int32 = 76  // EX_PROTOCOL: something else answered
    static let refused: Int32 = 1  // the daemon answered with an error
}

/// One HTTP/1.1 request over the control Unix socket, answered in full.
///
/// Not AsyncHTTPClient: for one request over a Unix socket it would add
/// swift-nio-ssl, swift-nio-http2 and minutes to every build, where NIO's
/// HTTP/1 codec (already linked) and this handler suffice.
///
/// The answer is gathered by a handler on the channel's event loop and
/// handed over as bytes through a promise: no ByteBuffer leaves the loop.
/// (A received buffer given to another thread is reused by NIO's pooled
/// receive allocator once it looks unique again, and that uniqueness check
/// gives ThreadSanitizer no happens-before edge.)
struct ControlClient {
    let socketPath: String

    struct Response: Sendable {
        var status: Int
        var body: [UInt8]
    }

    func request(
        _ method: HTTPMethod, _ path: String, body: [UInt8] = [], timeout: TimeAmount = .seconds(30)
    )
        async throws(ControlClientError) -> Response
    {
        try checkPath()
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "Host", value: "localhost")
        head.headers.add(name: "Content-Length", value: String(body.count))
        head.headers.add(name: "Connection", value: "close")
        let group = MultiThreadedEventLoopGroup.singleton
        let answer = group.any().makePromise(of: Response.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { [head] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(
                            ExchangeHandler(head: head, body: body, answer: answer))
                    }
                }
                .connect(unixDomainSocketPath: socketPath).get()
        } catch {
            answer.fail(error)  // nobody else will complete it
            throw connectFailure(error)
        }
        // A daemon that accepts but never answers must not hang the caller.
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        defer { deadline.cancel() }
        do {
            return try await answer.futureResult.get()
        } catch is HTTPParserError {
            // NIO's parser errors describe themselves as llhttp's constants
            // ("invalid constant string"); say what it means instead.
            throw notControlEndpoint("its answer is not HTTP")
        } catch {
            throw notControlEndpoint("\(error)")
        }
    }

    /// Sends `path` and decodes the 200 answer as `Document`, with the body
    /// as sent; an error answer becomes its message (exit 1), an answer
    /// that does not decode, exit 76.
    func fetch<Document: Decodable>(
        _ type: Document.Type, _ method: HTTPMethod = .GET, _ path: String, body: [UInt8] = [],
        timeout: TimeAmount = .seconds(30)
    ) async throws(ControlClientError) -> (document: Document, body: [UInt8]) {
        let response = try await request(method, path, body: body, timeout: timeout)
        guard response.status == 200 else {
            let message = (try? JSONDecoder().decode(ErrorDocument.self, from: Data(response.body)))?.error
            throw ControlClientError(
                description:
                    "znbd answered \(response.status): \(message ?? String(decoding: response.body, as: UTF8.self))",
                exitCode: ControlClientError.refused)
        }
        do {
            return (try JSONDecoder().decode(Document.self, from: Data(response.body)), response.body)
        } catch {
            throw ControlClientError(
                description: "\(socketPath) answered \(path) with something znbdctl cannot read: \(error)",
                exitCode: ControlClientError.protocolError)
        }
    }

    /// A clearer message than connect's errno for a path that is missing or
    /// is not a socket.
    private func checkPath() throws(ControlClientError) {
        var status = stat()
        if lstat(socketPath, &status) != 0 {
            let code = errno
            if code == EACCES { throw permissionDenied() }
            throw ControlClientError(
                description: "no znbd control socket at \(socketPath) (is znbd running? pass its --control path)",
                exitCode: ControlClientError.unavailable)
        }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw ControlClientError(
                description: "\(socketPath) is not a socket (pass znbd's --control path)",
                exitCode: ControlClientError.unavailable)
        }
    }

    private func permissionDenied() -> ControlClientError {
        ControlClientError(
            description:
                "permission denied on \(socketPath) (znbd's sockets belong to the user that started it; try as that user or root)",
            exitCode: ControlClientError.permission)
    }

    private func connectFailure(_ error: any Error) -> ControlClientError {
        switch (error as? IOError)?.errnoCode {
        case EACCES, EPERM:
            return permissionDenied()
        case ECONNREFUSED:
            return ControlClientError(
                description: "nothing answers at \(socketPath) (znbd stopped and left its socket behind?)",
                exitCode: ControlClientError.unavailable)
        case let code?:
            return ControlClientError(
                description: "cannot connect to \(socketPath): \(String(cString: strerror(code)))",
                exitCode: ControlClientError.unavailable)
        case nil:
            return ControlClientError(
                description: "cannot connect to \(socketPath): \(error)", exitCode: ControlClientError.unavailable)
        }
    }

    private func notControlEndpoint(_ detail: String) -> ControlClientError {
        ControlClientError(
            description:
                "\(socketPath) did not answer as znbd's control endpoint (\(detail)); is it the NBD socket? The control socket is NAME-control.sock beside it",
            exitCode: ControlClientError.protocolError)
    }
}

/// Sends one request when the connection opens and gathers the answer.
private final class ExchangeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    struct Incomplete: Error, CustomStringConvertible {
        var description: String { "the connection closed before a whole answer" }
    }

    private let head: HTTPRequestHead
    private let body: [UInt8]
    private let answer: EventLoopPromise<ControlClient.Response>
    private var response = ControlClient.Response(status: 0, body: [])
    private var answered = false

    init(head: HTTPRequestHead, body: [UInt8], answer: EventLoopPromise<ControlClient.Response>) {
        self.head = head
        self.body = body
        self.answer = answer
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if !body.isEmpty {
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let responseHead):
            response.status = Int(responseHead.status.code)
        case .body(var chunk):
            response.body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            finish(.success(response))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(Incomplete()))
        context.fireChannelInactive()
    }

    private func finish(_ result: Result<ControlClient.Response, any Error>) {
        guard !answered else { return }
        answered = true
        answer.completeWith(result)
    }
}
