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

    public let count: Int
    private let shards: PerCPUShards

    public init(count: Int) {
        precondition(count > 0)
        self.count = count
        shards = PerCPUShards(bytesPerShard: count * MemoryLayout<Atomic<Int>>.stride) { shard in
            let counters = shard.bindMemory(to: Atomic<Int>.self, capacity: count)
            for index in 0..<count { (counters + index).initialize(to: Atomic(0)) }
        }
    }

    @inline(__always)
    private func counter(_ index: Int, in shard: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Atomic<Int>> {
        shard.assumingMemoryBound(to: Atomic<Int>.self) + index
    }

    /// Adds `delta` to counter `index` in the calling CPU's shard. A thread
    /// that migrates between reading its CPU and adding merely shares a line
    /// for a moment; the sum stays exact.
    @inline(__always)
    public func add(_ index: Int, _ delta: Int) {
        counter(index, in: shards.local).pointee.add(delta, ordering: .relaxed)
    }

    /// The sum of counter `index` over all shards.
    public func load(_ index: Int) -> Int {
        var total = 0
        for shard in 0..<shards.count { total &+= counter(index, in: shards[shard]).pointee.load(ordering: .relaxed) }
        return total
    }
}

/// One run of memory per CPU, each aligned to 128 bytes (a cache line plus
/// the adjacent-line prefetcher's pair) so that threads on different CPUs
/// never write the same line: the layout under ShardedCounters and ZSPool's
/// id caches. The owner binds and initialises each shard in `prepare`, and
/// keeps using only atomics or its own lock in it, since a thread may move
/// to another CPU between picking `local` and using it.
public struct PerCPUShards: ~Copyable {
    private static let alignment = 128
    /// Shards: `CurrentCPU.shardCount`.
    public let count: Int
    private let stride: Int
    private let storage: UnsafeMutableRawPointer

    public init(bytesPerShard: Int, prepare: (UnsafeMutableRawPointer) -> Void) {
        count = CurrentCPU.shardCount
        stride = (max(1, bytesPerShard) + Self.alignment - 1) / Self.alignment * Self.alignment
        storage = .allocate(byteCount: stride * count, alignment: Self.alignment)
        for index in 0..<count { prepare(storage + index * stride) }
    }

    deinit {
        storage.deallocate()
    }

    @inline(__always)
    public subscript(index: Int) -> UnsafeMutableRawPointer { storage + index * stride }

    /// The calling CPU's shard.
    @inline(__always)
    public var local: UnsafeMutableRawPointer { self[CurrentCPU.index & (count - 1)] }
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
