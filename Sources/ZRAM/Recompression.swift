// Recompression: stored pages written again with a second, stronger codec,
// as zram's `recompress` attribute does (recomp_algorithm), and idle
// tracking, as zram's `idle` attribute does.
//
// WHICH PAGES (RecompressionType, zram's type=): every stored object; pages
// marked idle (`markIdle`, `znbdctl idle`) and not read or written since;
// huge pages (stored raw); or pages that are both. The maintenance thread asks instead
// for pages not accessed for an age (`idleAge`), read from each slot's
// ACCESSED time, so nobody has to mark them. A page is tried once: the slot's
// RECOMP bit says the recompression codec has had its data, and only a new
// write clears it.
//
// WHEN A RESULT IS KEPT: only when the new stream lands in a smaller size
// class of the pool than the old object (zram's rule): a shorter stream in
// the same class saves nothing. A huge page whose new stream still needs the
// huge class stays raw and counts as incompressible.
//
// LOCKS: as a partial write (CompressedBlockDevice.patchPage). The slot lock
// is held to read the page (one decompression) and again to switch it,
// never across compression or allocation. The switch happens only if the
// slot still holds what was read (the handle's generation changes with every
// reuse); otherwise the page was written meanwhile, and the new object is
// freed unseen: recompression never installs stale data. Switching keeps the
// slot's IDLE bit and ACCESSED time: a recompressed page was not accessed.

import BlockDevice
public import PageCodec
public import ZNBDFigures
import ZNBDSystem
import ZSPool

/// Which pages `recompress` considers (zram's `type=`).
public enum RecompressionType: String, Sendable, CaseIterable {
    /// Every stored object (zram without `type=`).
    case all
    /// Pages marked idle (or, with an `idleAge`, not accessed for that long).
    case idle
    /// Pages stored raw because the write's codec could not compress them.
    case huge
    /// Pages that are both.
    case hugeIdle = "huge_idle"
}

/// One run of recompression over the device, or a slice of it.
public struct RecompressionRequest: Sendable, Equatable {
    public var type: RecompressionType
    /// Only objects of at least this many bytes (zram's `threshold=`).
    public var thresholdBytes: Int?
    /// Stop after this many pages have been compressed again (zram's
    /// `max_pages=`).
    public var maxPages: Int?
    /// "Idle" means not read or written for this long, instead of marked idle.
    public var idleAge: Duration?

    public init(type: RecompressionType, thresholdBytes: Int? = nil, maxPages: Int? = nil, idleAge: Duration? = nil) {
        self.type = type
        self.thresholdBytes = thresholdBytes
        self.maxPages = maxPages
        self.idleAge = idleAge
    }
}

/// What one recompression run, or one slice of one, did: its figures, and
/// whether it reached the end of the range it was given.
public struct RecompressionResult: Sendable, Equatable {
    public var figures = Figures<RecompressionFigure>()
    /// The run reached the end of the device (or of its slice).
    public var finished = false

    public init() {}

    public subscript(figure: RecompressionFigure) -> Int {
        get { figures[figure] }
        set { figures[figure] = newValue }
    }
}

/// The device's compression figures: its codecs, pages per algorithm, idle
/// pages and recompression's totals.
public struct CompressionFigures: Sendable, Equatable {
    public var algorithm: CodecChoice
    public var recompressionAlgorithm: CodecChoice?
    /// pages_by_algorithm (compressed objects by the algorithm that wrote
    /// them, by its name; huge pages are raw and counted in huge_pages) and
    /// idle_pages.
    public var figures: Figures<CompressionFigure>
    /// Every recompression run's and slice's figures added up.
    public var recompression: Figures<RecompressionFigure>

    /// pages_by_algorithm, by algorithm.
    public var pagesByAlgorithm: [CompressionAlgorithm: Int] {
        Dictionary(
            uniqueKeysWithValues: CompressionAlgorithm.allCases.map {
                ($0, figures[.pagesByAlgorithm, $0.description])
            })
    }

    public var idlePages: Int { figures[.idlePages] }
}

/// Why a recompression run was not started.
public enum RecompressionRefused: Error, CustomStringConvertible {
    /// The device has no recompression codec.
    case unavailable
    /// Another manual run is under way.
    case busy

    public var description: String {
        switch self {
        case .unavailable: "no recompression algorithm: start znbd with --recompress-algorithm (e.g. zstd or zstd:9)"
        case .busy: "a recompression run is already under way; wait for it to end"
        }
    }
}

