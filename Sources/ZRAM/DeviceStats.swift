/// The device's figures, under the names the kernel's zram uses in
/// /sys/block/zramN/mm_stat and io_stat, plus request counters.
public struct ZRAMStats: Sendable, Codable, Equatable {
    /// The device size in bytes (zram's disksize).
    public var diskSize: Int

    // mm_stat, in the kernel's order.
    /// Bytes of data stored: 4096 per page that holds something, same-filled
    /// pages included.
    public var origDataSize: Int
    /// Bytes of compressed data: the LZO1X-1 length of each compressed page,
    /// 4096 for each huge page, 0 for same-filled pages.
    public var comprDataSize: Int
    /// Bytes of pool frames in use, metadata excluded (zs_get_total_pages).
    public var memUsedTotal: Int
    /// The memory limit in bytes; 0 for none.
    public var memLimit: Int
    /// The most pool bytes ever in use.
    public var memUsedMax: Int
    /// Pages stored as one repeated 8-byte word, with no pool object.
    public var samePages: Int
    /// Pool frames freed by compaction, since start.
    public var pagesCompacted: Int
    /// Pages stored raw now because they did not compress.
    public var hugePages: Int
    /// Pages ever stored raw, since start.
    public var hugePagesSince: Int

    // io_stat, in the kernel's order.
    /// Reads that failed: stored data that did not decompress.
    public var failedReads: Int
    /// Writes that failed: no space (pool full or mem_limit), or a codec error.
    public var failedWrites: Int
    /// Requests refused for their range: past the end, or not 512-aligned.
    public var invalidIO: Int
    /// Page frees requested by discard, one per whole page covered.
    public var notifyFree: Int

    // Requests and bytes.
    public var reads: Int
    public var writes: Int
    public var discards: Int
    public var zeroes: Int
    public var bytesRead: Int
    public var bytesWritten: Int

    /// The nine mm_stat figures in the kernel's order.
    public var mmStat: [Int] {
        [origDataSize, comprDataSize, memUsedTotal, memLimit, memUsedMax, samePages, pagesCompacted, hugePages,
         hugePagesSince]
    }

    /// The four io_stat figures in the kernel's order.
    public var ioStat: [Int] { [failedReads, failedWrites, invalidIO, notifyFree] }

    enum CodingKeys: String, CodingKey {
        case diskSize = "disksize"
        case origDataSize = "orig_data_size"
        case comprDataSize = "compr_data_size"
        case memUsedTotal = "mem_used_total"
        case memLimit = "mem_limit"
        case memUsedMax = "mem_used_max"
        case samePages = "same_pages"
        case pagesCompacted = "pages_compacted"
        case hugePages = "huge_pages"
        case hugePagesSince = "huge_pages_since"
        case failedReads = "failed_reads"
        case failedWrites = "failed_writes"
        case invalidIO = "invalid_io"
        case notifyFree = "notify_free"
        case reads, writes, discards, zeroes
        case bytesRead = "bytes_read"
        case bytesWritten = "bytes_written"
    }
}
