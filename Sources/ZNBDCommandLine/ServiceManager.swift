#if canImport(Glibc)
    import Glibc
#endif

/// systemd's readiness protocol (sd_notify(3)), spoken directly: one
/// datagram of NAME=VALUE lines to $NOTIFY_SOCKET. With `Type=notify` the
/// units ordered after the daemon (the attach unit's nbd-client) start only
/// once it says READY=1, after its sockets exist; no polling for a socket
/// file. Outside systemd the variable is unset and nothing is sent.
/// Also the sockets a socket unit passes (`listeningUnixSockets`).
public enum ServiceManager {
    public static func notify(_ state: String) {
        guard let variable = getenv("NOTIFY_SOCKET") else { return }
        var path = Array(String(cString: variable).utf8)
        // '@' names a socket in the abstract namespace: a leading NUL.
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !path.isEmpty, path.count < capacity else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { bytes in
            for (index, byte) in path.enumerated() { bytes[index] = byte }
        }
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
        var message = state
        _ = message.withUTF8 { text in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, text.baseAddress, text.count, Int32(MSG_NOSIGNAL), $0, length)
                }
            }
        }
    }

    /// The listening Unix sockets systemd passed (socket activation,
    /// sd_listen_fds(3)): descriptor and path, from descriptor 3 on, when
    /// LISTEN_PID is this process. The variables are removed, so children
    /// never take them for theirs. Empty outside socket activation.
    public static func listeningUnixSockets() -> [(descriptor: Int32, path: String)] {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pid = getenv("LISTEN_PID").flatMap({ Int32(String(cString: $0)) }), pid == getpid(),
            let count = getenv("LISTEN_FDS").flatMap({ Int32(String(cString: $0)) }), count > 0
        else { return [] }
        var sockets: [(descriptor: Int32, path: String)] = []
        for descriptor in 3..<(3 + count) {
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            var address = sockaddr_un()
            var length = socklen_t(MemoryLayout<sockaddr_un>.size)
            let status = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
            }
            guard status == 0, address.sun_family == sa_family_t(AF_UNIX) else { continue }
            let path = withUnsafeBytes(of: address.sun_path) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            sockets.append((descriptor, path))
        }
        return sockets
    }
}