extension CompressedBlockDevice {
    public func compressionFigures() -> CompressionFigures {
        var figures = Figures<CompressionFigure>()
        for figure in CompressionFigure.allCases {
            switch figure {
            case .pagesByAlgorithm:
                for algorithm in CompressionAlgorithm.allCases {
                    figures[figure, algorithm.description] = counters.load(DeviceCounters.pages(of: algorithm))
                }
            case .idlePages:
                figures[figure] = slots.idlePages
            }
        }
        return CompressionFigures(
            algorithm: algorithm, recompressionAlgorithm: recompressionAlgorithm, figures: figures,
            recompression: counters.recompressionTotals())
    }

    /// Marks stored objects idle: all of them, or those not read or written
    /// for `age` (zram's `echo all > idle`, `echo SECONDS > idle`). A read or
    /// write of a page clears its mark. Returns the pages newly marked.
    @discardableResult
    public func markIdle(notAccessedFor age: Duration? = nil) -> Int {
        let accessedBy: UInt32
        if let age {
            guard let last = cutoff(now: slots.now, age: age) else { return 0 }
            accessedBy = last
        } else {
            accessedBy = UInt32.max
        }
        var marked = 0
        for page in 0..<slots.count {
            let flags = slots.flags(page)
            guard flags.isObject, !flags.isIdle, flags.accessed <= accessedBy else { continue }
            if slots.withLock(page, { slots.markIdle(page, accessedBy: accessedBy) }) { marked += 1 }
        }
        return marked
    }

    /// Recompresses the pages `request` selects, over the whole device, in
    /// one go (DeviceMaintenance.recompress does it in slices).
    public func recompress(_ request: RecompressionRequest) throws(RecompressionRefused) -> RecompressionResult {
        guard recompressionCodec != nil else { throw .unavailable }
        return recompress(request, pages: 0..<slots.count).result
    }

    /// The device's number of pages (slots).
    var pageCount: Int { slots.count }

    /// Recompresses within `pages`, and returns where it stopped: the end of
    /// the range, or the page after the one that reached `request.maxPages`.
    /// For the maintenance thread, which works through the device in slices.
    func recompress(_ request: RecompressionRequest, pages: Range<Int>) -> (result: RecompressionResult, next: Int) {
        var result = RecompressionResult()
        guard let codec = recompressionCodec else { return (result, pages.upperBound) }
        let selection = Selection(request, now: slots.now)
        var page = pages.lowerBound
        withRecompressionBuffers(codec) { buffers in
            while page < pages.upperBound {
                if let maxPages = request.maxPages, result[.pagesTried] >= maxPages { return }
                result[.pagesScanned] += 1
                switch recompressPage(page, selection, codec: codec, buffers: buffers) {
                case .notTaken:
                    break
                case .notSmaller(let incompressible):
                    result[.pagesTried] += 1
                    result[.pagesNotSmaller] += 1
                    if incompressible { result[.pagesIncompressible] += 1 }
                case .recompressed(let before, let after):
                    result[.pagesTried] += 1
                    result[.pagesRecompressed] += 1
                    result[.bytesBefore] += before
                    result[.bytesAfter] += after
                case .raced:
                    result[.pagesTried] += 1
                    result[.pagesRaced] += 1
                case .noRoom:
                    // Not tried: the page stays a candidate for a later run,
                    // when discards or compaction have made room.
                    result[.pagesWithoutRoom] += 1
                }
                page += 1
            }
        }
        result.finished = page >= pages.upperBound
        counters.add(result.figures)
        return (result, page)
    }

    /// A page buffer and a stream buffer for `codec`, on the stack.
    func withRecompressionBuffers<Result>(
        _ codec: AnyPageCodec, _ body: (RecompressionBuffers) -> Result
    ) -> Result {
        withPageBuffer { page in
            withUnsafeTemporaryAllocation(byteCount: codec.maxCompressedSize, alignment: 16) { stream in
                body(RecompressionBuffers(page: page, stream: stream))
            }
        }
    }

