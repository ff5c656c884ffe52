import Synchronization
import SystemPackage
import ZNBDSystem

/// Ids for a table stored in fixed-size chunks made on first use: new ids
/// are handed out in order, freed ids are reused last-freed first, so the
/// touched part of the table tracks the peak number of live entries.
///
/// Used under its owner's lock; `allocate` calls `makeChunk` for the chunk
/// an id opens before that id is returned, so nobody can hold an id whose
/// chunk does not exist yet (and hands out nothing when it fails). Ids out
/// of here may be live or waiting in a per-CPU cache (`IdCaches`), which
/// counts the live ones.
struct ChunkedIdAllocator {
    let chunkShift: Int
    let chunkCount: Int
    private var freeIds: [UInt32] = []
    private(set) var nextUnusedId: UInt32 = 0

    init(chunkShift: Int, chunkCount: Int) {
        self.chunkShift = chunkShift
        self.chunkCount = chunkCount
    }

    /// A free id, or nil when every chunk is used up.
    mutating func allocate(makeChunk: (Int) -> Bool) -> UInt32? {
        if let id = freeIds.popLast() { return id }
        let id = nextUnusedId
        let chunk = Int(id) >> chunkShift
        guard chunk < chunkCount else { return nil }
        if Int(id) & ((1 << chunkShift) - 1) == 0, !makeChunk(chunk) { return nil }
        nextUnusedId += 1
        return id
    }

    mutating func release(_ id: UInt32) {
        freeIds.append(id)
    }

    /// The allocator of a table resumed with `live` ids in use (ascending)
    /// and `usedIds` ids ever handed out (at least one past the highest
    /// live one): the others below `usedIds` are free, lowest reused first.
    init(chunkShift: Int, chunkCount: Int, resumingLive live: [UInt32], usedIds: Int) {
        self.init(chunkShift: chunkShift, chunkCount: chunkCount)
        precondition(live.last.map { Int($0) < usedIds } ?? true, "a live id past the ids handed out")
        nextUnusedId = UInt32(usedIds)
        var next = live.count - 1
        for id in stride(from: usedIds - 1, through: 0, by: -1) {
            if next >= 0 && Int(live[next]) == id {
                next -= 1
            } else {
                freeIds.append(UInt32(id))
            }
        }
        // Appended from the highest down: popLast hands out the lowest first.
    }

    /// Chunks made so far.
    var chunksMade: Int { (Int(nextUnusedId) + (1 << chunkShift) - 1) >> chunkShift }
}

/// The storage both id-indexed tables of the pool (handles, zspage records)
/// share: one region (MemoryRegion) cut into chunks, chunk i at byte
/// `i × chunkBytes`, made on first use, and the ids that index them.
///
/// Chunk i's place is arithmetic, not an address in a directory, so a
/// region that outlives the process (the handle table's) means the same to
/// the next one. A chunk is made by preparing its range of the region (for
/// a file: reserving it, which may fail with ENOSPC) and, when given,
/// `prepareChunk`, which fills its non-zero defaults; its pages cost memory
/// once an entry in them is touched (anonymous) or once made (a file), so a
/// table costs what its live ids have used, not its capacity. A table whose
/// entries point to heap blocks (`holdsHeapPointers`: the zspage records'
/// lists) is anonymous and a LeakSanitizer root.
///
/// Chunks are made in order, as ids are handed out in order, and published
/// by a releasing store of how many there are, under `ids`' lock, before
/// any id in them is handed out; lookups of an id that may be bogus load it
/// with acquiring ordering, so a thread that reaches a chunk also sees its
/// initialised contents, whichever thread made it (ids from untrusted
/// handles reach `existingChunk` with no other synchronisation). A chunk,
/// once made, stays until the table goes. An owner whose entries point
/// elsewhere frees that in its own deinit (`forEachChunk`).
///
/// Ids pass through per-CPU caches (`IdCaches`) on their way in and out, so
/// the threads of one busy size class, which take an id under the class
/// lock for every object, do not also meet on `ids` every time.
final class ChunkedTable: @unchecked Sendable {
    // @unchecked: the region is immutable; `chunksMade` is an atomic, written
    // under `ids`; `caches` is reached only under its own per-CPU locks.

