#if canImport(Glibc)
    import Glibc
#endif
public import SystemPackage

/// Memory for one of the device's tables, from either of the two mappings:
/// an AnonymousMapping, which dies with the process, or a FileMapping on a
/// tmpfs, which outlives it (docs/STATE-DESIGN.md). The tables are written
/// once against this type, so every line of them runs the same way in both.
///
/// The contract is the stricter one, the file's:
/// - A range is `prepare`d before it is first touched, a read included:
///   for a file that is the reservation that turns "no room" into ENOSPC
///   instead of SIGBUS; for anonymous memory it costs nothing and cannot
///   fail.
/// - `release` gives a range back: the memory falls at once and the range
///   reads as zeroes. It must be prepared again before it is touched again.
/// - What is stored is offsets and indices, never addresses: a file region
///   is mapped at another address by the next process.
/// - All-zero bytes are the value of every untouched byte.
///
/// The mapping lives as long as this object; the address never changes.
public final class MemoryRegion: @unchecked Sendable {
    // @unchecked: immutable after init; the bytes belong to the owner, whose
    // own locks say who may touch them.

    private enum Backing: ~Copyable {
        case anonymous(AnonymousMapping)
        case file(FileMapping)
    }

    /// The first usable byte, aligned as asked.
    public let base: UnsafeMutableRawPointer
    /// Usable bytes from `base` (a whole number of pages).
    public let byteCount: Int
    /// Whether the bytes outlive the process (a file).
    public let isPersistent: Bool
    /// Whether the region started empty: always for anonymous memory; for a
    /// file, when this process created it (else it holds what the last
    /// process stored).
    public let isNew: Bool
    private let backing: Backing

    /// Anonymous memory of `byteCount` bytes (rounded up to whole pages) at
    /// a multiple of `alignment`. `holdsHeapPointers` as AnonymousMapping's.
    public init(
        anonymousBytes byteCount: Int, alignment: Int = pageSize, holdsHeapPointers: Bool = false
    )
        throws(Errno)
    {
        let mapping = try AnonymousMapping(
            byteCount: byteCount, alignment: alignment, holdsHeapPointers: holdsHeapPointers)
        base = mapping.base
        self.byteCount = mapping.byteCount
        isPersistent = false
        isNew = true
        backing = .anonymous(mapping)
    }

    /// The file at `path`, created (empty) or opened (with what it holds),
    /// of `byteCount` bytes rounded up to whole pages, mapped at a multiple
    /// of `alignment`. The errors are FileMapping's: EINVAL for an existing
    /// file of another size, EACCES for one another user could have written.
    public init(path: String, byteCount: Int, alignment: Int = pageSize) throws(Errno) {
        let rounded = max(pageSize, (byteCount + pageSize - 1) & ~(pageSize - 1))
        let mapping = try FileMapping(path: path, byteCount: rounded, alignment: alignment)
        base = mapping.base
        self.byteCount = mapping.byteCount
        isPersistent = true
        isNew = mapping.created
        backing = .file(mapping)
    }

    /// Makes `offset..<offset + count` (page aligned) safe to touch. Throws
    /// ENOSPC when the file's filesystem has no room; then nothing in the
    /// range that was not prepared before may be touched.
    public func prepare(offset: Int, count: Int) throws(Errno) {
        switch backing {
        case .anonymous: return
        case .file(let mapping): try mapping.reserve(offset: offset, count: count)
        }
    }

    /// Gives `offset..<offset + count` (page aligned) back to the system.
    public func release(offset: Int, count: Int) {
        switch backing {
        case .anonymous(let mapping): mapping.discard(offset: offset, count: count)
        case .file(let mapping): mapping.release(offset: offset, count: count)
        }
    }

    /// The ranges a previous process wrote (and did not release since), in
    /// order, to rebuild from; nil for anonymous memory, which is always
    /// new. These may be read; a range around them that was only prepared
    /// is not listed (FileMapping.dataRanges), so what is kept is prepared
    /// again, and what is not is released.
    public func writtenRanges() throws(Errno) -> [Range<Int>]? {
        switch backing {
        case .anonymous: return nil
        case .file(let mapping): return try mapping.dataRanges()
        }
    }

    /// The region as `count` values of `T` from `base`, bound in place: all
    /// zero bits must be a valid `T` (fixed-width integers, Atomics of
    /// them), for the untouched bytes are zeroes.
    public func bindZeroed<T: ~Copyable>(to type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        precondition(
            count >= 0 && count * MemoryLayout<T>.stride <= byteCount, "\(count) values do not fit the region")
        precondition(Int(bitPattern: base) % MemoryLayout<T>.alignment == 0, "the region is not aligned for the type")
        return base.bindMemory(to: T.self, capacity: max(1, count))
    }
}

/// Where a device keeps its tables: in anonymous memory (gone with the
/// process), or in files of one state directory (kept for the next one).
public struct RegionPlacement: Sendable, Equatable {
    /// The state directory, nil for anonymous memory.
    public let directory: String?

    public static let anonymous = RegionPlacement(directory: nil)

    public static func directory(_ path: String) -> RegionPlacement { RegionPlacement(directory: path) }

    private init(directory: String?) { self.directory = directory }

    /// The region called `name` (a file name in the directory), of
    /// `byteCount` bytes at a multiple of `alignment`.
    public func region(
        _ name: String, byteCount: Int, alignment: Int = pageSize, holdsHeapPointers: Bool = false
    ) throws(Errno) -> MemoryRegion {
        guard let directory else {
            return try MemoryRegion(
                anonymousBytes: byteCount, alignment: alignment, holdsHeapPointers: holdsHeapPointers)
        }
        precondition(!holdsHeapPointers, "a persistent region cannot hold heap pointers")
        precondition(!name.contains("/") && !name.isEmpty, "a region's name is one file name")
        return try MemoryRegion(path: directory + "/" + name, byteCount: byteCount, alignment: alignment)
    }

    /// Whether the region called `name` has a file (always false for
    /// anonymous memory).
    public func regionExists(_ name: String) -> Bool {
        guard let directory else { return false }
        var status = stat()
        return lstat(directory + "/" + name, &status) == 0
    }

    /// Removes the files of the regions `names`, those that exist (nothing
    /// for anonymous memory). Their memory goes back once no process maps
    /// them.
    public func removeRegions(_ names: [String]) throws(Errno) {
        guard let directory else { return }
        for name in names where unlink(directory + "/" + name) != 0 && errno != ENOENT {
            throw Errno(rawValue: errno)
        }
    }
}
