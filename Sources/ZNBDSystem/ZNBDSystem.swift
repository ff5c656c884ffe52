// ZNBDSystem: the few unsafe primitives and operating-system calls the rest
// of znbd is built on, in the manner of swift-system. It knows nothing of
// the modules above it: they declare their own lock levels, threads and
// policies on top of what is here.
//
// THE MAP
//
//   pageSize            the 4 KiB page: the device's unit, the codec's unit,
//                       the pool's frame. Defined here and nowhere else.
//   AnonymousMapping    memory owned straight from the kernel (mmap), given
//                       back by range (MADV_DONTNEED), unmapped in deinit.
//   FileMapping         a file mapped MAP_SHARED (on a tmpfs: memory that
//                       outlives the process), reserved before first touch
//                       (fallocate: ENOSPC, never SIGBUS), given back by
//                       punching holes.
//   MemoryRegion,       either of the two behind one contract (prepare
//   RegionPlacement     before touch, release, offsets only), and where a
//                       device's regions come from: anonymous memory or
//                       the files of a state directory.
//   BitSpinLock,        the spin locks of the data path (a bit of an atomic
//   ReaderWriterSpinLock  word; a reader/writer counter) and `backOff`, the
//                       one waiting policy they share.
//   Locked              a pthread mutex around a value, for the sleeping
//                       locks that take part in the lock order.
//   LockLevel,          how the data path's locks are ordered (the levels
//   LockOrder           themselves are declared by the modules that own the
//                       locks), and a small lockdep that traps on a wrong
//                       order in checked builds.
//   PerCPUShards,       memory in one shard per CPU, and the CPU a thread
//   CurrentCPU          runs on (which shard to use).
//   ShardedCounters     per-CPU statistics counters, on PerCPUShards.
//   MemoryPressureTrigger  the kernel's memory-pressure signal (PSI), and
//   Sleeper, BackgroundThread  a wait that poll(2) ends, and a named thread
//                       of its own (pthread), for loops that block.
//   residentMemoryBytes the process's RSS (/proc/self/statm); HeapPolicy,
//                       how malloc gives memory back.
//   ProcessControls     the system calls behind the daemon's protection as a
//                       swap device (I/O flusher, mlockall, OOM score);
//                       which to apply is znbd's ProcessProtection.
//
// RAW MEMORY: mappings are made, bound and given back here, and every spin
// lock is a view over an atomic word, with the invariants beside each. Two
// other places lay memory out themselves, each with its invariants beside
// it: ZSPool (its frames, zspage records, handle entries and id caches) and
// the two tables that index arrays mapped here (ZRAM's SlotTable,
// BlockDevice's MemoryBlockDevice).

/// The size of one page: the unit the device stores, the codec compresses
/// and the pool's arena hands out (a frame).
public let pageSize = 4096

/// log2 of `pageSize`.
public let pageShift = 12
