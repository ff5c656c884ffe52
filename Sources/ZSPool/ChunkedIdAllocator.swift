/// Ids for a table stored in fixed-size chunks made on first use: new ids
/// are handed out in order, freed ids are reused last-freed first, so the
/// touched part of the table tracks the peak number of live entries.
///
/// Used under its owner's lock; `allocate` calls `makeChunk` for the chunk
/// an id opens before that id is returned, so nobody can hold an id whose
/// chunk does not exist yet.
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
    mutating func allocate(makeChunk: (Int) -> Void) -> UInt32? {
        if let id = freeIds.popLast() {
            live += 1
            return id
        }
        let id = nextUnusedId
        let chunk = Int(id) >> chunkShift
        guard chunk < chunkCount else { return nil }
        if Int(id) & ((1 << chunkShift) - 1) == 0 { makeChunk(chunk) }
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
