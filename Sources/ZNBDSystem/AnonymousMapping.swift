#if canImport(Glibc)
    import Glibc
#endif
internal import CLinux
public import SystemPackage

/// Memory straight from the kernel: one private anonymous mapping, owned by
/// this value and unmapped when it goes away (the corresponding C calls are
/// `mmap(MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)` and `munmap`).
///
/// Pages cost nothing until first touched, read as zeroes until written, and
/// after `discard` read as zeroes again and cost nothing again: the pool's
/// arena, the slot table and the plain RAM device rely on all three. The
/// address never changes while the value lives; pointers into it must not
/// outlive it. Not copyable: exactly one owner unmaps it.
///
/// A mapping made with `holdsHeapPointers` is a root for LeakSanitizer,
/// which otherwise never looks into a mapping and would report the heap
/// blocks whose only pointers are kept there (ZSPool's zspage records) as
/// leaked. The root lasts from the mmap to the munmap: if the mapping's
/// owner leaks, the root stays, the blocks it points to stay reachable, and
/// LeakSanitizer reports the owner (a heap object) rather than them.
public struct AnonymousMapping: ~Copyable {
    /// The first usable byte, aligned as asked.
    public let base: UnsafeMutableRawPointer
    /// Usable bytes from `base` (a whole number of pages).
    public let byteCount: Int
    private let mappingStart: UnsafeMutableRawPointer
    private let mappingLength: Int
    private let holdsHeapPointers: Bool

    /// Maps `byteCount` bytes (at least one page; rounded up to whole
    /// pages) starting at a multiple of `alignment`, a power of two no
    /// smaller than a page. Only address space is reserved.
    /// `holdsHeapPointers`: the owner keeps pointers to heap blocks in it.
    public init(byteCount: Int, alignment: Int = pageSize, holdsHeapPointers: Bool = false) throws(Errno) {
        precondition(byteCount >= 0 && alignment >= pageSize && alignment.nonzeroBitCount == 1)
        let usable = max(pageSize, (byteCount + pageSize - 1) & ~(pageSize - 1))
        // Map `alignment - pageSize` more, so an aligned start fits inside.
        let length = usable + alignment - pageSize
        let start = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let start, start != MAP_FAILED else { throw Errno(rawValue: errno) }
        mappingStart = start
        mappingLength = length
        let misalignment = Int(bitPattern: start) & (alignment - 1)
        base = start + (misalignment == 0 ? 0 : alignment - misalignment)
        self.byteCount = usable
        // A root from the mmap to the munmap, registered and unregistered
        // with the same start and length, as LeakSanitizer requires (a
        // no-op without its runtime).
        self.holdsHeapPointers = holdsHeapPointers
        if holdsHeapPointers { clinux_leak_check_add_root(mappingStart, mappingLength) }
    }

    deinit {
        if holdsHeapPointers { clinux_leak_check_remove_root(mappingStart, mappingLength) }
        munmap(mappingStart, mappingLength)
    }

    /// The mapping as `count` values of `T` from `base`, bound in place:
    /// for a fresh mapping, whose pages read as zero bits, and a `T` for
    /// which all-zero bits are a valid value (fixed-width integers, Atomics
    /// of them), so that binding is the initialisation and an untouched
    /// element costs no memory. Traps unless `count` values fit.
    public func bindZeroed<T: ~Copyable>(to type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        precondition(
            count >= 0 && count * MemoryLayout<T>.stride <= byteCount, "\(count) values do not fit the mapping")
        precondition(Int(bitPattern: base) % MemoryLayout<T>.alignment == 0, "the mapping is not aligned for the type")
        return base.bindMemory(to: T.self, capacity: max(1, count))
    }

    /// Gives the pages of `offset..<offset + count` back to the kernel
    /// (`madvise(MADV_DONTNEED)`): the process's RSS falls at once, and the
    /// range reads as zeroes if it is touched again. Page-aligned only.
    public func discard(offset: Int, count: Int) {
        assert(offset >= 0 && count >= 0 && offset + count <= byteCount, "discard outside the mapping")
        assert(offset & (pageSize - 1) == 0 && count & (pageSize - 1) == 0, "discard of a partial page")
        let start = base + offset
        if madvise(start, count, MADV_DONTNEED) != 0 && errno == EINVAL {
            // Locked pages (the daemon's mlockall, ProcessControls) refuse MADV_DONTNEED:
            // unlock the range, drop it, and lock it again as it is touched.
            _ = munlock(start, count)
            _ = madvise(start, count, MADV_DONTNEED)
            _ = clinux_lock_on_fault(start, count)
        }
    }
}
