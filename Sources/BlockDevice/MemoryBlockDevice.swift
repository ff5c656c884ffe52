#if canImport(Glibc)
    import Glibc
#endif
import Synchronization
import ZNBDSystem
import SystemPackage

/// A plain, uncompressed RAM disk: the device the NBD server is tested and
/// benchmarked with, so that protocol costs are measured apart from
/// compression. Memory is an anonymous mapping: pages never written cost
/// nothing, and discarded pages are given back with MADV_DONTNEED.
///
/// Data is guarded by 256 striped mutexes, one per 64 KiB chunk modulo 256;
/// a request takes the chunks it spans one at a time, so each chunk is
/// atomic, as each page of a disk is.
public final class MemoryBlockDevice: BlockDevice, @unchecked Sendable {
    // @unchecked: `data`'s bytes are only touched under the stripe lock of
    // their chunk; `status` entries are atomics; the mappings are immutable.

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
    public let minimumBlockSize: Int
    public var preferredBlockSize: Int { pageSize }

    static let chunkSize = 64 << 10
    static let stripeCount = 256
    private static let statusUnallocated: UInt8 = 0
    private static let statusZero: UInt8 = 1
    private static let statusData: UInt8 = 2

    private let data: AnonymousMapping
    private let statusMapping: AnonymousMapping
    private let bytes: UnsafeMutableRawPointer
    private let status: UnsafeMutablePointer<Atomic<UInt8>>
    private let stripes: UnsafeMutablePointer<pthread_mutex_t>

    /// A device of `byteCount` bytes (a multiple of the page size) that
    /// asks clients for `minimumBlockSize` alignment (a power of two up to
    /// the page size; tests use 512 to see NBD refuse misaligned requests).
    public init(byteCount: Int, minimumBlockSize: Int = 1) throws(ConfigurationError) {
        guard byteCount > 0, byteCount % pageSize == 0 else { throw .invalidSize(byteCount) }
        precondition(
            minimumBlockSize > 0 && minimumBlockSize <= pageSize && minimumBlockSize & (minimumBlockSize - 1) == 0)
        self.byteCount = byteCount
        self.minimumBlockSize = minimumBlockSize
        let pages = byteCount / pageSize
        do {
            data = try AnonymousMapping(byteCount: byteCount)
            statusMapping = try AnonymousMapping(byteCount: pages)
        } catch {
            throw .mapFailed(errno: error.rawValue)
        }
        bytes = data.base
        // Zero bits are Atomic<UInt8>(0): unallocated.
        status = statusMapping.bindZeroed(to: Atomic<UInt8>.self, count: pages)
        stripes = .allocate(capacity: Self.stripeCount)
        for index in 0..<Self.stripeCount {
            (stripes + index).initialize(to: pthread_mutex_t())
            pthread_mutex_init(stripes + index, nil)
        }
    }

    deinit {
        for index in 0..<Self.stripeCount { pthread_mutex_destroy(stripes + index) }
        stripes.deallocate()
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
        let first = wholePagesOnly ? (offset + pageSize - 1) / pageSize : offset / pageSize
        let end = wholePagesOnly ? (offset + length) / pageSize : (offset + length + pageSize - 1) / pageSize
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
        let first = (offset + pageSize - 1) / pageSize * pageSize
        let end = (offset + length) / pageSize * pageSize
        guard first < end else { return }
        forEachChunk(offset: first, length: end - first) { position, count in
            data.discard(offset: position, count: count)
        }
        setStatus(Self.statusUnallocated, offset: first, length: end - first, wholePagesOnly: true)
    }

    public func writeZeroes(offset: Int, length: Int, mayDeallocate: Bool) throws(BlockDeviceError) {
        try validateRange(offset: offset, length: length)
        func clear(_ start: Int, _ count: Int) {
            forEachChunk(offset: start, length: count) { position, chunk in memset(bytes + position, 0, chunk) }
        }
        if mayDeallocate {
            // The whole pages are discarded; only the partial pages at the
            // edges are cleared by hand.
            let end = offset + length
            let firstWhole = min(end, (offset + pageSize - 1) / pageSize * pageSize)
            let endWhole = max(firstWhole, end / pageSize * pageSize)
            clear(offset, firstWhole - offset)
            clear(endWhole, end - endWhole)
            try discard(offset: offset, length: length)
        } else {
            clear(offset, length)
            setStatus(Self.statusZero, offset: offset, length: length, wholePagesOnly: true)
        }
    }

    public func flush() throws(BlockDeviceError) {}

    public func allocationExtents(
        offset: Int, length: Int, maximumExtents: Int
    ) throws(BlockDeviceError)
        -> [AllocationExtent]
    {
        try validateRange(offset: offset, length: length)
        return collectExtents(
            offset: offset, length: length, pageSize: pageSize, maximumExtents: maximumExtents
        ) { page in
            switch status[page].load(ordering: .relaxed) {
            case Self.statusUnallocated: .unallocated
            case Self.statusZero: .zero
            default: .data
            }
        }
    }
}
