// ZRAM: the compressed block device, as drivers/block/zram is in the kernel.
//
// THE MAP, in the order a request's data flows
//   CompressedBlockDevice.swift  the device (this file): configuration,
//                        read, write (whole pages and read-modify-write of
//                        partial ones), discard, write-zeroes, figures
//   SlotTable.swift      one 16-byte slot per page: content, flags, the slot
//                        lock, the access time
//   DeviceCounters.swift the running counters behind the device's figures
//                        (ZNBDFigures' DeviceFigure and RecompressionFigure)
//   Recompression.swift  idle marks and recompression with a second codec,
//                        and the compression figures
//   Maintenance.swift    the thread that compacts, migrates frames and
//                        recompresses idle pages by itself
//   LockLevels.swift     ZRAM's two locks in the one lock order
//   Validation.swift     the check that slots, figures and pool agree
//   StateHeader.swift    the first file of a state directory: format and
//                        geometry, so a daemon resumes only what it reads
//                        right (resume itself is at the end of this file)
//
// CompressedBlockDevice: the compressed RAM disk. One slot per 4 KiB page (SlotTable); each page's content is
// nothing (unallocated), one repeated 8-byte word (same-filled), or a ZSPool
// object holding its compressed stream (LZO1X-1 by default; lz4 or zstd by
// choice; the slot records which) or, when that would need the pool's huge
// class anyway, the raw page. Recompression.swift stores idle or huge pages
// again with a stronger codec.
//
// LOCKS: the slot lock (per page) is the outermost lock a request takes;
// under it the pool takes its own (see ZSPool.swift). A request that covers
// several pages takes their slot locks one at a time, never two at once, so
// no order between slots is needed; each page is atomic, as in zram, and a
// multi-page request is not.
//
// WRITE PATH (zram_write_page): a whole-page write is checked for same-fill,
// compressed and stored in a new pool object *before* the slot lock is taken;
// under the lock the slot is switched to the new content; the old object is
// freed after. So a failed write (pool full, mem_limit) leaves the old page
// intact, and the lock is held only for the switch. A partial write reads the
// page under its lock (one decompression, as a reader holds it), patches and
// compresses it with no lock held, then switches only if the slot still holds
// what it read; if another write came between, it starts again from that
// write's page. Two whole-page writes of one page race only to the switch:
// the last one switched wins whole, which is a valid order.
//
// STATE: with a state directory (Configuration.placement) the slots and the
// pool are files that outlive the process; the orders above (object before
// slot, slot before the old object's free, one 16-byte store per switch)
// are what make a kill at any instant leave every acknowledged page intact,
// and `resume` rebuilds the rest (docs/ARCHITECTURE.md, "State that
// outlives the daemon").

public import BlockDevice
public import ZNBDFigures
public import PageCodec
public import ZNBDSystem
public import ZSPool

/// A compressed block device in RAM, safe to use from many threads at once.
public final class CompressedBlockDevice: BlockDevice {
    public struct Configuration: Sendable {
        /// Device size in bytes: a positive multiple of 4096.
        public var byteCount: Int
        /// Most frames per zspage in the pool (1...16).
        public var maxChain: Int
        /// Cap on pool memory in bytes; nil for none. Changeable at run time.
        public var memLimitBytes: Int?
        /// The codec every write uses (zram's comp_algorithm).
        public var algorithm: CodecChoice
        /// The codec recompression stores idle or huge pages with (zram's
        /// recomp_algorithm); nil: no recompression.
        public var recompressionAlgorithm: CodecChoice?
        /// Where the slots and the pool live: anonymous memory (gone with
        /// the process), or files of a state directory.
        public var placement: RegionPlacement

        public init(
            byteCount: Int, maxChain: Int = SizeClassTable.defaultMaxChain, memLimitBytes: Int? = nil,
            algorithm: CodecChoice = .lzo, recompressionAlgorithm: CodecChoice? = nil,
            placement: RegionPlacement = .anonymous
        ) {
            self.placement = placement
            self.byteCount = byteCount
            self.maxChain = maxChain
            self.memLimitBytes = memLimitBytes
            self.algorithm = algorithm
            self.recompressionAlgorithm = recompressionAlgorithm
        }
    }

