#if canImport(Glibc)
    import Glibc
#endif
internal import CLinux
public import SystemPackage

/// The resident set in bytes of this process, or of process `pid`
/// (/proc/PID/statm's second field, in pages); 0 where /proc cannot be read.
public func residentMemoryBytes(pid: Int32? = nil) -> Int {
    let path = pid.map { "/proc/\($0)/statm" } ?? "/proc/self/statm"
    guard let fields = readSmallFile(path)?.split(separator: " "), fields.count > 1, let pages = Int(fields[1]) else {
        return 0
    }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// How the process's C heap (glibc malloc, under Swift's and NIO's
/// allocations) hands memory back. A process-wide choice, made once by the
/// daemon at start.
public enum HeapPolicy {
    /// Gives every allocation of `bytes` or more a mapping of its own, which
    /// is unmapped as soon as it is freed. Without this glibc raises its
    /// threshold after the first large free (up to 32 MiB), and later reply
    /// buffers of a few MiB come from the heap and stay resident after they
    /// are freed.
    @discardableResult
    public static func mapLargeAllocations(atLeast bytes: Int) -> Bool {
        clinux_malloc_map_at_least(bytes) == 1
    }

    /// Gives free heap memory back to the kernel (malloc_trim); true when
    /// some was released.
    @discardableResult
    public static func trim() -> Bool {
        clinux_malloc_trim() == 1
    }
}

/// Nanoseconds of CLOCK_BOOTTIME: monotonic, running through a suspend and
/// across process restarts, reset only by a reboot.
public func bootTimeNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_BOOTTIME, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// Whether `path` is on a tmpfs (statfs's f_type), or the errno that kept
/// statfs from saying.
public func isOnTmpfs(_ path: String) -> Result<Bool, Errno> {
    var type: Int64 = 0
    let result = clinux_filesystem_type(path, &type)
    guard result == 0 else { return .failure(Errno(rawValue: result)) }
    return .success(type == 0x0102_1994)
}
