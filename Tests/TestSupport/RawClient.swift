import Foundation
import NBD

#if canImport(Glibc)
    import Glibc
#endif

/// A deliberately simple NBD client on a raw Unix socket, for what libnbd
/// will not send: unknown commands and flags, oversized payloads, garbage,
/// truncated streams. Every receive has a 10 s timeout.
public final class RawClient: @unchecked Sendable {
    // @unchecked: its only state is a socket descriptor; one thread may send
    // while another receives, as the kernel allows.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String

        public init(description: String) { self.description = description }
    }

    public let fd: Int32

    public init(socketPath: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            let bytes = Array(socketPath.utf8)
            path.copyBytes(from: bytes.prefix(path.count - 1))
        }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard status == 0 else {
            close(fd)
            throw Failure(description: "connect: errno \(errno)")
        }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    public func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw Failure(description: "send: errno \(errno)") }
            sent += count
        }
    }

    /// Tells the server this client will send nothing more (shutdown(SHUT_WR)).
    public func finishSending() {
        shutdown(fd, Int32(SHUT_WR))
    }

    /// Exactly `count` bytes; throws on EOF or timeout.
    public func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let n = bytes[received...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw Failure(description: n == 0 ? "connection closed" : "recv: errno \(errno)") }
            received += n
        }
        return bytes
    }

    /// Everything the server sends until it closes the connection.
    public func receiveUntilClosed() throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n >= 0 else { throw Failure(description: "recv: errno \(errno)") }
            if n == 0 { return bytes }
            bytes += chunk[..<n]
        }
    }

    /// True when the server has closed the connection (EOF within 10 s).
    public func isClosedByServer() -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    // MARK: Protocol steps

    /// Greeting, client flags (NO_ZEROES), NBD_OPT_GO for `name`: ready for
    /// requests. `blockSizes`: GO asks for NBD_INFO_BLOCK_SIZE, so the
    /// client has agreed to the export's minimum block size; without it the
    /// server's minimum block size is 1.
    public func handshake(name: String = "", structuredReplies: Bool = false, blockSizes: Bool = true) throws {
        let greeting = try receive(18)
        guard greeting.be64(0) == NBDMagic.nbd, greeting.be64(8) == NBDMagic.option else {
            throw Failure(description: "bad greeting")
        }
        try send(UInt32(NBDClientFlag.fixedNewstyle | NBDClientFlag.noZeroes).bigEndianBytes)
        if structuredReplies {
            try sendOption(NBDOption.structuredReply.rawValue, data: [])
            _ = try receiveOptionReplies()
        }
        var data = UInt32(name.utf8.count).bigEndianBytes + Array(name.utf8)
        data +=
            blockSizes ? UInt16(1).bigEndianBytes + NBDInfo.blockSize.rawValue.bigEndianBytes : UInt16(0).bigEndianBytes
        try sendOption(NBDOption.go.rawValue, data: data)
        let replies = try receiveOptionReplies()
        guard replies.last?.type == NBDOptionReply.ack.rawValue else {
            throw Failure(description: "GO refused: \(replies.map(\.type))")
        }
    }

    /// Greeting, client flags (NO_ZEROES), then NBD_OPT_EXPORT_NAME, the old
    /// way into transmission, which negotiates no block sizes: ready for
    /// requests, with simple replies.
    public func handshakeExportName(_ name: String = "") throws {
        let greeting = try receive(18)
        guard greeting.be64(0) == NBDMagic.nbd, greeting.be64(8) == NBDMagic.option else {
            throw Failure(description: "bad greeting")
        }
        try send(UInt32(NBDClientFlag.fixedNewstyle | NBDClientFlag.noZeroes).bigEndianBytes)
        try sendOption(NBDOption.exportName.rawValue, data: Array(name.utf8))
        _ = try receive(8 + 2)  // size and transmission flags; no zero padding
    }

    public func sendOption(_ code: UInt32, data: [UInt8]) throws {
        try send(NBDMagic.option.bigEndianBytes + code.bigEndianBytes + UInt32(data.count).bigEndianBytes + data)
    }

    public struct OptionReply {
        public var option: UInt32
        public var type: UInt32
        public var data: [UInt8]
    }

    public func receiveOptionReply() throws -> OptionReply {
        let header = try receive(20)
        guard header.be64(0) == NBDMagic.optionReply else { throw Failure(description: "bad option reply magic") }
        let length = Int(header.be32(16))
        return OptionReply(option: header.be32(8), type: header.be32(12), data: try receive(length))
    }

    /// Replies up to and including an ACK or an error.
    public func receiveOptionReplies() throws -> [OptionReply] {
        var replies: [OptionReply] = []
        while true {
            let reply = try receiveOptionReply()
            replies.append(reply)
            if reply.type == NBDOptionReply.ack.rawValue || reply.type & 0x8000_0000 != 0 { return replies }
        }
    }

    public func sendRequest(
        type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32, payload: [UInt8] = []
    )
        throws
    {
        try send(
            Self.request(type: type, flags: flags, cookie: cookie, offset: offset, length: length, payload: payload))
    }

    /// One request's bytes, header and payload, for callers that batch them into one send.
    public static func request(
        type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32, payload: [UInt8] = []
    )
        -> [UInt8]
    {
        NBDMagic.request.bigEndianBytes + flags.bigEndianBytes + type.bigEndianBytes + cookie.bigEndianBytes
            + offset.bigEndianBytes + length.bigEndianBytes + payload
    }

    /// A simple reply's error and cookie; `dataLength` bytes follow a successful read.
    public func receiveSimpleReply(dataLength: Int = 0) throws -> (error: UInt32, cookie: UInt64, data: [UInt8]) {
        let header = try receive(16)
        guard header.be32(0) == NBDMagic.simpleReply else { throw Failure(description: "bad reply magic") }
        let error = header.be32(4)
        let data = error == 0 && dataLength > 0 ? try receive(dataLength) : []
        return (error, header.be64(8), data)
    }
}

extension FixedWidthInteger {
    public var bigEndianBytes: [UInt8] { withUnsafeBytes(of: bigEndian) { Array($0) } }
}

extension [UInt8] {
    public func be64(_ at: Int) -> UInt64 { self[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) } }
    public func be32(_ at: Int) -> UInt32 { self[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
    public func be16(_ at: Int) -> UInt16 { self[at..<at + 2].reduce(0) { $0 << 8 | UInt16($1) } }
}
