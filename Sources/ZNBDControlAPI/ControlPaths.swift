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

    /// The kernel's limit for a Unix socket path (sun_path less its NUL).
    public static let maximumSocketPathBytes = 107
}
