#if canImport(Glibc)
    import Glibc
#endif
internal import CLinux
public import SystemPackage

/// A file's bytes mapped `MAP_SHARED`: memory that outlives the process.
/// On a tmpfs (/dev/shm, /run) the pages are the file's, so what a process
/// stored is there for the next one that maps the file, after an exit, a
/// SIGKILL or an abort, until the file is removed or the machine restarts
/// (docs/STATE-DESIGN.md: the first step of the state that outlives the
/// daemon). Owned by this value and unmapped when it goes away; the file
/// stays.
///
/// Three differences from AnonymousMapping decide how it is used:
/// - Touching a page the filesystem has no room for (a read of a hole
///   allocates one too) raises SIGBUS, not an error. A range is therefore
///   `reserve`d (fallocate) before it is first touched, and ENOSPC from
///   that is the caller's "full".
/// - MADV_DONTNEED only drops this process's view; the file keeps the page.
///   `release` punches a hole instead: the pages go back to the system and
///   the range reads as zeroes.
/// - The mapping's address differs in every process: what is stored in it
///   must be offsets and indices, never addresses.
///
/// The file is opened without following a symbolic link at its last
/// component (the directories above it are the caller's to check), made
/// 0600 when created; an existing file must be this user's, with no access
/// for group or others (EACCES otherwise: in a world-writable directory
/// such as /dev/shm another user could have planted it). Its size is the
/// mapping's: a new file is extended to it (reading as zeroes, costing
/// nothing), an existing one must already have it (EINVAL otherwise: a
/// state made for another geometry is never silently reused). A file this
/// call created is removed again if the mapping then fails.
public struct FileMapping: ~Copyable {
    /// The first usable byte, aligned as asked.
    public let base: UnsafeMutableRawPointer
    /// Usable bytes from `base`: the file's size.
    public let byteCount: Int
    /// True when this mapping created the file (then it reads as zeroes).
    public let created: Bool
    private let descriptor: Int32
    private let reservationStart: UnsafeMutableRawPointer
    private let reservationLength: Int

    /// Opens or creates `path` and maps `byteCount` bytes of it (a whole
    /// number of pages, at least one) at a multiple of `alignment`, a power
    /// of two no smaller than a page.
    public init(path: String, byteCount: Int, alignment: Int = pageSize) throws(Errno) {
        precondition(byteCount > 0 && byteCount & (pageSize - 1) == 0, "a file mapping is whole pages")
        precondition(alignment >= pageSize && alignment.nonzeroBitCount == 1)
        var descriptor = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        var madeHere = false
        if descriptor < 0 && errno == ENOENT {
            descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
            madeHere = descriptor >= 0
        }
        guard descriptor >= 0 else { throw Errno(rawValue: errno) }
        var created = madeHere
        // Undoes the open (and the creation) when a later step fails.
        func fail(_ error: Errno) -> Errno {
            close(descriptor)
            if madeHere { unlink(path) }
            return error
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw fail(Errno(rawValue: errno)) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw fail(.invalidArgument) }
        guard created || (status.st_uid == geteuid() && status.st_mode & 0o077 == 0) else {
            throw fail(.permissionDenied)
        }
        if created || status.st_size == 0 {
            guard ftruncate(descriptor, off_t(byteCount)) == 0 else { throw fail(Errno(rawValue: errno)) }
            created = true
        } else if status.st_size != off_t(byteCount) {
            throw fail(.invalidArgument)
        }
        // An aligned address: reserve address space with room to align, then
        // map the file over the aligned part of it (MAP_FIXED replaces the
        // reservation's pages there; the rest stays inaccessible).
        let length = byteCount + alignment - pageSize
        let reservation = mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let reservation, reservation != MAP_FAILED else { throw fail(Errno(rawValue: errno)) }
        let misalignment = Int(bitPattern: reservation) & (alignment - 1)
        let aligned = reservation + (misalignment == 0 ? 0 : alignment - misalignment)
        let mapped = mmap(aligned, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, descriptor, 0)
        guard let mapped, mapped != MAP_FAILED else {
            let error = Errno(rawValue: errno)
            munmap(reservation, length)
            throw fail(error)
        }
        base = mapped
        self.byteCount = byteCount
        self.created = created
        self.descriptor = descriptor
        reservationStart = reservation
        reservationLength = length
    }

    deinit {
        munmap(reservationStart, reservationLength)
        close(descriptor)
    }

    /// Allocates the file's pages for `offset..<offset + count` (page
    /// aligned), so that touching them cannot raise SIGBUS. Throws ENOSPC
    /// when the filesystem has no room: nothing in the range may then be
    /// touched that was not reserved before.
    public func reserve(offset: Int, count: Int) throws(Errno) {
        assert(offset >= 0 && count > 0 && offset + count <= byteCount, "reserve outside the mapping")
        assert(offset & (pageSize - 1) == 0 && count & (pageSize - 1) == 0, "reserve of a partial page")
        let result = clinux_reserve_file_range(descriptor, Int64(offset), Int64(count))
        if result != 0 { throw Errno(rawValue: result) }
    }

    /// Gives the pages of `offset..<offset + count` (page aligned) back:
    /// the file's range becomes a hole, the system's memory falls at once
    /// (locked pages included), and the range reads as zeroes. A range
    /// touched again must be reserved again first.
    public func release(offset: Int, count: Int) {
        assert(offset >= 0 && count > 0 && offset + count <= byteCount, "release outside the mapping")
        assert(offset & (pageSize - 1) == 0 && count & (pageSize - 1) == 0, "release of a partial page")
        let result = clinux_punch_file_range(descriptor, Int64(offset), Int64(count))
        // Only a bad descriptor or range, or a filesystem without holes,
        // fails here: all are a broken invariant, not a runtime condition.
        precondition(result == 0, "punching a hole failed: \(String(cString: strerror(result)))")
    }

    /// The ranges of the file whose pages were written, in order, found
    /// with SEEK_DATA and SEEK_HOLE without touching the mapping. Pages
    /// reserved and never written are holes here (a tmpfs keeps them
    /// "unwritten": checked on Linux 6.18), so a caller that keeps a range
    /// reserves it again, and one that drops it punches it whole.
    public func dataRanges() throws(Errno) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var offset: Int64 = 0
        while offset < Int64(byteCount) {
            var start: Int64 = 0
            var end: Int64 = 0
            let result = clinux_next_data_range(descriptor, offset, &start, &end)
            if result == ENXIO { break }
            if result != 0 { throw Errno(rawValue: result) }
            ranges.append(Int(start)..<Int(min(end, Int64(byteCount))))
            offset = end
        }
        return ranges
    }

    /// The bytes the file holds in memory or on disk (its allocated
    /// blocks): what `reserve` added and `release` gave back.
    public var allocatedBytes: Int {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { return 0 }
        return Int(status.st_blocks) * 512
    }

    /// The mapping as `count` values of `T` from `base`, bound in place, as
    /// AnonymousMapping.bindZeroed does: all-zero bits must be a valid `T`
    /// (a new file reads as zeroes; an existing one holds what was stored).
    public func bindZeroed<T: ~Copyable>(to type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        precondition(
            count >= 0 && count * MemoryLayout<T>.stride <= byteCount, "\(count) values do not fit the mapping")
        precondition(Int(bitPattern: base) % MemoryLayout<T>.alignment == 0, "the mapping is not aligned for the type")
        return base.bindMemory(to: T.self, capacity: max(1, count))
    }
}
