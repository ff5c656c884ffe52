#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A plain, uncompressed RAM disk: the device the NBD server is tested and
/// benchmarked with, so that protocol costs are measured apart from
/// compression. Memory is an anonymous mapping: pages never written cost
/// nothing, and discarded pages are given back with MADV_DONTNEED.
///
/// Data is guarded by 256 striped mutexes, one per 64 KiB chunk modulo 256;
/// a request takes the chunks it spans one at a time, so each chunk is
/// atomic, as each page of a disk is.
public final class MemoryBlockDevice: BlockDevice, @unchecked Sendable {
    // @unchecked: `bytes` is only touched under the stripe lock of its chunk;
    // `status` entries are atomics.

    public enum ConfigurationError: Error, CustomStringConvertible {
        case invalidSize(Int)
        case mapFailed(errno: Int32)

        public var description: String {
            switch self {
            case .invalidSize(let bytes): "device size must be a positive multiple of 4096 bytes, got \(bytes)"
            case .mapFailed(let code): "could not map the device's memory (errno \(code))"
            }
        }
    }

    public let byteCount: Int
    public var sectorSize: Int { 512 }
    public var preferredBlockSize: Int { Self.pageSize }

    static let pageSize = 4096
    static let chunkSize = 64 << 10
    static let stripeCount = 256
    private static let statusUnallocated: UInt8 = 0
    private static let statusZero: UInt8 = 1
    private static let statusData: UInt8 = 2

    private let bytes: UnsafeMutableRawPointer
    private let status: UnsafeMutablePointer<Atomic<UInt8>>
    private let stripes: UnsafeMutablePointer<pthread_mutex_t>
    /// One status byte per page.
    private var statusBytes: Int { byteCount / Self.pageSize }

    /// A device of `byteCount` bytes (a multiple of 4096).
    public init(byteCount: Int) throws(ConfigurationError) {
        guard byteCount > 0, byteCount % Self.pageSize == 0 else { throw .invalidSize(byteCount) }
        self.byteCount = byteCount
        let pages = byteCount / Self.pageSize
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        guard let data = mmap(nil, byteCount, PROT_READ | PROT_WRITE, flags, -1, 0),
            data != UnsafeMutableRawPointer(bitPattern: -1)
        else { throw .mapFailed(errno: errno) }
        guard let statusMemory = mmap(nil, pages, PROT_READ | PROT_WRITE, flags, -1, 0),
            statusMemory != UnsafeMutableRawPointer(bitPattern: -1)
        else {
            munmap(data, byteCount)
            throw .mapFailed(errno: errno)
        }
        bytes = data
        // Zero bits are Atomic<UInt8>(0): unallocated.
        status = statusMemory.bindMemory(to: Atomic<UInt8>.self, capacity: pages)
        stripes = .allocate(capacity: Self.stripeCount)
        for index in 0..<Self.stripeCount {
            (stripes + index).initialize(to: pthread_mutex_t())
            pthread_mutex_init(stripes + index, nil)
        }
    }

    deinit {
        for index in 0..<Self.stripeCount { pthread_mutex_destroy(stripes + index) }
        stripes.deallocate()
        munmap(bytes, byteCount)
        munmap(UnsafeMutableRawPointer(status), statusBytes)
    }

    /// Runs `body(offset, length)` for each chunk-bounded piece of the range,
    /// holding that chunk's stripe lock.
    private func forEachChunk(offset: Int, length: Int, _ body: (Int, Int) -> Void) {
        var position = offset
        let end = offset + length
        while position < end {
            let chunk = position / Self.chunkSize
            let pieceEnd = min(end, (chunk + 1) * Self.chunkSize)
            let lock = stripes + chunk % Self.stripeCount
            pthread_mutex_lock(lock)
            body(position, pieceEnd - position)
            pthread_mutex_unlock(lock)
            position = pieceEnd
        }
    }

    private func setStatus(_ value: UInt8, offset: Int, length: Int, wholePagesOnly: Bool) {
        let first = wholePagesOnly ? (offset + Self.pageSize - 1) / Self.pageSize : offset / Self.pageSize
        let end = wholePagesOnly ? (offset + length) / Self.pageSize : (offset + length + Self.pageSize - 1) / Self.pageSize
        guard first < end else { return }
        for page in first..<end { status[page].store(value, ordering: .relaxed) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(BlockDeviceError) {
        try validateRange(offset: offset, length: buffer.count)
        forEachChunk(offset: offset, length: buffer.count) { position, count in
            (buffer.baseAddress! + (position - offset)).copyMemory(from: bytes + position, byteCount: count)
        }
    }

    public func write(_ source: UnsafeRawBufferPointer, at offset: Int) throws(BlockDeviceError) {
        try validateRange(offset: offset, length: source.count)
        forEachChunk(offset: offset, length: source.count) { position, count in
            (bytes + position).copyMemory(from: source.baseAddress! + (position - offset), byteCount: count)
        }
        setStatus(Self.statusData, offset: offset, length: source.count, wholePagesOnly: false)
    }

    public func discard(offset: Int, length: Int) throws(BlockDeviceError) {
        try validateRange(offset: offset, length: length)
        let first = (offset + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        let end = (offset + length) / Self.pageSize * Self.pageSize
        guard first < end else { return }
        forEachChunk(offset: first, length: end - first) { position, count in
            // Private anonymous pages read back as zeroes after MADV_DONTNEED.
            _ = madvise(bytes + position, count, MADV_DONTNEED)
        }
        setStatus(Self.statusUnallocated, offset: first, length: end - first, wholePagesOnly: true)
    }

    public func writeZeroes(offset: Int, length: Int) throws(BlockDeviceError) {
        try validateRange(offset: offset, length: length)
        forEachChunk(offset: offset, length: length) { position, count in
            memset(bytes + position, 0, count)
        }
        setStatus(Self.statusZero, offset: offset, length: length, wholePagesOnly: true)
    }

    public func flush() throws(BlockDeviceError) {}

    public func allocationExtents(offset: Int, length: Int, maximumExtents: Int) throws(BlockDeviceError)
        -> [AllocationExtent]
    {
        try validateRange(offset: offset, length: length)
        return collectExtents(
            offset: offset, length: length, pageSize: Self.pageSize, maximumExtents: maximumExtents
        ) { page in
            switch status[page].load(ordering: .relaxed) {
            case Self.statusUnallocated: .unallocated
            case Self.statusZero: .zero
            default: .data
            }
        }
    }
}
