#if canImport(Glibc)
    import Glibc
#endif
import ArgumentParser
import ZNBDControlAPI
import ZNBDSystem

/// A device's state directory (--state-dir): the files on a tmpfs that hold
/// the disk across a restart, an upgrade or a crash of the daemon
/// (docs/STATE-DESIGN.md). Made and checked here, then locked for the life
/// of this process: the lock is an flock on the file "lock", which the
/// kernel lets go when the process ends, however it ends, so a second
/// daemon on the same state is refused and the next one after a kill is
/// not.
///
/// The directory must be this user's, with no write access for others (a
/// world-writable /dev/shm is where it lives by default: another user must
/// not be able to plant or swap files in it), and on a tmpfs (the state is
/// memory; a directory on a disk would make every page a disk write).
final class StateDirectory: Sendable {
    /// Where states live unless --state-dir says otherwise: a tmpfs on
    /// every Linux system, kept until a reboot; root's, or a user's own
    /// (as the sockets' default is /run/znbd or $XDG_RUNTIME_DIR/znbd).
    static var defaultParent: String {
        let user = geteuid()
        return user == 0 ? "/dev/shm/znbd" : "/dev/shm/znbd-\(user)"
    }
    static let lockName = "lock"
    /// Every file a state may hold, for `discard`.
    static let fileNames = ["header", "slots", "arena", "frame-owners", "handles", lockName]

    let path: String
    private let lockDescriptor: Int32

    /// The default directory of a device named `name` (--device, else the
    /// NBD socket's file name without ".sock").
    static func defaultPath(deviceName name: String) -> String { defaultParent + "/" + name }

    /// The name a daemon's default state directory takes from its socket:
    /// the file's name without ".sock" for a socket of the default runtime
    /// directory (nbd for /run/znbd/nbd.sock), else the whole path with its
    /// slashes as dashes (tmp-x-nbd for /tmp/x/nbd.sock), so that two
    /// daemons on sockets of one name in two directories never share a
    /// state.
    static func deviceName(socketPath: String, runtimeDirectory: String) -> String {
        let path = socketPath.hasSuffix(".sock") ? String(socketPath.dropLast(5)) : socketPath
        let components = path.split(separator: "/")
        let directory = "/" + components.dropLast().joined(separator: "/")
        if directory == runtimeDirectory, let name = components.last { return String(name) }
        return components.joined(separator: "-")
    }

    /// Makes `path` (and missing parents, 0700) if needed, checks it, and
    /// takes its lock.
    init(_ path: String) throws(StartupError) {
        try Self.makeDirectories(path)
        // Under the shared default parent, the parent is checked too: whoever
        // owns it could swap the directories inside.
        if path.hasPrefix(Self.defaultParent + "/") { try Self.check(Self.defaultParent) }
        try Self.check(path)
        let lockPath = path + "/" + Self.lockName
        var descriptor: Int32 = -1
        // The lock file may be removed (discard-state) between this open
        // and the flock: a lock taken on a removed file guards nothing, so
        // it is taken again on the file the path names now.
        for _ in 0..<10 {
            descriptor = open(lockPath, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else {
                throw StartupError(description: "--state-dir \(path): cannot open its lock: \(Self.describe(errno))")
            }
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else { break }
            var held = stat()
            var named = stat()
            if fstat(descriptor, &held) == 0, lstat(lockPath, &named) == 0, held.st_ino == named.st_ino,
                held.st_dev == named.st_dev
            {
                break
            }
            close(descriptor)
            descriptor = -1
        }
        guard descriptor >= 0 else {
            throw StartupError(description: "--state-dir \(path): its lock file keeps being replaced")
        }
        if flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            let error = errno
            var holder = [UInt8](repeating: 0, count: 32)
            let count = pread(descriptor, &holder, holder.count, 0)
            close(descriptor)
            let pid = count > 0 ? String(decoding: holder[..<count], as: UTF8.self).split(separator: "\n").first : nil
            guard error == EWOULDBLOCK else {
                throw StartupError(description: "--state-dir \(path): cannot lock it: \(Self.describe(error))")
            }
            throw StartupError(
                description:
                    "--state-dir \(path): in use by another znbd\(pid.map { " (pid \($0))" } ?? ""); give each device its own state directory"
            )
        }
        let line = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = pwrite(descriptor, line, line.count, 0)
        self.path = path
        lockDescriptor = descriptor
    }

    deinit { close(lockDescriptor) }

    /// The bytes the state's files hold in memory.
    var allocatedBytes: Int { Self.allocatedBytes(path) }

    static func allocatedBytes(_ path: String) -> Int {
        var total = 0
        for name in fileNames {
            var status = stat()
            if lstat(path + "/" + name, &status) == 0 { total += Int(status.st_blocks) * 512 }
        }
        return total
    }

