import ZNBDSystem

/// Resident set size of this process in bytes: the daemon's own reading
/// (/proc/self/statm), so tests and /v1/stats measure alike.
public func residentBytes() -> Int { residentMemoryBytes() }
