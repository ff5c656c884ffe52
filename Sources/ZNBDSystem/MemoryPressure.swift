#if canImport(Glibc)
    import Glibc
#endif
public import SystemPackage

/// The kernel's memory-pressure signal (PSI, pressure stall information):
/// a poll trigger on the cgroup's `memory.pressure`, or on the system's
/// `/proc/pressure/memory`, that fires when tasks stalled on memory for
/// `stall` out of any `window`. The userspace analogue of the shrinker that
/// makes zsmalloc compact when the kernel is short of memory.
///
/// The window is 2 s or a multiple of it: the kernel refuses shorter windows
/// to unprivileged processes.
public final class MemoryPressureTrigger {
    /// The file the trigger was set on.
    public let path: String
    let descriptor: CInt

    /// Sets a trigger on the first pressure file of this process's cgroup
    /// (cgroup v2, at /sys/fs/cgroup or /sys/fs/cgroup/unified), else on
    /// /proc/pressure/memory. Throws when neither takes the trigger (no PSI
    /// in this kernel, or no permission).
    public init(stall: Duration = .milliseconds(150), window: Duration = .seconds(2)) throws(Errno) {
        var lastError = Errno.noSuchFileOrDirectory
        for path in Self.candidatePaths() {
            let descriptor = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC)
            guard descriptor >= 0 else {
                lastError = Errno(rawValue: errno)
                continue
            }
            let trigger = "some \(Self.microseconds(stall)) \(Self.microseconds(window))"
            let written = trigger.withCString { write(descriptor, $0, strlen($0) + 1) }
            guard written > 0 else {
                lastError = Errno(rawValue: errno)
                close(descriptor)
                continue
            }
            self.path = path
            self.descriptor = descriptor
            return
        }
        throw lastError
    }

    deinit {
        close(descriptor)
    }

    private static func microseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000
    }

    /// memory.pressure of this process's cgroup v2 group, then the system's.
    static func candidatePaths() -> [String] {
        var paths: [String] = []
        if let groups = readSmallFile("/proc/self/cgroup") {
            for line in groups.split(separator: "\n") where line.hasPrefix("0::") {
                let group = line.dropFirst(3)
                guard group != "/" else { continue }  // the root group has no file of its own
                paths += ["/sys/fs/cgroup\(group)/memory.pressure", "/sys/fs/cgroup/unified\(group)/memory.pressure"]
            }
        }
        return paths + ["/proc/pressure/memory"]
    }
}

/// What woke a `Sleeper`.
public enum WakeReason: Sendable, Equatable {
    case deadline
    /// Another thread called `wake()`.
    case woken
    /// The memory-pressure trigger fired.
    case pressure
}

/// Sleeps until a deadline, a `wake()` from another thread, or memory
/// pressure, whichever comes first: poll(2) on a pipe and, when there is
/// one, a MemoryPressureTrigger.
public final class Sleeper: @unchecked Sendable {
    // @unchecked: the descriptors are fixed at init; a pipe and poll(2) are
    // safe to use from any thread.
    private let wakeRead: CInt
    private let wakeWrite: CInt
    private let pressure: MemoryPressureTrigger?

    public var pressureSource: String? { pressure?.path }

    public init(pressure: MemoryPressureTrigger?) throws(Errno) {
        var ends: [CInt] = [0, 0]
        guard pipe(&ends) == 0 else { throw Errno(rawValue: errno) }
        for end in ends {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
        }
        wakeRead = ends[0]
        wakeWrite = ends[1]
        self.pressure = pressure
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    /// Ends a `sleep` now, or the next one if none is under way.
    public func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    /// Sleeps for at most `duration`; returns why it woke. Pressure wins
    /// over a wake-up when both are pending.
    public func sleep(for duration: Duration) -> WakeReason {
        var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        if let pressure { fds.append(pollfd(fd: pressure.descriptor, events: Int16(POLLPRI), revents: 0)) }
        let milliseconds = max(
            0, duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        let ready = poll(&fds, nfds_t(fds.count), CInt(clamping: milliseconds))
        guard ready > 0 else { return .deadline }
        if fds.count > 1, fds[1].revents & Int16(POLLPRI) != 0 { return .pressure }
        if fds[0].revents & Int16(POLLIN) != 0 {
            var drain = [UInt8](repeating: 0, count: 64)
            while read(wakeRead, &drain, drain.count) > 0 {}
            return .woken
        }
        return .deadline
    }
}

/// A small text file's contents (/proc, /sys), or nil.
func readSmallFile(_ path: String) -> String? {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var bytes = [UInt8](repeating: 0, count: 4096)
    let count = bytes.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
    guard count >= 0 else { return nil }
    return String(decoding: bytes[..<count], as: UTF8.self)
}
