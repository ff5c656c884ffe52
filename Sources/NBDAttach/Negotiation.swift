// NBDAttach: the kernel's NBD driver attached to a znbd daemon by a process
// that stays, so that /dev/nbdN survives the daemon's restart. The kernel
// takes sockets that have done their NBD handshake; when one dies it says
// so on its netlink family (NBD_CMD_LINK_DEAD) and waits, up to the dead
// connection timeout, for a new one (NBD_CMD_RECONFIGURE), resending what
// the dead one never answered. Debian 12's nbd-client (3.24) configures the
// device and exits, so nothing would give it that new socket.
//
// THE MAP
//   Negotiation.swift       a blocking Unix-socket client of the fixed
//                           newstyle handshake (NBD_OPT_GO): the export's
//                           size and transmission flags, and a socket ready
//                           for the kernel (this file)
//   KernelAttachment.swift  connect, watch for dead links, reconnect and
//                           reconfigure, disconnect; over CNBDNetlink

#if canImport(Glibc)
    import Glibc
#endif
import NBDProtocol

/// Why attaching, or reconnecting, failed: one line for the operator.
public struct AttachError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// The errno behind it, when there is one (ECONNREFUSED, ENOENT: no daemon).
    public let code: Int32?

    init(_ description: String, code: Int32? = nil) {
        self.description = description
        self.code = code
    }
}

/// A socket that has finished the NBD handshake for one export, and what
/// the server said of it. The descriptor is the caller's to hand on or close.
public struct NegotiatedSocket: Sendable {
    public let descriptor: Int32
    public let size: UInt64
    public let transmissionFlags: UInt16
}

public enum Negotiation {
    /// Connects to the Unix socket `path` and negotiates `export` with
    /// NBD_OPT_GO. Every read and write of the handshake times out after
    /// `timeoutSeconds`; the socket is handed back with no timeout (the
    /// kernel's receive would take one for a dead server).
    public static func connect(
        socketPath path: String, export: String, timeoutSeconds: Int = 10
    ) throws(AttachError) -> NegotiatedSocket {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw AttachError("socket: \(describe(errno))", code: errno) }
        do throws(AttachError) {
            try connectUnix(descriptor, path)
            setTimeouts(descriptor, seconds: timeoutSeconds)
            let negotiated = try handshake(descriptor, export: export)
            setTimeouts(descriptor, seconds: 0)
            return negotiated
        } catch {
            close(descriptor)
            throw error
        }
    }

    private static func connectUnix(_ descriptor: Int32, _ path: String) throws(AttachError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw AttachError("\(path): longer than a Unix socket path may be")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard status == 0 else { throw AttachError("\(path): \(describe(errno))", code: errno) }
    }

    private static func setTimeouts(_ descriptor: Int32, seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            setsockopt(descriptor, SOL_SOCKET, option, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    private static func handshake(_ descriptor: Int32, export: String) throws(AttachError) -> NegotiatedSocket {
        let greeting = try receive(descriptor, 18)
        guard greeting.bigEndian(UInt64.self, at: 0) == NBDMagic.nbd,
            greeting.bigEndian(UInt64.self, at: 8) == NBDMagic.option
        else { throw AttachError("not an NBD server with the newstyle handshake") }
        let serverFlags = greeting.bigEndian(UInt16.self, at: 16)
        guard serverFlags & NBDHandshakeFlag.fixedNewstyle != 0 else {
            throw AttachError("the server does not speak the fixed newstyle handshake")
        }
        var clientFlags = NBDClientFlag.fixedNewstyle
        if serverFlags & NBDHandshakeFlag.noZeroes != 0 { clientFlags |= NBDClientFlag.noZeroes }
        let name = Array(export.utf8)
        // NBD_OPT_GO: the name, and no information requests (the export's
        // size and flags come anyway).
        var option = bigEndianBytes(clientFlags) + bigEndianBytes(NBDMagic.option)
        option += bigEndianBytes(NBDOption.go.rawValue) + bigEndianBytes(UInt32(4 + name.count + 2))
        option += bigEndianBytes(UInt32(name.count)) + name + bigEndianBytes(UInt16(0))
        try send(descriptor, option)
        var size: UInt64?
        var flags: UInt16 = 0
        while true {
            let header = try receive(descriptor, 20)
            guard header.bigEndian(UInt64.self, at: 0) == NBDMagic.optionReply else {
                throw AttachError("a malformed option reply")
            }
            let type = header.bigEndian(UInt32.self, at: 12)
            let length = Int(header.bigEndian(UInt32.self, at: 16))
            guard length <= 64 << 10 else { throw AttachError("an option reply of \(length) bytes") }
            let data = try receive(descriptor, length)
            if type == NBDOptionReply.ack.rawValue { break }
            if type & 0x8000_0000 != 0 {
                let message = String(decoding: data, as: UTF8.self)
                throw AttachError(
                    "the server refused export '\(export)': \(message.isEmpty ? "error \(type)" : message)")
            }
            if type == NBDOptionReply.info.rawValue, data.count >= 12,
                data.bigEndian(UInt16.self, at: 0) == NBDInfo.export.rawValue
            {
                size = data.bigEndian(UInt64.self, at: 2)
                flags = data.bigEndian(UInt16.self, at: 10)
            }
        }
        guard let size else { throw AttachError("the server sent no size for export '\(export)'") }
        return NegotiatedSocket(descriptor: descriptor, size: size, transmissionFlags: flags)
    }

    private static func send(_ descriptor: Int32, _ bytes: [UInt8]) throws(AttachError) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes {
                Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw AttachError("handshake: \(describe(errno))", code: errno) }
            sent += count
        }
    }

    private static func receive(_ descriptor: Int32, _ count: Int) throws(AttachError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let result = bytes[received...].withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else {
                throw AttachError(
                    result == 0 ? "the server closed the handshake" : "handshake: \(describe(errno))",
                    code: result == 0 ? nil : errno)
            }
            received += result
        }
        return bytes
    }

    private static func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }
}

func describe(_ code: Int32) -> String { String(cString: strerror(code)) }

extension [UInt8] {
    fileprivate func bigEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        self[offset..<offset + MemoryLayout<T>.size].reduce(T(0)) { $0 << 8 | T($1) }
    }
}
