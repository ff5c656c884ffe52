#if canImport(Glibc)
import Glibc
#endif
internal import CLinux
import Synchronization

/// A fixed set of counters that many threads bump at once, split in one
/// shard per CPU so that threads on different CPUs never write the same
/// cache line (the kernel's percpu counters). A load sums the shards: exact
/// once writers stop, and during writes a sum of values each of which was
/// true at some moment, as any statistics read is.
public final class ShardedCounters: @unchecked Sendable {
    // @unchecked: the storage is only reached through Atomic operations.

    /// 128 bytes: one cache line plus the adjacent-line prefetcher's pair.
    private static let shardAlignment = 128
    public let count: Int
    private let shardCount: Int
    private let shardStride: Int
    private let storage: UnsafeMutableRawPointer

    public init(count: Int) {
        precondition(count > 0)
        self.count = count
        shardCount = CurrentCPU.shardCount
        let bytes = count * MemoryLayout<Atomic<Int>>.stride
        shardStride = (bytes + Self.shardAlignment - 1) / Self.shardAlignment * Self.shardAlignment
        storage = .allocate(byteCount: shardStride * shardCount, alignment: Self.shardAlignment)
        for shard in 0..<shardCount {
            let counters = (storage + shard * shardStride).bindMemory(to: Atomic<Int>.self, capacity: count)
            for index in 0..<count { (counters + index).initialize(to: Atomic(0)) }
        }
    }

    deinit {
        storage.deallocate()
    }

    @inline(__always)
    private func counter(_ index: Int, shard: Int) -> UnsafeMutablePointer<Atomic<Int>> {
        (storage + shard * shardStride).assumingMemoryBound(to: Atomic<Int>.self) + index
    }

    /// Adds `delta` to counter `index` in the calling CPU's shard. A thread
    /// that migrates between reading its CPU and adding merely shares a line
    /// for a moment; the sum stays exact.
    @inline(__always)
    public func add(_ index: Int, _ delta: Int) {
        let shard = CurrentCPU.index & (shardCount - 1)
        counter(index, shard: shard).pointee.add(delta, ordering: .relaxed)
    }

    /// The sum of counter `index` over all shards.
    public func load(_ index: Int) -> Int {
        var total = 0
        for shard in 0..<shardCount { total &+= counter(index, shard: shard).pointee.load(ordering: .relaxed) }
        return total
    }
}

/// The CPU a thread runs on, for data split per CPU (counters, id caches).
public enum CurrentCPU {
    /// The CPU the calling thread runs on now (sched_getcpu, read from the
    /// rseq area glibc registers, so no system call); 0 if the kernel will
    /// not say. The thread may move at any moment, so this picks a shard,
    /// never an owner: per-CPU data is still locked or atomic.
    @inline(__always)
    public static var index: Int { Int(max(0, clinux_current_cpu())) }

    /// Restricts the calling thread to `cpu` and returns whether it now runs
    /// there: for tests and benchmarks that need per-CPU data on a known CPU.
    public static func pinCallingThread(to cpu: Int) -> Bool {
        clinux_pin_to_cpu(Int32(cpu)) == 0 && index == cpu
    }

    /// The CPUs the calling thread may run on (its affinity mask, which a
    /// cpuset or taskset narrows), lowest first.
    public static func allowedCPUs() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let count = cpus.withUnsafeMutableBufferPointer { clinux_allowed_cpus($0.baseAddress, Int32($0.count)) }
        return cpus.prefix(max(0, Int(count))).map(Int.init)
    }

    /// A power of two at least the number of configured CPUs, so that
    /// `index & (shardCount - 1)` picks a shard, one per CPU.
    public static let shardCount: Int = {
        let cpus = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_CONF))))
        var shards = 1
        while shards < cpus { shards <<= 1 }
        return shards
    }()
}
