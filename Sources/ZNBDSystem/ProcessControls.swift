#if canImport(Glibc)
    import Glibc
#endif
internal import CLinux
public import SystemPackage

/// Process-wide kernel settings for a daemon that may serve as its machine's
/// swap device: the system calls only. Which of them to apply, and what to
/// say when one is not permitted, is the daemon's policy (znbd's
/// ProcessProtection).
public enum ProcessControls {
    /// Makes the calling thread, and every thread it creates afterwards, an
    /// I/O flusher (`prctl(PR_SET_IO_FLUSHER)`, Linux 5.6+, needs
    /// CAP_SYS_RESOURCE): they allocate with GFP_NOIO (PF_MEMALLOC_NOIO), so
    /// reclaim from them never starts swap I/O, and are not throttled on other
    /// devices' writeback. Per thread, inherited only at creation.
    public static func becomeIOFlusher() throws(Errno) {
        guard clinux_set_io_flusher() == 0 else { throw Errno(rawValue: errno) }
    }

    /// Locks every page of the process as it is faulted in, in present and
    /// later mappings (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`);
    /// the call faults nothing in. Under a finite RLIMIT_MEMLOCK without
    /// CAP_IPC_LOCK, MCL_FUTURE makes later large mappings fail: check
    /// `memoryLockLimit` first.
    public static func lockAllMemoryOnFault() throws(Errno) {
        guard clinux_lock_all_on_fault() == 0 else { throw Errno(rawValue: errno) }
    }

    /// RLIMIT_MEMLOCK's soft limit in bytes, nil when unlimited (0 when it
    /// cannot be read).
    public static var memoryLockLimit: UInt64? {
        var limit: UInt64 = 0
        guard clinux_memlock_limit(&limit) == 0 else { return 0 }
        return limit == UInt64.max ? nil : limit
    }

    /// The capabilities `hasEffectiveCapability` is asked about.
    public enum Capability: Int, Sendable {
        case ipcLock = 14
        case sysResource = 24
    }

    /// Whether the process has `capability` in its effective set
    /// (/proc/self/status, CapEff).
    public static func hasEffectiveCapability(_ capability: Capability) -> Bool {
        guard let status = readSmallFile("/proc/self/status") else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst("CapEff:".count).drop(while: { $0 == " " || $0 == "\t" })
            return (UInt64(hex, radix: 16) ?? 0) & (1 << UInt64(capability.rawValue)) != 0
        }
        return false
    }

    /// Sets the process's /proc/self/oom_score_adj (-1000...1000; lowering
    /// it needs CAP_SYS_RESOURCE).
    public static func setOOMScoreAdjustment(_ value: Int) throws(Errno) {
        guard writeSmallFile("/proc/self/oom_score_adj", "\(value)\n") else { throw Errno(rawValue: errno) }
    }

    /// How many of the process's threads are I/O flushers (the task flag
    /// PF_MEMALLOC_NOIO, 0x80000, in /proc/self/task/TID/stat), of how many:
    /// the check that `becomeIOFlusher` ran before the threads were made.
    public static func ioFlusherThreads() -> (flushers: Int, threads: Int) {
        guard let directory = opendir("/proc/self/task") else { return (0, 0) }
        defer { closedir(directory) }
        var flushers = 0
        var threads = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            // The command name, in parentheses, may hold spaces: fields are
            // counted from the last ')'. The flags are the 9th field, the
            // 7th after it.
            guard name.first?.isNumber == true, let stat = readSmallFile("/proc/self/task/\(name)/stat"),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 6, let flags = UInt(fields[6]) else { continue }
            threads += 1
            if flags & 0x80000 != 0 { flushers += 1 }
        }
        return (flushers, threads)
    }
}

/// Writes `text` to an existing file in one write(2); false with errno set
/// when it could not (for /proc and /sys, where one write is one setting).
func writeSmallFile(_ path: String, _ text: String) -> Bool {
    let descriptor = open(path, O_WRONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    var text = text
    return text.withUTF8 { write(descriptor, $0.baseAddress, $0.count) == $0.count }
}
