import NIOCore
import NIOPosix
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's Unix socket files: make their directory, refuse one a live
/// server answers on, remove them at exit. A socket file left by a daemon
/// that died answers nothing (ECONNREFUSED) and is replaced.
enum SocketFile {
    static func prepare(_ path: String, role: String) async throws(StartupError) {
        try makeParentDirectory(of: path, role: role)
        switch FileSystemEntry.kind(path) {
        case .missing:
            return
        case .other:
            throw StartupError(
                description: "\(role) \(path) exists and is not a socket; remove it or choose another path")
        case .socket:
            break
        }
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(2))
                .connect(unixDomainSocketPath: path).get()
            try? await channel.close()
        } catch {
            if errnoCode(of: error) == ECONNREFUSED { return }  // stale: the bind replaces it
            throw StartupError(description: "\(role) \(path) cannot be checked: \(describe(error))")
        }
        throw StartupError(description: "\(role) \(path) is in use by a running server (another znbd?)")
    }

    /// Removes `path` if it is still a socket.
    static func remove(_ path: String) {
        if FileSystemEntry.kind(path) == .socket { unlink(path) }
    }

    private static func makeParentDirectory(of path: String, role: String) throws(StartupError) {
        let directory = FilePath(path).removingLastComponent()
        // root's /run/znbd is readable by all (the sockets' own modes guard
        // them); another user's directory is private.
        let mode: mode_t = getuid() == 0 ? 0o755 : 0o700
        var prefix = FilePath(root: directory.root, [FilePath.Component]())
        for component in directory.components {
            prefix.append(component)
            if mkdir(prefix.string, mode) != 0 && Glibc.errno != EEXIST {
                let reason = String(cString: strerror(Glibc.errno))
                throw StartupError(description: "\(role) \(path): cannot create directory \(prefix): \(reason)")
            }
        }
    }

    /// errno behind a NIO error, when there is one.
    static func errnoCode(of error: any Error) -> Int32? {
        if let error = error as? IOError { return error.errnoCode }
        return nil
    }

    /// A short reason: the errno's text where there is one.
    static func describe(_ error: any Error) -> String {
        if let code = errnoCode(of: error) { return String(cString: strerror(code)) }
        return "\(error)"
    }
}

/// What is at a path, without following a symbolic link.
enum FileSystemEntry: Equatable {
    case missing, socket, other

    static func kind(_ path: String) -> FileSystemEntry {
        var status = stat()
        guard lstat(path, &status) == 0 else { return .missing }
        return status.st_mode & S_IFMT == S_IFSOCK ? .socket : .other
    }
}
