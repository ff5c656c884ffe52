import BlockDevice
import PageCodec
import Synchronization
import SystemPackage
import ZSPool
import ZNBDSystem

/// How a stored object holds its page.
enum PageEncoding: Equatable {
    /// The raw 4096 bytes (zram's huge page): no algorithm made it smaller
    /// than the pool's huge class.
    case raw
    /// A stream of this algorithm.
    case compressed(CompressionAlgorithm)
}

/// What one device page holds, decoded from its slot.
enum SlotContent: Equatable {
    /// Never written, or discarded. Reads as zeroes.
    case unallocated
    /// Every 8-byte word of the page equals `fill` (zero pages: fill 0).
    case sameFilled(fill: UInt64)
    /// A pool object of `length` bytes.
    case object(handle: UInt64, length: Int, encoding: PageEncoding)
}

/// One slot per 4 KiB page of the device, as zram's `zram->table`: 16
/// bytes each, one pair of words per page in one region.
///
///     byte 0   meta   (Atomic<UInt64>)
///         bits  0...12   object length in bytes (0...4096)
///         bit   16       SAME      same-filled page; no object
///         bit   17       OBJECT    `value` is a live pool handle
///         bit   18       HUGE      the object is the raw page
///         bit   19       IDLE      marked idle and not accessed since (zram's ZRAM_IDLE)
///         bit   20       WB        reserved: written back (ZRAM_WB)
///         bits 21...22   ALGORITHM the CompressionAlgorithm of a compressed object
///         bit   23       RECOMP    the recompression codec has had this data:
///                                  recompressed, or tried without gain
///                                  (zram's ZRAM_RECOMP and ZRAM_INCOMPRESSIBLE)
///         bit   31       LOCK      the slot lock
///         bits 32...63   ACCESSED  seconds since the table's creation at the
///                                  last read or write (zram's ac_time)
///     byte 8   value  (UInt64)  the pool handle, or the fill word of a
///                               same-filled page
///
/// The slot lock is a bit spin lock in `meta`, like zram's ZRAM_LOCK: taken
/// with an acquiring compare-exchange, dropped with a releasing clear of the
/// bit. Every read of `value` and every change of a slot happens under it,
/// so a reader never sees a half-installed page. Holders keep it for one
/// page's decompression at most, and waiters back off to sched_yield.
///
/// A new content is published with one 16-byte atomic store of the pair
/// (`lock cmpxchg16b`), never a word at a time: in a region that outlives
/// the process (docs/STATE-DESIGN.md), a SIGKILL between two stores would
/// leave a new handle under an old meta, and the next daemon would read
/// the handle's bits as a fill word. Changes of meta alone (IDLE, RECOMP,
/// ACCESSED) are single 8-byte stores. Readers holding the lock read the
/// words plainly: only a lock holder stores them.
///
/// The region is prepared (MemoryRegion: reserved, for a file) in pieces of
/// `slotsPerPiece` slots, the first time a page of the piece is written. A
/// piece not prepared holds only unallocated slots and is never touched,
/// not even read: on a tmpfs a read would allocate it. All-zero bits are an
/// unallocated, unlocked slot (zram's vzalloc'd table), so a fresh region
/// needs no initialisation.
final class SlotTable: @unchecked Sendable {
    // @unchecked: a slot's words are stored only while holding its LOCK bit,
    // whose acquire/release orders them between threads, or read without it
    // as atomics; `prepared` and `idleCount` are atomics; the region is
    // immutable.

    static let lengthMask: UInt64 = (1 << 13) - 1
    static let sameBit: UInt64 = 1 << 16
    static let objectBit: UInt64 = 1 << 17
    static let hugeBit: UInt64 = 1 << 18
    static let idleBit: UInt64 = 1 << 19
    static let algorithmShift: UInt64 = 21
    static let algorithmMask: UInt64 = 3 << algorithmShift
    static let recompressedBit: UInt64 = 1 << 23
    static let lockBit: UInt64 = 1 << 31
    static let accessShift: UInt64 = 32
    /// Every bit below ACCESSED.
    static let flagsMask: UInt64 = (1 << 32) - 1

    /// The region the slots live in (a file, in a state directory).
    static let regionName = "slots"
    /// Bytes of one slot, the pair (meta, value).
    static let slotBytes = 16
    /// Slots prepared together: 64 KiB of table, 16 MiB of device.
    static let slotsPerPiece = 4096

