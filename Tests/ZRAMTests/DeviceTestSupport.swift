import BlockDevice
import Foundation
import TestSupport
@testable import ZRAM

#if canImport(Glibc)
    import Glibc
#endif

extension CompressedBlockDevice {
    /// A device of `pages` pages with default settings.
    static func make(pages: Int, memLimitBytes: Int? = nil) throws -> CompressedBlockDevice {
        try CompressedBlockDevice(.init(byteCount: pages * 4096, memLimitBytes: memLimitBytes))
    }

    func write(_ bytes: [UInt8], at offset: Int) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    func read(count: Int, at offset: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0xEE, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return bytes
    }
}

/// The kinds of data a disk sees, made to order for a request of `count` bytes.
enum TestData: CaseIterable {
    case text  // a slice of the corpus: compresses well
    case random  // incompressible: stored as huge pages
    case zeroes  // zero pages: no pool object
    case sameFilled  // one repeated non-zero word
    case mixed  // corpus with zero sectors in it

    func bytes(_ count: Int, corpus: PageArray, random: inout SeededRandom) -> [UInt8] {
        switch self {
        case .text:
            let start = Int.random(in: 0...(corpus.bytes.count - count) / 512, using: &random) * 512
            return Array(corpus.bytes[start..<start + count])
        case .random:
            return random.bytes(count)
        case .zeroes:
            return [UInt8](repeating: 0, count: count)
        case .sameFilled:
            let word = random.next() | 1
            return (0..<count).map { UInt8(truncatingIfNeeded: word >> (($0 % 8) * 8)) }
        case .mixed:
            var bytes = TestData.text.bytes(count, corpus: corpus, random: &random)
            for sector in stride(from: 0, to: count, by: 512) where Bool.random(using: &random) {
                bytes.replaceSubrange(sector..<sector + 512, with: repeatElement(0, count: 512))
            }
            return bytes
        }
    }
}

/// The reference the device is checked against: the bytes every page should
/// hold, with a pthread mutex per page. A test thread locks the pages of a
/// request (ascending, all at once), does the request on the device and on
/// the model, then unlocks: requests on one page are then ordered the same
/// way in both, while requests on different pages still overlap freely.
final class ModelDisk: @unchecked Sendable {
    // @unchecked: bytes of page p are touched only while holding locks[p].
    let byteCount: Int
    private let bytes: UnsafeMutableRawBufferPointer
    private let locks: UnsafeMutablePointer<pthread_mutex_t>
    private let pageCount: Int

    init(byteCount: Int) {
        self.byteCount = byteCount
        pageCount = byteCount / 4096
        bytes = .allocate(byteCount: byteCount, alignment: 16)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
        locks = .allocate(capacity: pageCount)
        for page in 0..<pageCount {
            (locks + page).initialize(to: pthread_mutex_t())
            pthread_mutex_init(locks + page, nil)
        }
    }

    deinit {
        for page in 0..<pageCount { pthread_mutex_destroy(locks + page) }
        locks.deallocate()
        bytes.deallocate()
    }

    /// Runs `body` holding the locks of every page `offset..<offset+length` touches.
    func withPages<Result>(offset: Int, length: Int, _ body: () throws -> Result) rethrows -> Result {
        let pages = offset / 4096...max(offset, offset + length - 1) / 4096
        for page in pages { pthread_mutex_lock(locks + page) }
        defer { for page in pages.reversed() { pthread_mutex_unlock(locks + page) } }
        return try body()
    }

    /// Caller holds the pages' locks (or no other thread runs yet).
    func store(_ data: [UInt8], at offset: Int) {
        data.withUnsafeBytes {
            UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<offset + data.count]).copyMemory(from: $0)
        }
    }

    func zero(offset: Int, length: Int) {
        UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<offset + length]).initializeMemory(
            as: UInt8.self, repeating: 0)
    }

    /// What discard does: whole pages of the range become zeroes; partial
    /// pages at the edges keep their bytes.
    func discard(offset: Int, length: Int) {
        let first = (offset + 4095) / 4096
        let end = (offset + length) / 4096
        if first < end { zero(offset: first * 4096, length: (end - first) * 4096) }
    }

    func expected(offset: Int, length: Int) -> ArraySlice<UInt8> {
        ArraySlice(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length]))
    }
}

/// The first byte offset at which two byte sequences differ, for messages.
func firstDifference(_ a: some Collection<UInt8>, _ b: some Collection<UInt8>) -> Int? {
    for (index, (x, y)) in zip(a, b).enumerated() where x != y { return index }
    return a.count == b.count ? nil : min(a.count, b.count)
}

extension CompressedBlockDevice {
    /// `rounds` random writes (of TestData's kinds), discards and
    /// write-zeroes (with and without deallocation) of up to 8 units of
    /// `unit` bytes, at page offsets (plus 512 bytes a quarter of the time
    /// when `subPage`), applied to `model` too; compaction and migration
    /// every 1000 rounds.
    func randomWorkload(
        _ model: ModelDisk, rounds: Int, unit: Int, subPage: Bool, random: inout SeededRandom
    ) throws {
        let pages = byteCount / 4096
        let corpus = try Corpus.pages(256)
        for round in 0..<rounds {
            let shift = subPage ? [0, 0, 0, 512].randomElement(using: &random)! : 0
            let offset = Int.random(in: 0..<pages, using: &random) * 4096 + shift
            let length = min(byteCount - offset, Int.random(in: 1...8, using: &random) * unit)
            switch Int.random(in: 0..<10, using: &random) {
            case 0:
                try discard(offset: offset, length: length)
                model.discard(offset: offset, length: length)
            case 1:
                try writeZeroes(offset: offset, length: length, mayDeallocate: round % 2 == 0)
                model.zero(offset: offset, length: length)
            default:
                let data = TestData.allCases.randomElement(using: &random)!.bytes(
                    length, corpus: corpus, random: &random)
                try write(data, at: offset)
                model.store(data, at: offset)
            }
            if round % 1000 == 999 {
                pool.compact()
                pool.migrateFrames()
            }
        }
    }
}