    let chunkShift: Int
    let chunkBytes: Int
    let chunkCount: Int
    private let region: MemoryRegion
    /// Chunks made so far: chunk i exists when i < chunksMade.
    private let chunksMade = Atomic<Int>(0)
    private let prepareChunk: ((UnsafeMutableRawPointer) -> Void)?
    private let ids: Locked<ChunkedIdAllocator>
    private let caches = IdCaches()

    /// Room for `capacity` entries in chunks of `1 << chunkShift` entries,
    /// `chunkBytes` each (whole pages), in the region `name` of `placement`.
    init(
        capacity: Int, chunkShift: Int, chunkBytes: Int, placement: RegionPlacement, name: String,
        holdsHeapPointers: Bool = false, prepareChunk: ((UnsafeMutableRawPointer) -> Void)? = nil
    ) throws(Errno) {
        precondition(chunkBytes % pageSize == 0, "a chunk is whole pages")
        self.chunkShift = chunkShift
        self.chunkBytes = chunkBytes
        self.prepareChunk = prepareChunk
        chunkCount = max(1, (capacity + (1 << chunkShift) - 1) >> chunkShift)
        region = try placement.region(name, byteCount: chunkCount * chunkBytes, holdsHeapPointers: holdsHeapPointers)
        ids = Locked(ChunkedIdAllocator(chunkShift: chunkShift, chunkCount: chunkCount), level: .idAllocator)
    }

    /// The chunk holding a live id's entry.
    @inline(__always)
    func chunk(containing id: UInt32) -> UnsafeMutableRawPointer {
        let index = Int(id) >> chunkShift
        assert(index < chunksMade.load(ordering: .relaxed), "id \(id) is in no chunk made so far")
        return region.base + index &* chunkBytes
    }

    /// The chunk that would hold `id`, or nil when it was never made (or is
    /// past the table): for ids that come from outside and may be bogus.
    func existingChunk(containing id: UInt32) -> UnsafeMutableRawPointer? {
        let index = Int(id) >> chunkShift
        return index < chunksMade.load(ordering: .acquiring) ? region.base + index * chunkBytes : nil
    }

    /// A free id, from this CPU's cache, which takes a batch from the
    /// shared allocator when it runs dry (making chunks as ids open them).
    /// Nil when the table is full, or when the kernel refuses a chunk's
    /// mapping.
    func allocateId() -> UInt32? {
        caches.allocate(refill: takeShared, giveBack: giveShared)
    }

    func releaseId(_ id: UInt32) {
        caches.release(id, spill: giveShared)
    }

    /// Moves up to `count` ids from the shared allocator to `buffer`, the one
    /// to hand out first last. Returns how many.
    private func takeShared(into buffer: UnsafeMutablePointer<UInt32>, count: Int) -> Int {
        ids.withLock { allocator in
            var taken = 0
            while taken < count {
                let id = allocator.allocate { chunk in
                    assert(chunk == chunksMade.load(ordering: .relaxed), "chunks are made in order")
                    let start = region.base + chunk * chunkBytes
                    guard (try? region.prepare(offset: chunk * chunkBytes, count: chunkBytes)) != nil else {
                        return false
                    }
                    prepareChunk?(start)
                    chunksMade.store(chunk + 1, ordering: .releasing)
                    return true
                }
                guard let id else { break }
                (buffer + taken).initialize(to: id)
                taken += 1
            }
            // The allocator's first choice is handed out first: reverse.
            var filled = UnsafeMutableBufferPointer(start: buffer, count: taken)
            filled.reverse()
            return taken
        }
    }

    /// Gives `buffer`'s ids back to the shared allocator, the last one to be
    /// reused first.
    private func giveShared(_ buffer: UnsafeBufferPointer<UInt32>) {
        ids.withLock { allocator in
            for id in buffer { allocator.release(id) }
        }
    }

    /// Makes the first `chunks` chunks again, for a resumed table: each is
    /// prepared (a region a previous process wrote keeps its contents,
    /// `keepingContents`; else `prepareChunk` lays each out), and the rest
    /// of the region is released. Runs before any other use of the table,
    /// then `resumeIds`.
    func resumeChunks(_ chunks: Int, keepingContents: Bool) throws(Errno) {
        precondition(chunks <= chunkCount, "more chunks than the table holds")
        if chunks > 0 { try region.prepare(offset: 0, count: chunks * chunkBytes) }
        if !keepingContents, let prepareChunk {
            for chunk in 0..<chunks { prepareChunk(region.base + chunk * chunkBytes) }
        }
        if chunks < chunkCount {
            region.release(offset: chunks * chunkBytes, count: (chunkCount - chunks) * chunkBytes)
        }
        chunksMade.store(chunks, ordering: .releasing)
    }