    let count: Int
    private let region: MemoryRegion
    private let slots: UnsafeMutableRawPointer
    /// One bit per piece, set once the piece is prepared (never cleared).
    private let prepared: UnsafeMutablePointer<Atomic<UInt64>>
    private let preparedWords: Int
    /// Slots with IDLE set; changed only by a holder of that slot's lock.
    private let idleCount = Atomic<Int>(0)
    /// When the table was made, in the clock of `now`: kept in the state's
    /// header, so that ACCESSED means the same to the next process.
    let timeBase: Int64

    /// A table of `count` slots in the region "slots" of `placement`, its
    /// clock started at `timeBase` (SlotTable.clock), by default now.
    init(count: Int, placement: RegionPlacement = .anonymous, timeBase: Int64 = SlotTable.clock()) throws(Errno) {
        self.count = count
        self.timeBase = timeBase
        region = try placement.region(Self.regionName, byteCount: count * Self.slotBytes)
        // Zero bits are a valid Atomic<UInt64>(0) and UInt64(0): binding the
        // fresh zero pages is their initialisation. The pair is bound as
        // words; the publishing store views it as a WordPair (`publish`).
        slots = UnsafeMutableRawPointer(region.bindZeroed(to: Atomic<UInt64>.self, count: count * 2))
        preparedWords = max(1, (count + Self.slotsPerPiece * 64 - 1) / (Self.slotsPerPiece * 64))
        prepared = .allocate(capacity: preparedWords)
        for word in 0..<preparedWords { (prepared + word).initialize(to: Atomic(0)) }
    }

    deinit {
        prepared.deinitialize(count: preparedWords)
        prepared.deallocate()
    }

