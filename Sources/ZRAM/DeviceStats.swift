/// The device's figures, named as the kernel's zram names them in
/// /sys/block/zramN/mm_stat and io_stat, plus request counters. Plain
/// values: ZNBDControlAPI's DeviceFigures carries them on the wire and says
/// what each one means; docs/OPERATIONS.md maps them to the kernel's.
public struct ZRAMStats: Sendable, Equatable {
    /// zram's disksize.
    public var diskSize: Int
    // mm_stat, in the kernel's order.
    public var origDataSize, comprDataSize, memUsedTotal, memLimit, memUsedMax: Int
    public var samePages, pagesCompacted, hugePages, hugePagesSince: Int
    // io_stat, in the kernel's order.
    public var failedReads, failedWrites, invalidIO, notifyFree: Int
    // Requests and bytes.
    public var reads, writes, discards, zeroes, bytesRead, bytesWritten: Int
}
