import PageCodec
import ZNBDFigures
import ZNBDSystem

/// The device's running counters, sharded per CPU (ShardedCounters): every
/// write bumps several of them, and on shared cache lines two threads would
/// spend more on the counters than on the slot table. One counter per
/// declared DeviceFigure and RecompressionFigure (those the device computes
/// from elsewhere, the pool's memory say, are left at zero here), then the
/// device's own.
final class DeviceCounters: Sendable {
    /// Counters that are no declared figure of their own.
    enum Internal: Int, CaseIterable {
        /// Partial-page writes started again because another write switched
        /// the page between their read and their switch.
        case patchRetries
        /// Pool objects freed with no object stored in their place: by a
        /// discard, a write-zeroes, or a same-filled write over a stored page.
        /// Each leaves a hole in a zspage; the maintenance thread watches
        /// this for bursts.
        case objectsFreedWithoutReplacement
        /// Compressed objects by the algorithm that wrote them (huge pages
        /// are raw and counted by `hugePages`): CompressionFigure's
        /// pages_by_algorithm.
        case lzoPages, lz4Pages, zstdPages
    }

    private static let recompressionBase = DeviceFigure.allCases.count
    private static let internalBase = recompressionBase + RecompressionFigure.allCases.count

    static func pages(of algorithm: CompressionAlgorithm) -> Internal {
        switch algorithm {
        case .lzo: .lzoPages
        case .lz4: .lz4Pages
        case .zstd: .zstdPages
        }
    }

    private let counters = ShardedCounters(count: internalBase + Internal.allCases.count)

    @inline(__always)
    func add(_ figure: DeviceFigure, _ delta: Int = 1) { counters.add(figure.rawValue, delta) }

    @inline(__always)
    func add(_ counter: Internal, _ delta: Int = 1) { counters.add(Self.internalBase + counter.rawValue, delta) }

    func load(_ figure: DeviceFigure) -> Int { counters.load(figure.rawValue) }

    func load(_ counter: Internal) -> Int { counters.load(Self.internalBase + counter.rawValue) }

    /// Adds one recompression run's (or slice's) figures to the totals.
    func add(_ recompression: Figures<RecompressionFigure>) {
        for figure in RecompressionFigure.allCases where recompression[figure] != 0 {
            counters.add(Self.recompressionBase + figure.rawValue, recompression[figure])
        }
    }

    /// One recompression figure, every run's added up.
    func load(_ figure: RecompressionFigure) -> Int { counters.load(Self.recompressionBase + figure.rawValue) }

    /// Every recompression run's figures added up.
    func recompressionTotals() -> Figures<RecompressionFigure> {
        var totals = Figures<RecompressionFigure>()
        for figure in RecompressionFigure.allCases {
            totals[figure] = load(figure)
        }
        return totals
    }

    /// Adds (`sign` 1) or removes (`sign` -1) a page's content from the
    /// stored-data figures.
    func account(_ content: SlotContent, sign: Int, resumed: Bool = false) {
        switch content {
        case .unallocated:
            return
        case .sameFilled:
            add(.samePages, sign)
        case .object(_, let length, .raw):
            add(.comprDataSize, sign * length)
            add(.hugePages, sign)
            if sign > 0 && !resumed { add(.hugePagesSince) }
        case .object(_, let length, .compressed(let algorithm)):
            add(.comprDataSize, sign * length)
            add(Self.pages(of: algorithm), sign)
        }
        add(.origDataSize, sign * pageSize)
    }
}