    /// The ids of a resumed table: `live` (ascending) are in use, the others
    /// below `usedIds` are free.
    func resumeIds(live: [UInt32], usedIds: Int) {
        precondition(usedIds <= chunksMade.load(ordering: .relaxed) << chunkShift, "resumed ids past the chunks made")
        ids.withLock { allocator in
            allocator = ChunkedIdAllocator(
                chunkShift: chunkShift, chunkCount: chunkCount, resumingLive: live, usedIds: usedIds)
        }
        caches.addLive(live.count)
    }

    /// Whether the region is a file an earlier process made.
    var isResumable: Bool { region.isPersistent && !region.isNew }

    /// What a previous process wrote of the region (MemoryRegion), nil for
    /// a region that cannot have a past.
    func writtenRanges() throws(Errno) -> [Range<Int>]? { try region.writtenRanges() }

    /// Live ids (handed out and not released; none of them in a cache), and
    /// the bytes of the chunks made. Exact once callers stop: the pool calls
    /// it under every class lock, and takes and releases ids only under a
    /// class lock.
    func usage() -> (live: Int, tableBytes: Int) {
        (caches.live, chunksMade.load(ordering: .acquiring) * chunkBytes)
    }

    /// Calls `body` with every chunk made, for the owner's deinit.
    func forEachChunk(_ body: (UnsafeMutableRawPointer) -> Void) {
        for index in 0..<chunksMade.load(ordering: .acquiring) { body(region.base + index * chunkBytes) }
    }
}

/// Free ids kept per CPU in front of a table's shared allocator, as the
/// kernel's per-cpu page lists sit in front of its buddy allocator. A
/// thread uses the cache of the CPU it runs on, under that cache's bit spin
/// lock, held only for a few loads and stores: the shared allocator (a
/// mutex, sometimes a new chunk's mapping) is called with no cache lock
/// held. Two threads meet on one cache only when one was preempted or moved
/// between reading its CPU and letting go. An empty cache takes `batch` ids
/// at once, a full one gives the `batch` it has held longest back, so ids
/// still come back roughly last-freed first and a table's touched part keeps
/// tracking its peak.
///
/// The cache also counts the live ids of its CPU (a thread may take an id on
/// one CPU and release it on another, so one count can go negative; the sum
/// is exact).
final class IdCaches: @unchecked Sendable {
    // @unchecked: a shard's count and ids are touched only under its lock
    // word; its live count is an atomic.

    static let capacity = 32
    /// Half the capacity: a full cache gives back its older half.
    static let batch = capacity / 2

    /// One cache (a per-CPU shard): lock word, live count, count of ids
    /// held, then the ids.
    struct Shard {
        static let liveOffset = 8
        static let countOffset = 16
        static let idsOffset = 24
        static let bytes = idsOffset + IdCaches.capacity * MemoryLayout<UInt32>.stride

        let base: UnsafeMutableRawPointer

        var lock: BitSpinLock {
            BitSpinLock(word: base.assumingMemoryBound(to: Atomic<UInt64>.self), bit: 1, level: .idCache)
        }
        var live: UnsafeMutablePointer<Atomic<Int>> {
            (base + Self.liveOffset).assumingMemoryBound(to: Atomic<Int>.self)
        }
        var count: Int {
            get { base.load(fromByteOffset: Self.countOffset, as: Int.self) }
            nonmutating set { base.storeBytes(of: newValue, toByteOffset: Self.countOffset, as: Int.self) }
        }
        var ids: UnsafeMutablePointer<UInt32> { (base + Self.idsOffset).assumingMemoryBound(to: UInt32.self) }

