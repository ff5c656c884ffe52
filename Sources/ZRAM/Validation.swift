import BlockDevice
import PageCodec
import ZNBDSystem
import ZSPool

/// A broken invariant between the slot table, the figures and the pool.
public struct DeviceCorruption: Error, CustomStringConvertible {
    public let description: String
}

extension CompressedBlockDevice {
    /// Checks, with no I/O running, that the slots and the pool agree: every
    /// stored page's handle is live in the pool, holds an object of the
    /// recorded length and decodes to a page; the pool holds no object that
    /// no slot names (a leak); the running figures equal a recount. Then runs
    /// the pool's own validator.
    public func validate() throws(DeviceCorruption) {
        var pagesStored = 0, compressedBytes = 0, samePages = 0, hugePages = 0, objects = 0, idle = 0
        var byAlgorithm = [CompressionAlgorithm: Int]()
        for page in 0..<slots.count where slots.isPrepared(page) {
            let (content, flags) = slots.withLock(page) { (slots.content(page), slots.flags(page)) }
            if flags.isIdle { idle += 1 }
            switch content {
            case .unallocated:
                continue
            case .sameFilled:
                samePages += 1
            case .object(_, let length, let encoding):
                objects += 1
                compressedBytes += length
                switch encoding {
                case .raw: hugePages += 1
                case .compressed(let algorithm): byAlgorithm[algorithm, default: 0] += 1
                }
                let huge = encoding == .raw
                guard (huge && length == pageSize) || (!huge && length <= hugeThreshold && length > 0) else {
                    throw DeviceCorruption(description: "page \(page): length \(length) does not fit \(encoding)")
                }
                do {
                    _ = try withPageBuffer { (buffer) throws(BlockDeviceError) in
                        try slots.withLock(page) { () throws(BlockDeviceError) in try loadPage(page, into: buffer) }
                    }
                } catch {
                    throw DeviceCorruption(description: "page \(page): \(error)")
                }
            }
            pagesStored += 1
        }
        let figures = figures()
        let compression = compressionFigures()
        let recount =
            [pagesStored * pageSize, compressedBytes, samePages, hugePages, idle]
            + CompressionAlgorithm.allCases.map { byAlgorithm[$0, default: 0] }
        let running =
            [figures[.origDataSize], figures[.comprDataSize], figures[.samePages], figures[.hugePages]]
            + [compression.idlePages]
            + CompressionAlgorithm.allCases.map { compression.pagesByAlgorithm[$0, default: 0] }
        guard recount == running else {
            throw DeviceCorruption(
                description:
                    "figures \(running) (orig, compr, same, huge, idle, lzo, lz4, zstd) but the slots hold \(recount)")
        }
        let live = pool.figures()[.liveObjects]
        guard live == objects else {
            throw DeviceCorruption(description: "the pool holds \(live) objects but the slots name \(objects)")
        }
        do {
            try pool.validate()
        } catch {
            throw DeviceCorruption(description: "pool: \(error)")
        }
    }
}