    @inline(__always)
    private func metaWord(_ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (slots + index &* Self.slotBytes).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    @inline(__always)
    private func value(_ index: Int) -> UInt64 {
        slots.load(fromByteOffset: index &* Self.slotBytes &+ 8, as: UInt64.self)
    }

    // MARK: Preparation

    /// Whether page `index`'s slot may be touched. A slot that may not is
    /// unallocated.
    @inline(__always)
    func isPrepared(_ index: Int) -> Bool {
        assert(index >= 0 && index < count, "slot \(index) outside the table")
        let piece = index / Self.slotsPerPiece
        return prepared[piece >> 6].load(ordering: .acquiring) & (1 << UInt64(piece & 63)) != 0
    }

    /// Makes page `index`'s slot touchable, before a write. Throws ENOSPC
    /// when a file region's filesystem is full. Two threads may prepare the
    /// same piece at once: reserving a range twice is harmless.
    @inline(__always)
    func prepare(_ index: Int) throws(Errno) {
        if isPrepared(index) { return }
        let piece = index / Self.slotsPerPiece
        let first = piece * Self.slotsPerPiece * Self.slotBytes
        try region.prepare(offset: first, count: min(region.byteCount - first, Self.slotsPerPiece * Self.slotBytes))
        prepared[piece >> 6].bitwiseOr(1 << UInt64(piece & 63), ordering: .releasing)
    }

    /// Seconds since the table was made, the clock of the ACCESSED field
    /// (136 years before it wraps). Callers read it once per request.
    var now: UInt32 {
        UInt32(clamping: (Self.clock() - timeBase) / 1_000_000_000)
    }

    /// Nanoseconds of CLOCK_BOOTTIME: it runs on across a daemon's restart
    /// and through a suspend, and starts again only at a reboot (when the
    /// state in a tmpfs is gone too).
    static func clock() -> Int64 { bootTimeNanoseconds() }

    // MARK: Resuming a state

    /// Whether the slots are a file an earlier process wrote: then `resume`
    /// runs before any other use.
    var isResumable: Bool { region.isPersistent && !region.isNew }

    /// Resumes a table an earlier process wrote: each piece with a written
    /// slot is prepared again, the others are released (what was reserved
    /// and never written goes back); IDLE is counted, and `body` sees every
    /// slot that holds something. A slot that cannot be read (an algorithm
    /// this build does not know, a length past a page) is refused as
    /// damage. Nothing is stored: the lock bits the dead process held are
    /// returned (slot indices), for `clearLocks` once the whole state is
    /// accepted. Runs before any other use of the table.
    func resume(_ body: (Int, SlotContent) -> Void) throws(PoolStateDamaged) -> [Int] {
        let pieceBytes = Self.slotsPerPiece * Self.slotBytes
        let pieceCount = (count + Self.slotsPerPiece - 1) / Self.slotsPerPiece
        var written = [Bool](repeating: false, count: pieceCount)
        do {
            for range in try region.writtenRanges() ?? [] {
                for piece in range.lowerBound
                    / pieceBytes..<min(pieceCount, (range.upperBound + pieceBytes - 1) / pieceBytes)
                {
                    written[piece] = true
                }
            }
        } catch {
            throw PoolStateDamaged(reading: "the slot table", error)
        }
        var locked: [Int] = []
        var releaseStart: Int?
        for piece in 0...pieceCount {
            let keep = piece < pieceCount && written[piece]
            if keep || piece == pieceCount, let start = releaseStart {
                let offset = start * pieceBytes
                region.release(offset: offset, count: min(region.byteCount, piece * pieceBytes) - offset)
                releaseStart = nil
            }
            guard piece < pieceCount else { break }
            guard keep else {
                if releaseStart == nil { releaseStart = piece }
                continue
            }
            do {
                try prepare(piece * Self.slotsPerPiece)
            } catch {
                throw PoolStateDamaged(reading: "the slot table", error)
            }
            for index in piece * Self.slotsPerPiece..<min(count, (piece + 1) * Self.slotsPerPiece) {
                let word = meta(index)
                guard word != 0 else { continue }
                if word & Self.lockBit != 0 { locked.append(index) }
                if word & Self.objectBit != 0 {
                    let length = Int(word & Self.lengthMask)
                    let algorithm = UInt8((word & Self.algorithmMask) >> Self.algorithmShift)
                    guard length > 0, length <= pageSize,
                        word & Self.hugeBit != 0 || CompressionAlgorithm(rawValue: algorithm) != nil
                    else {
                        throw PoolStateDamaged(
                            "slot \(index) holds an object of \(length) bytes, algorithm \(algorithm): not one this build wrote"
                        )
                    }
                }
                if word & Self.idleBit != 0 { idleCount.wrappingAdd(1, ordering: .relaxed) }
                body(index, Self.content(meta: word, value: value(index)))
            }
        }
        return locked
    }

    /// Clears the lock bits `resume` found, which a dead process held.
    func clearLocks(_ indices: [Int]) {
        for index in indices {
            metaWord(index).pointee.store(meta(index) & ~Self.lockBit, ordering: .relaxed)
        }
    }

    // MARK: The slot lock

    @inline(__always)
    private func slotLock(_ index: Int) -> BitSpinLock {
        assert(isPrepared(index), "slot \(index) locked before its piece was prepared")
        return BitSpinLock(word: metaWord(index), bit: Self.lockBit, level: .slot)
    }

    /// Runs `body` holding slot `index`'s lock, waiting while another thread
    /// holds it. The slot is prepared (`prepare`, or `isPrepared` checked).
    @inline(__always)
    func withLock<Result, Failure: Error>(
        _ index: Int, _ body: () throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let lock = slotLock(index)
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    // MARK: Content (caller holds the slot lock)

    @inline(__always)
    private func meta(_ index: Int) -> UInt64 { metaWord(index).pointee.load(ordering: .relaxed) }

    @inline(__always)
    private func setMeta(_ index: Int, _ word: UInt64) {
        // The lock bit stays set: the holder clears it as it lets go.
        metaWord(index).pointee.store(word | Self.lockBit, ordering: .relaxed)
    }

    /// Stores meta and value in one 16-byte atomic store, the lock bit kept
    /// set. Releasing: whatever the holder wrote before (the object the
    /// handle names) is stored first, in memory and for the compiler, so a
    /// process killed at any instant leaves either the old pair or the new
    /// one, and the new one only over a complete object.
    @inline(__always)
    private func publish(_ index: Int, meta word: UInt64, value: UInt64) {
        (slots + index &* Self.slotBytes).assumingMemoryBound(to: Atomic<WordPair>.self).pointee.store(
            WordPair(first: UInt(word | Self.lockBit), second: UInt(value)), ordering: .releasing)
    }

    func content(_ index: Int) -> SlotContent {
        Self.content(meta: meta(index), value: value(index))
    }

    private static func content(meta word: UInt64, value: UInt64) -> SlotContent {
        if word & objectBit != 0 {
            let encoding: PageEncoding =
                word & hugeBit != 0
                ? .raw : .compressed(CompressionAlgorithm(rawValue: UInt8((word & algorithmMask) >> algorithmShift))!)
            return .object(handle: value, length: Int(word & lengthMask), encoding: encoding)
        }
        if word & sameBit != 0 { return .sameFilled(fill: value) }
        return .unallocated
    }

    /// Replaces the slot's content with newly written data, accessed at
    /// `now`: not idle, not yet seen by the recompression codec.
    func setContent(_ index: Int, _ content: SlotContent, now: UInt32) {
        let old = meta(index)
        if old & Self.idleBit != 0 { idleCount.wrappingSubtract(1, ordering: .relaxed) }
        let accessed = content == .unallocated ? 0 : UInt64(now) << Self.accessShift
        let (bits, value) = Self.encode(content)
        publish(index, meta: bits | accessed, value: value)
    }

    /// Replaces the content with the same data in a new encoding (by the
    /// recompression codec), keeping IDLE and ACCESSED and setting RECOMP.
    func setRecompressedContent(_ index: Int, _ content: SlotContent) {
        let kept = meta(index) & (Self.idleBit | ~Self.flagsMask)
        let (bits, value) = Self.encode(content)
        publish(index, meta: bits | kept | Self.recompressedBit, value: value)
    }

    /// Records that the recompression codec could not make this data smaller.
    func markRecompressionTried(_ index: Int) {
        setMeta(index, meta(index) | Self.recompressedBit)
    }

    /// `content` as meta bits (no lock, IDLE, RECOMP or ACCESSED) and value.
    private static func encode(_ content: SlotContent) -> (meta: UInt64, value: UInt64) {
        switch content {
        case .unallocated:
            return (0, 0)
        case .sameFilled(let fill):
            return (sameBit, fill)
        case .object(let handle, let length, let encoding):
            let bits = objectBit | UInt64(length) & lengthMask
            switch encoding {
            case .raw: return (bits | hugeBit, handle)
            case .compressed(let algorithm): return (bits | UInt64(algorithm.rawValue) << algorithmShift, handle)
            }
        }
    }

    /// A read of the page at `now`: clears IDLE and moves ACCESSED.
    @inline(__always)
    func touch(_ index: Int, now: UInt32) {
        let word = meta(index)
        let touched = word & ~Self.idleBit & Self.flagsMask | UInt64(now) << Self.accessShift
        guard touched != word, word & (Self.objectBit | Self.sameBit) != 0 else { return }
        if word & Self.idleBit != 0 { idleCount.wrappingSubtract(1, ordering: .relaxed) }
        setMeta(index, touched)
    }

    /// Marks a stored object idle when it was last accessed at or before
    /// `accessedBy` (zram's `idle` attribute; same-filled pages have no
    /// object to recompress and are left alone). Returns whether it was
    /// newly marked.
    func markIdle(_ index: Int, accessedBy: UInt32) -> Bool {
        let word = meta(index)
        guard word & Self.objectBit != 0, word & Self.idleBit == 0,
            UInt32(truncatingIfNeeded: word >> Self.accessShift) <= accessedBy
        else { return false }
        idleCount.wrappingAdd(1, ordering: .relaxed)
        setMeta(index, word | Self.idleBit)
        return true
    }

    /// Slots marked idle and not accessed since.
    var idlePages: Int { idleCount.load(ordering: .relaxed) }

    // MARK: Peeks (no lock: hints, stale once returned)

    /// Whether the slot is unallocated and unlocked, read without the lock
    /// (and without writing the slot; not at all when not prepared).
    @inline(__always)
    func isUnallocated(_ index: Int) -> Bool {
        !isPrepared(index) || metaWord(index).pointee.load(ordering: .relaxed) == 0
    }

    /// The slot's flags without its value: exact for a caller holding the
    /// slot's lock; otherwise a hint, for scans that take the lock only for
    /// the slots they want.
    @inline(__always)
    func flags(_ index: Int) -> SlotFlags { SlotFlags(word: isPrepared(index) ? meta(index) : 0) }

    // MARK: Allocation status

    /// What the page holds for `base:allocation`. Reads the flags without the
    /// lock, which is enough for every page but a same-filled one, whose fill
    /// word decides between zero and data. The answer may be stale by the
    /// time the caller uses it, as any block-status answer may.
    func allocationStatus(_ index: Int) -> AllocationStatus {
        let word = flags(index).word
        if word & Self.objectBit != 0 { return .data }
        if word & Self.sameBit == 0 { return .unallocated }
        // The page may have changed since the peek; decide under the lock.
        return withLock(index) { allocationStatusLocked(index) }
    }

    private func allocationStatusLocked(_ index: Int) -> AllocationStatus {
        switch content(index) {
        case .unallocated: .unallocated
        case .sameFilled(let fill): fill == 0 ? .zero : .data
        case .object: .data
        }
    }
}

/// A slot's meta word, read as flags.
struct SlotFlags {
    let word: UInt64

    var isObject: Bool { word & SlotTable.objectBit != 0 }
    var isHuge: Bool { word & SlotTable.hugeBit != 0 }
    var isIdle: Bool { word & SlotTable.idleBit != 0 }
    var recompressionTried: Bool { word & SlotTable.recompressedBit != 0 }
    var length: Int { Int(word & SlotTable.lengthMask) }
    var accessed: UInt32 { UInt32(truncatingIfNeeded: word >> SlotTable.accessShift) }
}