        /// Binds and zeroes a fresh shard.
        static func prepare(_ base: UnsafeMutableRawPointer) {
            base.bindMemory(to: Atomic<UInt64>.self, capacity: 1).initialize(to: Atomic(0))
            (base + liveOffset).bindMemory(to: Atomic<Int>.self, capacity: 1).initialize(to: Atomic(0))
            base.storeBytes(of: 0, toByteOffset: countOffset, as: Int.self)
            _ = (base + idsOffset).bindMemory(to: UInt32.self, capacity: IdCaches.capacity)
        }

        /// Takes the newest id held, counting it live. Caller holds the lock.
        func pop() -> UInt32? {
            guard count > 0 else { return nil }
            count -= 1
            live.pointee.add(1, ordering: .relaxed)
            return ids[count]
        }
    }

    private let shards = PerCPUShards(bytesPerShard: Shard.bytes, prepare: Shard.prepare)

    private var local: Shard { Shard(base: shards.local) }

    /// An id from this CPU's cache. An empty cache is refilled by
    /// `refill(buffer, batch)`, which stores up to `batch` ids (the first to
    /// hand out last) and returns how many; ids the cache cannot keep (it
    /// was filled meanwhile) go to `giveBack`. Both run with no cache lock
    /// held. Nil when the shared allocator and every cache are out of ids
    /// (near that point, an id a thread moves between two caches while this
    /// looks can be missed: the table is then all but full).
    @inline(__always)
    func allocate(
        refill: (UnsafeMutablePointer<UInt32>, Int) -> Int, giveBack: (UnsafeBufferPointer<UInt32>) -> Void
    ) -> UInt32? {
        let cache = local
        cache.lock.lock()
        let cached = cache.pop()
        cache.lock.unlock()
        if let cached { return cached }
        return withUnsafeTemporaryAllocation(of: UInt32.self, capacity: Self.batch) { buffer in
            let base = buffer.baseAddress.unsafelyUnwrapped
            let taken = refill(base, Self.batch)
            guard taken > 0 else { return takeFromAnyCache() }
            // Keep what fits in this CPU's cache now (another thread may have
            // filled it meanwhile); hand out the last one.
            let cache = local
            cache.lock.lock()
            let kept = min(taken - 1, Self.capacity - cache.count)
            (cache.ids + cache.count).update(from: base + (taken - 1 - kept), count: kept)
            cache.count += kept
            cache.live.pointee.add(1, ordering: .relaxed)
            cache.lock.unlock()
            if taken - 1 > kept { giveBack(UnsafeBufferPointer(start: base, count: taken - 1 - kept)) }
            return base[taken - 1]
        }
    }

    /// The shared allocator is exhausted: the last free ids, if any, wait in
    /// other CPUs' caches. Takes one lock at a time, so two threads that both
    /// get here cannot wait for each other.
    private func takeFromAnyCache() -> UInt32? {
        for index in 0..<shards.count {
            let cache = Shard(base: shards[index])
            cache.lock.lock()
            let id = cache.pop()
            cache.lock.unlock()
            if let id { return id }
        }
        return nil
    }

    /// Puts `id` in this CPU's cache. A full cache first gives its oldest
    /// `batch` ids to `spill`, which runs with no cache lock held.
    @inline(__always)
    func release(_ id: UInt32, spill: (UnsafeBufferPointer<UInt32>) -> Void) {
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: Self.batch) { buffer in
            let base = buffer.baseAddress.unsafelyUnwrapped
            let cache = local
            cache.lock.lock()
            var spilled = 0
            if cache.count == Self.capacity {
                base.initialize(from: cache.ids, count: Self.batch)
                cache.ids.update(from: cache.ids + Self.batch, count: Self.capacity - Self.batch)
                cache.count -= Self.batch
                spilled = Self.batch
            }
            cache.ids[cache.count] = id
            cache.count += 1
            cache.live.pointee.subtract(1, ordering: .relaxed)
            cache.lock.unlock()
            if spilled > 0 { spill(UnsafeBufferPointer(start: base, count: spilled)) }
        }
    }

    /// Counts `count` more ids live, as handed out by a resumed table.
    func addLive(_ count: Int) {
        local.live.pointee.add(count, ordering: .relaxed)
    }

    /// Ids handed out and not released, over all CPUs.
    var live: Int {
        var total = 0
        for index in 0..<shards.count { total += Shard(base: shards[index]).live.pointee.load(ordering: .relaxed) }
        return total
    }
}