    public enum ConfigurationError: Error, CustomStringConvertible {
        case invalidSize(Int)
        case invalidMemLimit(Int)
        case pool(ZSPool.ConfigurationError)
        case slotTable(errno: Int32)
        case codec(String)
        /// The state directory's files could not be opened or made.
        case state(directory: String, error: String)
        /// The state directory holds a state this build, or this
        /// configuration, cannot resume: said why, never reset.
        case stateRefused(directory: String, why: String)

        public var description: String {
            switch self {
            case .invalidSize(let bytes):
                "device size must be a positive multiple of 4096 bytes, at most \(CompressedBlockDevice.maximumByteCount), got \(bytes)"
            case .invalidMemLimit(let bytes): "mem_limit must be positive, got \(bytes)"
            case .pool(let error): error.description
            case .slotTable(let code): "could not map the slot table (errno \(code))"
            case .codec(let why): why
            case .state(let directory, let error): "the state in \(directory) cannot be opened: \(error)"
            case .stateRefused(let directory, let why): "the state in \(directory) cannot be resumed: \(why)"
            }
        }
    }

    /// 16 TiB: the slot table reserves 16 bytes of address space per page.
    public static let maximumByteCount = 1 << 44
    /// The pool's address space is capped by its handle format (64 GiB).
    static let maximumPoolBytes = 64 << 30

    public let byteCount: Int

    /// What a device found when it resumed a state an earlier daemon left.
    public struct DeviceResumption: Sendable, Equatable {
        /// Daemons that have served the state, this one included.
        public var starts: Int
        public var pool: PoolResumption
        /// From opening the files to serving.
        public var duration: Duration
    }
    /// Any byte range is served: a partial page is read, patched and
    /// stored again (the kernel's zram, whose logical block is its page,
    /// never needs to).
    public var minimumBlockSize: Int { 1 }
    public var preferredBlockSize: Int { pageSize }
    /// The pool holding the pages' objects. Internal: only the slots name
    /// its handles; the control plane gets figures and `compact()`.
    let pool: ZSPool
    /// Compressed lengths above this would land in the pool's huge class, so
    /// such pages are stored raw (zram's huge_class_size test).
    public let hugeThreshold: Int

    let slots: SlotTable
    /// What writes compress with, and what recompression stores with.
    public let algorithm: CodecChoice
    public let recompressionAlgorithm: CodecChoice?
    let codec: AnyPageCodec
    let recompressionCodec: AnyPageCodec?
    /// Reads every page, whichever algorithm wrote it.
    let decoder: PageDecoder
    let counters: DeviceCounters
    /// What resuming the state found, nil for a device that started empty.
    public let resumption: DeviceResumption?

    public init(_ configuration: Configuration) throws(ConfigurationError) {
        let size = configuration.byteCount
        guard size > 0, size % pageSize == 0, size <= Self.maximumByteCount else { throw .invalidSize(size) }
        if let limit = configuration.memLimitBytes, limit <= 0 { throw .invalidMemLimit(limit) }
        do {
            codec = try configuration.algorithm.makeCodec()
            recompressionCodec = try configuration.recompressionAlgorithm?.makeCodec()
        } catch {
            throw .codec(error.description)
        }
        do {
            decoder = try PageDecoder()
        } catch {
            throw .codec(error.description)
        }
        algorithm = configuration.algorithm
        recompressionAlgorithm = configuration.recompressionAlgorithm
        // Room for every page stored raw plus the classes' partly filled
        // zspages; only the address space is reserved up front.
        var poolBytes = min(Self.maximumPoolBytes, size + size / 8 + (16 << 20))
        var timeBase = SlotTable.clock()
        let placement = configuration.placement
        var header: StateHeader?
        if let directory = placement.directory {
            do {
                let names = [SlotTable.regionName] + ZSPool.regionNames
                let headerExisted = placement.regionExists(StateHeader.fileName)
                // Checked before anything is made: a region made now would
                // turn "a file is missing" into a state that resumes empty.
                if !headerExisted, let present = names.first(where: placement.regionExists) {
                    throw ConfigurationError.stateRefused(
                        directory: directory,
                        why: "its header is missing while \(present) is there (the header is made first)")
                }
                let opened = try StateHeader(placement)
                if opened.isComplete {
                    if let missing = names.first(where: { !placement.regionExists($0) }) {
                        throw ConfigurationError.stateRefused(
                            directory: directory, why: "its file \(missing) is missing")
                    }
                    if let why = opened.refusal(diskBytes: size, maxChain: configuration.maxChain) {
                        throw ConfigurationError.stateRefused(directory: directory, why: why)
                    }
                    // The pool keeps the size it was made with, whatever
                    // this build would choose.
                    poolBytes = opened.poolBytes
                    timeBase = opened.timeBase
                } else {
                    // New, or killed while being made (no client was ever
                    // answered from it): made again from nothing.
                    try placement.removeRegions([SlotTable.regionName] + ZSPool.regionNames)
                }
                header = opened
            } catch let error as ConfigurationError {
                throw error
            } catch {
                throw .state(directory: directory, error: "\(error)")
            }
        }
        do {
            pool = try ZSPool(
                ZSPool.Configuration(
                    capacityBytes: poolBytes, maxChain: configuration.maxChain,
                    memLimitBytes: configuration.memLimitBytes, placement: configuration.placement))
        } catch {
            throw .pool(error)
        }
        do {
            slots = try SlotTable(count: size / pageSize, placement: configuration.placement, timeBase: timeBase)
        } catch {
            throw .slotTable(errno: error.rawValue)
        }
        byteCount = size
        hugeThreshold = pool.sizeClasses.hugeThreshold
        counters = DeviceCounters()
        if let header, header.isComplete {
            guard slots.isResumable, pool.hasStateToResume else {
                throw .stateRefused(
                    directory: placement.directory ?? "",
                    why:
                        "a file of it is missing (\(([SlotTable.regionName] + ZSPool.regionNames).joined(separator: ", ")) must all be there)"
                )
            }
            do {
                resumption = try Self.resume(slots: slots, pool: pool, counters: counters, starts: header.starts + 1)
            } catch {
                throw .stateRefused(directory: placement.directory ?? "", why: error.description)
            }
            header.countStart()
        } else {
            resumption = nil
            header?.complete(
                diskBytes: size, poolBytes: poolBytes, maxChain: configuration.maxChain, timeBase: timeBase)
        }
    }

