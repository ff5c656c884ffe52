#if canImport(Glibc)
    import Glibc
#endif

/// Where znbd puts its sockets unless told, and where znbdctl looks.
///
/// root: /run/znbd; another user: $XDG_RUNTIME_DIR/znbd, or /tmp/znbd-UID
/// without one. The control socket sits next to the NBD socket it belongs
/// to, named after it ("nbd.sock" → "nbd-control.sock"), so two daemons in
/// one directory never share one.
public enum ControlPaths {
    public static func runtimeDirectory(userID: UInt32, environment: [String: String]) -> String {
        if userID == 0 { return "/run/znbd" }
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") { return runtime + "/znbd" }
        return "/tmp/znbd-\(userID)"
    }

    public static func defaultNBDSocket(userID: UInt32, environment: [String: String]) -> String {
        runtimeDirectory(userID: userID, environment: environment) + "/nbd.sock"
    }

    public static func controlSocket(nextTo nbdSocket: String) -> String {
        let slash = nbdSocket.lastIndex(of: "/")
        let directory = slash.map { String(nbdSocket[...$0]) } ?? ""
        var name = slash.map { String(nbdSocket[nbdSocket.index(after: $0)...]) } ?? nbdSocket
        if name.hasSuffix(".sock") { name.removeLast(".sock".count) }
        return directory + name + "-control.sock"
    }

    public static func defaultControlSocket(userID: UInt32, environment: [String: String]) -> String {
        controlSocket(nextTo: defaultNBDSocket(userID: userID, environment: environment))
    }

    /// Every control socket in `directory` (names ending in -control.sock),
    /// sorted: the daemons `znbdctl list` asks. A directory that does not
    /// exist holds none (no daemon has run yet, as zramctl lists no device).
    public static func controlSockets(in directory: String) throws(ListingError) -> [String] {
        guard let stream = opendir(directory) else {
            if errno == ENOENT { return [] }
            throw ListingError(description: "cannot read \(directory): \(String(cString: strerror(errno)))")
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasSuffix("-control.sock") else { continue }
            var status = stat()
            let path = directory + "/" + name
            if lstat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK { names.append(path) }
        }
        return names.sorted()
    }

    public struct ListingError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The kernel's limit for a Unix socket path (sun_path less its NUL).
    public static let maximumSocketPathBytes = 107
}
