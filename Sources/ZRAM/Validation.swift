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
        var pagesStored = 0, compressedBytes = 0, samePages = 0, hugePages = 0, objects = 0
        for page in 0..<slots.count {
            let content = slots.withLock(page) { slots.content(page) }
            switch content {
            case .unallocated:
                continue
            case .sameFilled:
                samePages += 1
            case .object(_, let length, let huge):
                objects += 1
                compressedBytes += length
                if huge { hugePages += 1 }
                guard (huge && length == pageSize) || (!huge && length <= hugeThreshold && length > 0) else {
                    throw DeviceCorruption(description: "page \(page): length \(length) does not fit huge=\(huge)")
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
        let figures = stats()
        let recount = [pagesStored * pageSize, compressedBytes, samePages, hugePages]
        let running = [figures.origDataSize, figures.comprDataSize, figures.samePages, figures.hugePages]
        guard recount == running else {
            throw DeviceCorruption(
                description: "figures \(running) (orig, compr, same, huge) but the slots hold \(recount)")
        }
        let live = pool.stats().liveObjects
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
