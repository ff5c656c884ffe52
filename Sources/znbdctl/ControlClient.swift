import NIOCore
import NIOHTTP1
import NIOPosix
import ZNBDCommandLine

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
struct ControlClient {
    let socketPath: String

    struct Response {
        var status: Int
        var body: [UInt8]
    }

    func request(_ method: HTTPMethod, _ path: String, body: [UInt8] = [], timeout: TimeAmount = .seconds(30))
        async throws(ControlClientError) -> Response
    {
        try checkPath()
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(5))
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw connectFailure(error)
        }
        // A daemon that accepts but never answers must not hang the caller.
        let deadline = channel.channel.eventLoop.scheduleTask(in: timeout) { [channel = channel.channel] in
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        do {
            return try await channel.executeThenClose { inbound, outbound in
                var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
                head.headers.add(name: "Host", value: "localhost")
                head.headers.add(name: "Content-Length", value: String(body.count))
                head.headers.add(name: "Connection", value: "close")
                try await outbound.write(.head(head))
                if !body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
                try await outbound.write(.end(nil))
                var response = Response(status: 0, body: [])
                for try await part in inbound {
                    switch part {
                    case .head(let responseHead):
                        response.status = Int(responseHead.status.code)
                    case .body(var chunk):
                        response.body += chunk.readBytes(length: chunk.readableBytes) ?? []
                    case .end:
                        return response
                    }
                }
                throw ControlClientError(description: "the connection closed before a whole answer", exitCode: ControlClientError.protocolError)
            }
        } catch let error as ControlClientError {
            throw notControlEndpoint(error.description)
        } catch {
            throw notControlEndpoint("\(error)")
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
            description: "permission denied on \(socketPath) (znbd's sockets belong to the user that started it; try as that user or root)",
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
            return ControlClientError(description: "cannot connect to \(socketPath): \(error)", exitCode: ControlClientError.unavailable)
        }
    }

    private func notControlEndpoint(_ detail: String) -> ControlClientError {
        ControlClientError(
            description: "\(socketPath) did not answer as znbd's control endpoint (\(detail)); is it the NBD socket? The control socket is NAME-control.sock beside it",
            exitCode: ControlClientError.protocolError)
    }
}
