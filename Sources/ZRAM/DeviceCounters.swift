import PageCodec
import ZNBDSystem

/// The device's running counters, sharded per CPU (ShardedCounters): every
/// write bumps several of them, and on shared cache lines two threads would
/// spend more on the counters than on the slot table.
final class DeviceCounters: Sendable {
    enum Counter: Int, CaseIterable {
        case pagesStored, compressedBytes, samePages, hugePages, hugePagesSince
        case failedReads, failedWrites, invalidIO, notifyFree
        case reads, writes, discards, zeroes, bytesRead, bytesWritten
        /// Partial-page writes started again because another write switched
        /// the page between their read and their switch.
        case patchRetries
        /// Pool objects freed with no object stored in their place: by a
        /// discard, a write-zeroes, or a same-filled write over a stored page.
        /// Each leaves a hole in a zspage; the maintenance thread watches
        /// this for bursts.
        case objectsFreedWithoutReplacement
        /// Compressed objects by the algorithm that wrote them (huge pages
        /// are raw and counted by `hugePages`).
        case lzoPages, lz4Pages, zstdPages
        /// Recompression (Recompression.swift): pages whose data the
        /// recompression codec compressed; of those, pages stored in its
        /// smaller stream, pages kept as they were, and huge pages it could
        /// not bring under the huge class; pages written meanwhile, whose
        /// result was dropped; object bytes before and after for the pages
        /// stored.
        case recompressTried, recompressStored, recompressNotSmaller, recompressIncompressible
        case recompressRaced, recompressBytesBefore, recompressBytesAfter
    }

    static func pages(of algorithm: CompressionAlgorithm) -> Counter {
        switch algorithm {
        case .lzo: .lzoPages
        case .lz4: .lz4Pages
        case .zstd: .zstdPages
        }
    }

    private let counters = ShardedCounters(count: Counter.allCases.count)

    @inline(__always)
    func add(_ counter: Counter, _ delta: Int = 1) { counters.add(counter.rawValue, delta) }

    func load(_ counter: Counter) -> Int { counters.load(counter.rawValue) }

    /// Adds (`sign` 1) or removes (`sign` -1) a page's content from the
    /// stored-data figures.
    func account(_ content: SlotContent, sign: Int) {
        switch content {
        case .unallocated:
            return
        case .sameFilled:
            add(.samePages, sign)
        case .object(_, let length, .raw):
            add(.compressedBytes, sign * length)
            add(.hugePages, sign)
            if sign > 0 { add(.hugePagesSince) }
        case .object(_, let length, .compressed(let algorithm)):
            add(.compressedBytes, sign * length)
            add(Self.pages(of: algorithm), sign)
        }
        add(.pagesStored, sign)
    }
}