    /// A warning when the tmpfs has less room than the device may use: up
    /// to its memory limit, else its size plus the tables (a full tmpfs is
    /// answered to clients as "no space", like a full pool).
    func roomWarning(deviceBytes: Int, memLimitBytes: Int?) -> String? {
        var filesystem = statvfs()
        guard statvfs(path, &filesystem) == 0 else { return nil }
        let free = Int(filesystem.f_bavail) * Int(filesystem.f_frsize)
        // 16 bytes of slot and up to 8 of handle per page, beside the pages.
        let wanted = (memLimitBytes ?? deviceBytes + deviceBytes / pageSize * 24) - allocatedBytes
        guard wanted > free else { return nil }
        return
            "the state directory \(path) is on a tmpfs with \(ByteSize.format(free)) free, less than the \(ByteSize.format(wanted)) more the device may take (\(memLimitBytes == nil ? "its size, with its tables" : "its --mem-limit")): writes past that fail with ENOSPC; mount a larger tmpfs for it, or set --mem-limit"
    }

    /// Removes a state nobody holds: its files and its directory.
    static func discard(_ path: String) throws(StartupError) {
        var status = stat()
        guard lstat(path, &status) == 0 else {
            throw StartupError(description: "--state-dir \(path): \(describe(errno))")
        }
        try check(path)
        // Held while removing, so that a daemon starting meanwhile waits on
        // nothing half gone: it finds the lock taken, or no state at all.
        let held = try StateDirectory(path)
        for name in fileNames where name != lockName {
            if unlink(path + "/" + name) != 0 && errno != ENOENT {
                throw StartupError(description: "cannot remove \(path)/\(name): \(describe(errno))")
            }
        }
        unlink(path + "/" + lockName)
        withExtendedLifetime(held) {}
        if rmdir(path) != 0 && errno != ENOTEMPTY {
            throw StartupError(description: "cannot remove \(path): \(describe(errno))")
        }
    }

    /// Removes the state's files and directory while holding its lock: for
    /// a state this process made and never served from.
    func removeFiles() {
        for name in Self.fileNames where name != Self.lockName { unlink(path + "/" + name) }
        unlink(path + "/" + Self.lockName)
        rmdir(path)
    }

    // MARK: Checks

    private static func check(_ path: String) throws(StartupError) {
        var status = stat()
        guard lstat(path, &status) == 0 else {
            throw StartupError(description: "--state-dir \(path): \(describe(errno))")
        }
        guard status.st_mode & S_IFMT == S_IFDIR else {
            throw StartupError(description: "--state-dir \(path): not a directory")
        }
        guard status.st_uid == geteuid(), status.st_mode & 0o022 == 0 else {
            throw StartupError(
                description:
                    "--state-dir \(path): must belong to this user (uid \(geteuid())) and be writable by nobody else; it is uid \(status.st_uid), mode \(String(status.st_mode & 0o777, radix: 8))"
            )
        }
        switch isOnTmpfs(path) {
        case .failure(let error):
            throw StartupError(description: "--state-dir \(path): \(describe(error.rawValue))")
        case .success(true):
            break
        case .success(false):
            throw StartupError(
                description:
                    "--state-dir \(path): not on a tmpfs (the state is memory: give a directory on /dev/shm or another tmpfs, or none)"
            )
        }
    }

    /// `mkdir -p` with 0700 for what it makes; an existing component is left
    /// as it is (and the last one checked).
    private static func makeDirectories(_ path: String) throws(StartupError) {
        guard path.hasPrefix("/") else {
            throw StartupError(description: "--state-dir \(path): must be an absolute path")
        }
        var prefix = ""
        for component in path.split(separator: "/") {
            guard component != "." && component != ".." else {
                throw StartupError(description: "--state-dir \(path): no . or .. components")
            }
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw StartupError(description: "--state-dir \(path): cannot make \(prefix): \(describe(errno))")
            }
        }
    }

    private static func describe(_ code: Int32) -> String { String(cString: strerror(code)) }
}

/// `znbd discard-state`: removes a device's state (what `systemctl stop`
/// keeps) when no daemon holds it.
struct DiscardState: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discard-state",
        abstract: "Remove a stopped device's state: its data and the memory it holds.",
        discussion: """
            The state outlives the daemon (--state-dir), through stops and restarts, until this command \
            or a reboot. A state a running daemon holds is refused.
            """)

    @Option(help: ArgumentHelp("The state directory to remove.", valueName: "path"))
    var stateDir: String?

    @Option(
        help: ArgumentHelp(
            "The device whose default state directory to remove (/dev/shm/znbd/NAME, or /dev/shm/znbd-UID/NAME for a user).",
            valueName: "name"))
    var device: String?

    func validate() throws {
        guard (stateDir == nil) != (device == nil) else {
            throw ValidationError("give exactly one of --state-dir and --device")
        }
        if let device {
            guard !device.isEmpty, !device.contains("/"), device != ".", device != ".." else {
                throw ValidationError("--device \(device): a device name, not a path")
            }
        }
    }

    func run() throws {
        let path = stateDir ?? StateDirectory.defaultPath(deviceName: device ?? "")
        let bytes = StateDirectory.allocatedBytes(path)
        try StateDirectory.discard(path)
        print("znbd: removed the state in \(path) (\(ByteSize.format(bytes)))")
    }
}