    /// Rebuilds the device from the state an earlier daemon left: the
    /// slots say which pages hold what and which handles they name, the
    /// pool rebuilds itself around those, the figures are recounted.
    private static func resume(
        slots: SlotTable, pool: ZSPool, counters: DeviceCounters, starts: Int
    ) throws(PoolStateDamaged) -> DeviceResumption {
        let started = ContinuousClock.now
        var referenced: [ZSHandle] = []
        let locked = try slots.resume { _, content in
            counters.account(content, sign: 1, resumed: true)
            if case .object(let handle, _, _) = content { referenced.append(ZSHandle(rawValue: handle)) }
        }
        let pool = try pool.resume(referencedHandles: referenced)
        slots.clearLocks(locked)
        return DeviceResumption(starts: starts, pool: pool, duration: ContinuousClock.now - started)
    }

    /// The cap on pool memory, nil for none. Lowering it below what is in use
    /// frees nothing; new writes fail until usage falls under it.
    public var memLimitBytes: Int? {
        get { pool.memLimitBytes }
        set { pool.memLimitBytes = newValue }
    }

    // MARK: BlockDevice

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(BlockDeviceError) {
        try checkRange(offset: offset, length: buffer.count)
        counters.add(.reads)
        counters.add(.bytesRead, buffer.count)
        let now = slots.now
        try forEachPagePiece(offset: offset, length: buffer.count) { (piece) throws(BlockDeviceError) in
            let destination = UnsafeMutableRawBufferPointer(rebasing: buffer[piece.requestRange])
            guard slots.isPrepared(piece.page) else {
                // Never written: zeroes, without touching the table.
                destination.initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            if piece.isWholePage {
                try slots.withLock(piece.page) { () throws(BlockDeviceError) in
                    try loadPage(piece.page, into: destination)
                    slots.touch(piece.page, now: now)
                }
                return
            }
            try withPageBuffer { (page) throws(BlockDeviceError) in
                try slots.withLock(piece.page) { () throws(BlockDeviceError) in
                    try loadPage(piece.page, into: page)
                    slots.touch(piece.page, now: now)
                }
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: page[piece.pageRange]))
            }
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(BlockDeviceError) {
        try checkRange(offset: offset, length: bytes.count)
        counters.add(.writes)
        let now = slots.now
        do {
            try forEachPagePiece(offset: offset, length: bytes.count) { (piece) throws(BlockDeviceError) in
                let source = UnsafeRawBufferPointer(rebasing: bytes[piece.requestRange])
                try prepareSlot(piece.page)
                if piece.isWholePage {
                    install(try storePage(source), at: piece.page, now: now)
                } else {
                    try patchPage(piece.page, at: piece.pageRange.lowerBound, with: source, now: now)
                }
                counters.add(.bytesWritten, source.count)
            }
        } catch {
            countFailedWrite(error)
            throw error
        }
    }

    public func discard(offset: Int, length: Int) throws(BlockDeviceError) {
        try checkRange(offset: offset, length: length)
        counters.add(.discards)
        // Only whole pages are freed; the partial pages at either edge keep
        // their data, as zram_bio_discard does.
        let firstPage = (offset + pageSize - 1) / pageSize
        let endPage = (offset + length) / pageSize
        guard firstPage < endPage else { return }
        for page in firstPage..<endPage { deallocate(page) }
    }

    /// Zeroes the range. With `mayDeallocate` (NBD's write-zeroes without
    /// NO_HOLE, as libnbd's nbd_zero sends by default) whole pages are freed
    /// as a discard frees them: the kernel's zram turns every
    /// REQ_OP_WRITE_ZEROES into a discard, and DATA and same_pages then read
    /// as its do. Without it they become zero pages (same_pages; block status
    /// ZERO, not HOLE). Partial pages at the edges are patched with zeroes
    /// either way (zram, whose logical block is its page, never sees them).
    public func writeZeroes(offset: Int, length: Int, mayDeallocate: Bool) throws(BlockDeviceError) {
        try checkRange(offset: offset, length: length)
        counters.add(.zeroes)
        let now = slots.now
        do {
            try forEachPagePiece(offset: offset, length: length) { (piece) throws(BlockDeviceError) in
                if piece.isWholePage {
                    if mayDeallocate {
                        deallocate(piece.page)
                    } else {
                        try prepareSlot(piece.page)
                        install(.sameFilled(fill: 0), at: piece.page, now: now)
                    }
                } else {
                    try prepareSlot(piece.page)
                    try withZeroes(count: piece.pageRange.count) { (zeroes) throws(BlockDeviceError) in
                        try patchPage(piece.page, at: piece.pageRange.lowerBound, with: zeroes, now: now)
                    }
                }
            }
        } catch {
            countFailedWrite(error)
            throw error
        }
    }

    /// Makes page `page`'s slot writable: a full filesystem under the state
    /// directory is a full device.
    private func prepareSlot(_ page: Int) throws(BlockDeviceError) {
        do {
            try slots.prepare(page)
        } catch .noSpace {
            throw .noSpace
        } catch {
            throw .ioError("slot table: \(error)")
        }
    }

    /// A write or write-zeroes that failed: zram's failed_writes, and apart
    /// those the pool had no room for, which the daemon warns about.
    private func countFailedWrite(_ error: BlockDeviceError) {
        counters.add(.failedWrites)
        if error == .noSpace { counters.add(.failedWritesNoSpace) }
    }

    /// Frees a whole page's content and counts it in notify_free, as
    /// zram_bio_discard counts every page of the range, stored or not.
    private func deallocate(_ page: Int) {
        // A page never written (or already discarded) is left alone: looking
        // reads the zero page, taking the lock would write the slot and make
        // it resident. mkfs discards the whole device, and the table is 16
        // bytes per page.
        if !slots.isUnallocated(page) { install(.unallocated, at: page, now: 0) }
        counters.add(.notifyFree)
    }

    public func flush() throws(BlockDeviceError) {
        // Every write is complete in memory when it returns.
    }

    public func recordInvalidRequest() {
        counters.add(.invalidIO)
    }

    public func allocationExtents(
        offset: Int, length: Int, maximumExtents: Int
    ) throws(BlockDeviceError)
        -> [AllocationExtent]
    {
        try checkRange(offset: offset, length: length)
        return collectExtents(
            offset: offset, length: length, pageSize: pageSize, maximumExtents: maximumExtents,
            statusOfPage: slots.allocationStatus)
    }

    // MARK: Statistics and maintenance

    /// The device's figures: counters and the pool's running totals only,
    /// no walk of the classes or the arena (`poolFigures` is that walk), so
    /// it is cheap to poll.
    public func figures() -> Figures<DeviceFigure> {
        var figures = Figures<DeviceFigure>()
        for figure in DeviceFigure.allCases {
            figures[figure] =
                switch figure {
                case .diskSize: byteCount
                case .memUsedTotal: pool.usedBytes
                case .memLimit: pool.memLimitBytes ?? 0
                case .memUsedMax: pool.maximumUsedBytes
                case .pagesCompacted: pool.pagesCompacted
                default: counters.load(figure)
                }
        }
        return figures
    }

    /// Pool memory in use (mm_stat's mem_used_total), without the rest.
    public var memUsedTotal: Int { pool.usedBytes }

    /// The pool's whole picture: every class under its lock, then the arena
    /// (a walk; `figures()` is the cheap poll).
    public func poolFigures() -> ZSPoolFigures { pool.figures() }

    /// Pool objects freed with no object stored in their place, since the
    /// start (DeviceCounters.objectsFreedWithoutReplacement).
    var objectsFreedWithoutReplacement: Int { counters.load(DeviceCounters.Internal.objectsFreedWithoutReplacement) }

    // MARK: Pages

    private func checkRange(offset: Int, length: Int) throws(BlockDeviceError) {
        do {
            try validateRange(offset: offset, length: length)
        } catch {
            counters.add(.invalidIO)
            throw error
        }
    }

    /// Writes page `page`'s content into `destination` (exactly one page).
    /// The caller holds the slot lock.
    func loadPage(_ page: Int, into destination: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        switch slots.content(page) {
        case .unallocated:
            destination.initializeMemory(as: UInt8.self, repeating: 0)
        case .sameFilled(let fill):
            fillPage(destination, with: fill)
        case .object(let handle, let length, let encoding):
            let failure: PageCodecError?
            do {
                failure = try pool.withObjectBytes(ZSHandle(rawValue: handle), count: length) {
                    (stored) -> PageCodecError? in
                    guard case .compressed(let algorithm) = encoding else {
                        destination.copyMemory(from: stored)
                        return nil
                    }
                    do throws(PageCodecError) {
                        try decoder.decompress(stored, algorithm: algorithm, into: destination)
                        return nil
                    } catch {
                        return error
                    }
                }
            } catch {
                counters.add(.failedReads)
                throw .ioError("page \(page): \(error)")
            }
            if let failure {
                counters.add(.failedReads)
                throw .ioError("page \(page) does not decompress: \(failure)")
            }
        }
    }

    /// Stores a full page's bytes as new content, without touching any slot:
    /// a same-filled word, or a new pool object.
    private func storePage(_ page: UnsafeRawBufferPointer) throws(BlockDeviceError) -> SlotContent {
        if let fill = sameFillWord(page) { return .sameFilled(fill: fill) }
        return try withUnsafeTemporaryAllocation(byteCount: AnyPageCodec.largestMaxCompressedSize, alignment: 16) {
            (compressed) throws(BlockDeviceError) -> SlotContent in
            let length: Int
            do {
                length = try codec.compress(page: page, into: compressed)
            } catch {
                throw .ioError("compression failed: \(error)")
            }
            if length > hugeThreshold {
                return try storeObject(page, encoding: .raw)
            }
            return try storeObject(
                UnsafeRawBufferPointer(rebasing: compressed[..<length]), encoding: .compressed(codec.algorithm))
        }
    }

    /// Copies `bytes` into a new pool object.
    func storeObject(_ bytes: UnsafeRawBufferPointer, encoding: PageEncoding) throws(BlockDeviceError) -> SlotContent {
        let handle: ZSHandle
        do throws(ZSPoolError) {
            handle = try pool.allocate(size: bytes.count)
        } catch .memLimitReached, .arenaFull, .noRoomForState {
            throw .noSpace
        } catch {
            throw .ioError("pool: \(error)")
        }
        do throws(ZSPoolError) {
            try pool.write(handle, from: bytes)
        } catch {
            // Cannot happen for an object of the size just allocated; if it
            // did, the page keeps its old content.
            pool.free(handle)
            throw .ioError("pool: \(error)")
        }
        return .object(handle: handle.rawValue, length: bytes.count, encoding: encoding)
    }

    /// Switches page `page` to `content`, written at `now`, under its lock,
    /// then frees what it held.
    private func install(_ content: SlotContent, at page: Int, now: UInt32) {
        let old = slots.withLock(page) {
            let old = slots.content(page)
            slots.setContent(page, content, now: now)
            return old
        }
        release(old, new: content)
    }

    /// Updates the figures for a slot that went from `old` to `new`, and
    /// frees `old`'s object, which no slot refers to any more.
    func release(_ old: SlotContent, new: SlotContent) {
        counters.account(old, sign: -1)
        counters.account(new, sign: 1)
        if case .object(let handle, _, _) = old {
            pool.free(ZSHandle(rawValue: handle))
            if case .object = new {} else { counters.add(DeviceCounters.Internal.objectsFreedWithoutReplacement) }
        }
    }

    /// Read-modify-write of part of a page. The slot lock is held to read
    /// the page and again to switch it, never across compression or
    /// allocation: the switch happens only if the slot still holds what was
    /// read, else the patch is made again on the newer page, so no other
    /// write to the page is lost.
    ///
    /// "Still holds" compares the slot's content: an object's handle carries
    /// a generation that changes whenever its id is reused, and a same-filled
    /// or unallocated page that came back to the same content has the same
    /// bytes, so the patch made on it is still right.
    private func patchPage(
        _ page: Int, at offset: Int, with bytes: UnsafeRawBufferPointer, now: UInt32
    ) throws(BlockDeviceError) {
        try withPageBuffer { (buffer) throws(BlockDeviceError) in
            while true {
                let read = try slots.withLock(page) { () throws(BlockDeviceError) -> SlotContent in
                    try loadPage(page, into: buffer)
                    return slots.content(page)
                }
                UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + bytes.count]).copyMemory(from: bytes)
                let new = try storePage(UnsafeRawBufferPointer(buffer))
                let switched = slots.withLock(page) { () -> Bool in
                    guard slots.content(page) == read else { return false }
                    slots.setContent(page, new, now: now)
                    return true
                }
                if switched {
                    release(read, new: new)
                    return
                }
                // Another write came first: drop this attempt's object.
                if case .object(let handle, _, _) = new { pool.free(ZSHandle(rawValue: handle)) }
                counters.add(DeviceCounters.Internal.patchRetries)
            }
        }
    }
}

