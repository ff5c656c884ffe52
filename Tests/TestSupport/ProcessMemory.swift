#if canImport(Glibc)
    import Glibc
#endif
import ZNBDSystem

/// Resident set size of this process in bytes: the daemon's own reading
/// (/proc/self/statm), so tests and /v1/stats measure alike.
public func residentBytes() -> Int { residentMemoryBytes() }

/// Resident set size of process `pid` in bytes.
public func residentBytes(of pid: Int32) -> Int { residentMemoryBytes(pid: pid) }

/// Open file descriptors of process `pid` (entries of /proc/PID/fd).
public func openFileDescriptorCount(of pid: Int32) -> Int {
    var count = 0
    guard let directory = opendir("/proc/\(pid)/fd") else { return -1 }
    defer { closedir(directory) }
    while readdir(directory) != nil { count += 1 }
    return count - 2  // "." and ".."
}
