import Synchronization
import ZNBDSystem

/// Ids for a table stored in fixed-size chunks made on first use: new ids
/// are handed out in order, freed ids are reused last-freed first, so the
/// touched part of the table tracks the peak number of live entries.
///
/// Used under its owner's lock; `allocate` calls `makeChunk` for the chunk
/// an id opens before that id is returned, so nobody can hold an id whose
/// chunk does not exist yet (and hands out nothing when it fails).
struct ChunkedIdAllocator {
    let chunkShift: Int
    let chunkCount: Int
    private var freeIds: [UInt32] = []
    private(set) var nextUnusedId: UInt32 = 0
    private(set) var live = 0

    init(chunkShift: Int, chunkCount: Int) {
        self.chunkShift = chunkShift
        self.chunkCount = chunkCount
    }

    /// A free id, or nil when every chunk is used up.
    mutating func allocate(makeChunk: (Int) -> Bool) -> UInt32? {
        if let id = freeIds.popLast() {
            live += 1
            return id
        }
        let id = nextUnusedId
        let chunk = Int(id) >> chunkShift
        guard chunk < chunkCount else { return nil }
        if Int(id) & ((1 << chunkShift) - 1) == 0, !makeChunk(chunk) { return nil }
        nextUnusedId += 1
        live += 1
        return id
    }

    mutating func release(_ id: UInt32) {
        freeIds.append(id)
        live -= 1
    }

    /// Chunks made so far.
    var chunksMade: Int { (Int(nextUnusedId) + (1 << chunkShift) - 1) >> chunkShift }
}

/// The storage both id-indexed tables of the pool (handles, zspage records)
/// share: a fixed directory of chunk pointers, chunks made on first use, and
/// the ids that index them.
///
/// Each chunk is an anonymous mapping of `chunkBytes`, owned here: its pages
/// cost memory only once an entry in them is touched, so a table whose
/// empty entry is all-zero bytes (the handle table) costs what its live ids
/// have used, not whole chunks. `prepareChunk`, when given, fills a new
/// chunk's non-zero defaults before any id in it is handed out.
///
/// The directory never moves and a chunk, once published, never moves or
/// goes away before the table: an entry reached through an id stays valid.
/// Chunks are published under `ids`' lock, with a releasing store, before
/// any id in them is handed out; lookups load the entry with acquiring
/// ordering, so a thread that reaches a chunk through the directory also
/// sees the chunk's initialised contents, whichever thread made it (ids from
/// untrusted handles reach `existingChunk` with no other synchronisation).
/// An owner whose entries point elsewhere frees that in its own deinit
/// (`forEachChunk`); the chunks themselves are unmapped here.
final class ChunkedTable: @unchecked Sendable {
    // @unchecked: `directory` entries are atomics, written once (under
    // `ids`) and only read after that; the mappings live in `ids`.

    let chunkShift: Int
    let chunkBytes: Int
    let directorySize: Int
    /// Chunk addresses, 0 for a chunk not made yet.
    private let directory: UnsafeMutablePointer<Atomic<UInt>>
    private let prepareChunk: ((UnsafeMutableRawPointer) -> Void)?
    private let ids: Locked<Ids>

    private struct Ids {
        var allocator: ChunkedIdAllocator
        var chunks: [ChunkMapping] = []
    }

    /// Keeps a chunk's mapping alive until the table goes.
    private final class ChunkMapping {
        let mapping: AnonymousMapping
        init(_ mapping: consuming AnonymousMapping) { self.mapping = mapping }
    }

    /// Room for `capacity` entries in chunks of `1 << chunkShift` entries,
    /// `chunkBytes` each.
    init(capacity: Int, chunkShift: Int, chunkBytes: Int, prepareChunk: ((UnsafeMutableRawPointer) -> Void)? = nil) {
        self.chunkShift = chunkShift
        self.chunkBytes = chunkBytes
        self.prepareChunk = prepareChunk
        directorySize = max(1, (capacity + (1 << chunkShift) - 1) >> chunkShift)
        directory = .allocate(capacity: directorySize)
        for index in 0..<directorySize { (directory + index).initialize(to: Atomic(0)) }
        ids = Locked(Ids(allocator: ChunkedIdAllocator(chunkShift: chunkShift, chunkCount: directorySize)), level: .idAllocator)
    }

    deinit {
        directory.deinitialize(count: directorySize)
        directory.deallocate()
    }

    @inline(__always)
    private func loadChunk(_ index: Int) -> UnsafeMutableRawPointer? {
        UnsafeMutableRawPointer(bitPattern: directory[index].load(ordering: .acquiring))
    }

    /// The chunk holding a live id's entry.
    @inline(__always)
    func chunk(containing id: UInt32) -> UnsafeMutableRawPointer {
        let index = Int(id) >> chunkShift
        assert(index < directorySize && loadChunk(index) != nil, "id \(id) is in no chunk made so far")
        return loadChunk(index).unsafelyUnwrapped
    }

    /// The chunk that would hold `id`, or nil when it was never made (or is
    /// past the table): for ids that come from outside and may be bogus.
    func existingChunk(containing id: UInt32) -> UnsafeMutableRawPointer? {
        let index = Int(id) >> chunkShift
        return index < directorySize ? loadChunk(index) : nil
    }

    /// A free id, making its chunk first when it opens one. Nil when the
    /// table is full, or when the kernel refuses the chunk's mapping.
    func allocateId() -> UInt32? {
        ids.withLock { ids in
            var made: ChunkMapping?
            let id = ids.allocator.allocate { chunk in
                guard let mapping = try? AnonymousMapping(byteCount: chunkBytes) else { return false }
                prepareChunk?(mapping.base)
                directory[chunk].store(UInt(bitPattern: mapping.base), ordering: .releasing)
                made = ChunkMapping(mapping)
                return true
            }
            if let made { ids.chunks.append(made) }
            return id
        }
    }

    func releaseId(_ id: UInt32) {
        ids.withLock { $0.allocator.release(id) }
    }

    /// Live ids, and the bytes of the directory plus the chunks made.
    func usage() -> (live: Int, tableBytes: Int) {
        ids.withLock {
            ($0.allocator.live,
             $0.allocator.chunksMade * chunkBytes + directorySize * MemoryLayout<UnsafeMutableRawPointer>.stride)
        }
    }

    /// Calls `body` with every chunk made, for the owner's deinit.
    func forEachChunk(_ body: (UnsafeMutableRawPointer) -> Void) {
        for index in 0..<directorySize {
            if let chunk = loadChunk(index) { body(chunk) }
        }
    }
}