// MARK: - Helpers

/// The part of a request that falls in one device page.
struct PagePiece {
    var page: Int
    /// Bytes of the page the request covers.
    var pageRange: Range<Int>
    /// The same bytes, as offsets in the request's buffer.
    var requestRange: Range<Int>
    var isWholePage: Bool { pageRange.count == pageSize }
}

/// Splits `offset..<offset+length` at page boundaries.
func forEachPagePiece<Failure: Error>(
    offset: Int, length: Int, _ body: (PagePiece) throws(Failure) -> Void
) throws(Failure) {
    var position = offset
    let end = offset + length
    while position < end {
        let page = position / pageSize
        let pageStart = page * pageSize
        let pieceEnd = min(end, pageStart + pageSize)
        try body(
            PagePiece(
                page: page, pageRange: (position - pageStart)..<(pieceEnd - pageStart),
                requestRange: (position - offset)..<(pieceEnd - offset)))
        position = pieceEnd
    }
}

/// Runs `body` with a page-sized scratch buffer on the stack.
@inline(__always)
func withPageBuffer<Result, Failure: Error>(
    _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
) throws(Failure) -> Result {
    try withUnsafeTemporaryAllocation(byteCount: pageSize, alignment: 16, body)
}

/// Runs `body` with `count` (at most one page) zero bytes.
func withZeroes<Result, Failure: Error>(
    count: Int, _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
) throws(Failure) -> Result {
    try withUnsafeTemporaryAllocation(byteCount: count, alignment: 16) { (zeroes) throws(Failure) -> Result in
        zeroes.initializeMemory(as: UInt8.self, repeating: 0)
        return try body(UnsafeRawBufferPointer(zeroes))
    }
}

/// The repeated word when every 8-byte word of `page` equals the first
/// (zram's page_same_filled); nil otherwise. `page` may be unaligned.
func sameFillWord(_ page: UnsafeRawBufferPointer) -> UInt64? {
    let first = page.loadUnaligned(as: UInt64.self)
    var offset = 8
    while offset < page.count {
        guard page.loadUnaligned(fromByteOffset: offset, as: UInt64.self) == first else { return nil }
        offset += 8
    }
    return first
}

/// Fills a page with one repeated 8-byte word.
func fillPage(_ page: UnsafeMutableRawBufferPointer, with fill: UInt64) {
    if fill == 0 {
        page.initializeMemory(as: UInt8.self, repeating: 0)
        return
    }
    var offset = 0
    while offset < page.count {
        page.storeBytes(of: fill, toByteOffset: offset, as: UInt64.self)
        offset += 8
    }
}
