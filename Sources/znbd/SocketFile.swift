import NIOCore
import NIOPosix
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's Unix socket files: make their directory (one level), refuse
/// one a live server answers on, remove them (and a directory made for
/// them) at exit. A socket file left by a daemon that died answers nothing
/// (ECONNREFUSED) and is replaced.
enum SocketFile {
    /// Makes the socket's directory if it is missing (one level: the
    /// directory itself, never its parents), and checks that no live server
    /// answers at `path`. Returns the directory when this call made it, for
    /// `removeDirectory` at exit.
    static func prepare(_ path: String, role: String) async throws(StartupError) -> String? {
        let made = try makeDirectory(of: path, role: role)
        switch FileSystemEntry.kind(path) {
        case .missing:
            return made
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
            if errnoCode(of: error) == ECONNREFUSED { return made }  // stale: the bind replaces it
            throw StartupError(description: "\(role) \(path) cannot be checked: \(describe(error))")
        }
        throw StartupError(description: "\(role) \(path) is in use by a running server (another znbd?)")
    }

    /// Removes `path` if it is still a socket.
    static func remove(_ path: String) {
        if FileSystemEntry.kind(path) == .socket { unlink(path) }
    }

    /// Removes a directory `prepare` made, if nothing else has been put in
    /// it since (rmdir refuses a directory that is not empty).
    static func removeDirectory(_ directory: String) {
        rmdir(directory)
    }

    /// The socket's directory: there already, or made here when its parent
    /// exists (so the default /run/znbd and $XDG_RUNTIME_DIR/znbd appear by
    /// themselves, and a mistyped path is an error, not a new tree).
    private static func makeDirectory(of path: String, role: String) throws(StartupError) -> String? {
        var directory = FilePath(path).removingLastComponent()
        if directory.isEmpty { directory = "." }  // a bare name: the working directory
        var status = stat()
        if stat(directory.string, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFDIR else {
                throw StartupError(description: "\(role) \(path): \(directory) is not a directory")
            }
            return nil
        }
        // root's /run/znbd is readable by all (the sockets' own modes guard
        // them); another user's directory is private.
        let mode: mode_t = getuid() == 0 ? 0o755 : 0o700
        guard mkdir(directory.string, mode) == 0 else {
            let code = Glibc.errno
            let reason =
                code == ENOENT
                ? "its parent \(directory.removingLastComponent()) does not exist (znbd makes only the socket's own directory)"
                : String(cString: strerror(code))
            throw StartupError(description: "\(role) \(path): cannot create directory \(directory): \(reason)")
        }
        return directory.string
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