    /// Recompresses one page if `selection` takes it. `meanwhile` runs
    /// between the read and the switch, where a concurrent write may land
    /// (tests put one there).
    func recompressPage(
        _ page: Int, _ selection: Selection, codec: AnyPageCodec, buffers: RecompressionBuffers,
        meanwhile: () -> Void = {}
    ) -> PageOutcome {
        guard selection.admits(slots.flags(page)) else { return .notTaken }
        // Read under the lock, as a reader would; check again there.
        let read = slots.withLock(page) { () -> SlotContent? in
            guard selection.admits(slots.flags(page)) else { return nil }
            do {
                try loadPage(page, into: buffers.page)
            } catch {
                // Counted in failed_reads by loadPage; marked so that later
                // runs do not read it again.
                slots.markRecompressionTried(page)
                return nil
            }
            return slots.content(page)
        }
        guard let read, case .object(_, let oldLength, let oldEncoding) = read else { return .notTaken }
        let length: Int
        do {
            length = try codec.compress(page: UnsafeRawBufferPointer(buffers.page), into: buffers.stream)
        } catch {
            return .notTaken  // Out of work memory: leave the page for a later run.
        }
        meanwhile()
        let oldClass = pool.sizeClasses.classIndex(forSize: oldEncoding == .raw ? pageSize : oldLength)
        guard length <= hugeThreshold, pool.sizeClasses.classIndex(forSize: length) < oldClass else {
            let marked = slots.withLock(page) { () -> Bool in
                guard slots.content(page) == read else { return false }
                slots.markRecompressionTried(page)
                return true
            }
            return marked ? .notSmaller(incompressible: oldEncoding == .raw && length > hugeThreshold) : .raced
        }
        let new: SlotContent
        do {
            new = try storeObject(
                UnsafeRawBufferPointer(rebasing: buffers.stream[..<length]), encoding: .compressed(codec.algorithm))
        } catch {
            return .noRoom
        }
        let switched = slots.withLock(page) { () -> Bool in
            guard slots.content(page) == read else { return false }
            slots.setRecompressedContent(page, new)
            return true
        }
        guard switched else {
            // Written meanwhile: the result is stale; nobody saw it.
            if case .object(let handle, _, _) = new { pool.free(ZSHandle(rawValue: handle)) }
            return .raced
        }
        release(read, new: new)
        return .recompressed(before: oldLength, after: length)
    }

    /// Objects freed by recompression since the start: each left a hole in
    /// its zspage, as a discard does, for the maintenance thread to compact.
    var objectsRecompressed: Int { counters.load(RecompressionFigure.pagesRecompressed) }
}

/// What happened to one page.
enum PageOutcome: Equatable {
    /// Not selected, or unreadable, or the codec had no work memory.
    case notTaken
    case notSmaller(incompressible: Bool)
    case recompressed(before: Int, after: Int)
    /// Written between its read and its switch: the result was dropped.
    case raced
    /// The pool had no room for the new object (mem_limit, or the arena
    /// full): the page is left as it was, still a candidate.
    case noRoom
}

struct RecompressionBuffers {
    let page: UnsafeMutableRawBufferPointer
    let stream: UnsafeMutableRawBufferPointer
}

/// The slot-level test of a request: which pages it takes.
struct Selection {
    let type: RecompressionType
    let threshold: Int
    /// What makes a page idle: its IDLE mark, or (with an idle age) an
    /// access no later than this second; never, for a device younger than
    /// the age.
    let idleness: Idleness

    enum Idleness {
        case marked
        case accessedBy(UInt32)
        case never
    }

    init(_ request: RecompressionRequest, now: UInt32) {
        type = request.type
        threshold = request.thresholdBytes ?? 0
        if let age = request.idleAge {
            idleness = cutoff(now: now, age: age).map { .accessedBy($0) } ?? .never
        } else {
            idleness = .marked
        }
    }

    func admits(_ flags: SlotFlags) -> Bool {
        guard flags.isObject, !flags.recompressionTried, flags.length >= threshold else { return false }
        let idle: Bool
        switch idleness {
        case .marked: idle = flags.isIdle
        case .accessedBy(let last): idle = flags.accessed <= last
        case .never: idle = false
        }
        switch type {
        case .all: return true
        case .idle: return idle
        case .huge: return flags.isHuge
        case .hugeIdle: return flags.isHuge && idle
        }
    }
}

/// The last ACCESSED second of a page not accessed for at least `age`, or
/// nil when the device is younger than that. ACCESSED holds whole seconds
/// (truncated), so a page of second t was last accessed before t + 1, and
/// has been left alone for `age` once t + 1 + age ≤ now.
func cutoff(now: UInt32, age: Duration) -> UInt32? {
    let seconds = Int64(age.components.seconds) + (age.components.attoseconds > 0 ? 1 : 0)
    let last = Int64(now) - max(0, seconds) - 1
    return last >= 0 ? UInt32(last) : nil
}
