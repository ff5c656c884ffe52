// ZNBDSystem: the few unsafe primitives and operating-system calls the rest
// of znbd is built on, in one place, in the manner of swift-system.
//
// THE MAP
//
//   pageSize            the 4 KiB page: the device's unit, the codec's unit,
//                       the pool's frame. Defined here and nowhere else.
//   AnonymousMapping    memory owned straight from the kernel (mmap), given
//                       back by range (MADV_DONTNEED), unmapped in deinit.
//   BitSpinLock,        the spin locks of the data path (a bit of an atomic
//   ReaderWriterSpinLock  word; a reader/writer counter) and `backOff`, the
//                       one waiting policy they share.
//   Locked              a pthread mutex around a value, for the pool's
//                       sleeping locks.
//   LockLevel,          the one order of the data-path locks, and a small
//   LockOrder           lockdep that traps on a wrong order in checked builds.
//   PerCPUShards,       memory in one shard per CPU, and the CPU a thread
//   CurrentCPU          runs on (which shard to use).
//   ShardedCounters     per-CPU statistics counters, on PerCPUShards.
//   MemoryPressureTrigger  the kernel's memory-pressure signal (PSI), and
//   Sleeper, BackgroundThread  the wait and the named thread of the
//                       maintenance loop.
//   WorkerThreads       named threads that run jobs from one FIFO queue: the
//                       NBD server's request workers.
//   residentMemoryBytes the process's RSS (/proc/self/statm); HeapPolicy,
//                       how malloc gives memory back.
//   ProcessProtection   what keeps the daemon serving as its machine's swap:
//                       I/O flusher, memory lock, OOM score.
//
// Everything that touches raw memory or a libc call outside the pool's own
// frame bookkeeping lives here, with its invariants beside it.

/// The size of one page: the unit the device stores, the codec compresses
/// and the pool's arena hands out (a frame).
public let pageSize = 4096

/// log2 of `pageSize`.
public let pageShift = 12
