import BlockDevice
import Foundation
import PageCodec
import Synchronization
import Testing
import TestSupport
import ZNBDSystem
@testable import ZRAM

@Suite("ZRAM under concurrency, compaction and migration", .serialized)
struct DeviceConcurrencyTests {
    /// Seconds each timed test runs; ZNBD_STRESS_SECONDS overrides.
    static var stressSeconds: Double {
        ProcessInfo.processInfo.environment["ZNBD_STRESS_SECONDS"].flatMap(Double.init) ?? 8
    }

    /// Collects failures from many threads; the first few are enough.
    final class Failures: Sendable {
        let messages = Locked<[String]>([])
        func record(_ message: String) { messages.withLock { if $0.count < 20 { $0.append(message) } } }
        var all: [String] { messages.withLock { $0 } }
    }

    /// The codecs the model test runs with: the default; and a device whose
    /// pages are written by one codec and recompressed by another while the
    /// workers run, so that every read meets pages of both.
    static let codecVariants = ["lzo", "lz4>zstd:1"]

    @Test(
        "model test: 4 threads of reads, writes, discards and write-zeroes at 512-byte granularity, with maintenance",
        arguments: codecVariants)
    func modelWithMaintenance(_ codecs: String) throws {
        // 32 MiB, filled first, so that the pool spans many 2 MiB blocks and
        // discards leave sparse ones for migration to empty.
        let pageCount = 8_192
        let names = codecs.split(separator: ">").map(String.init)
        let device = try CompressedBlockDevice(
            .init(
                byteCount: pageCount * 4096, algorithm: try CodecChoice.parse(names[0]),
                recompressionAlgorithm: try names.dropFirst().first.map(CodecChoice.parse)))
        let model = ModelDisk(byteCount: pageCount * 4096)
        let corpus = try Corpus.pages(pageCount)
        try device.write(corpus.bytes, at: 0)
        model.store(corpus.bytes, at: 0)  // no other thread yet
        let failures = Failures()
        let deadline = Date().addingTimeInterval(Self.stressSeconds)
        let workersLeft = Atomic<Int>(4)
        let operations = Atomic<Int>(0)
        let maintenance = Locked(
            (passes: 0, framesFreed: 0, objectsMoved: 0, framesMigrated: 0, recompressed: 0, mixed: 0))
        let (_, baseSeed) = SeededRandom.fromEnvironment(11)
        print("modelWithMaintenance seed \(baseSeed)")

        let manual = try DeviceMaintenance(device: device, policy: .manualOnly)
        runOnThreads(5) { role in
            if role == 4 {
                while workersLeft.load(ordering: .acquiring) > 0 {
                    if device.recompressionAlgorithm != nil {
                        // Marked idle, then read or written, then recompressed:
                        // each step races the workers.
                        device.markIdle()
                        let type = RecompressionType.allCases[maintenance.withLock { $0.passes } % 4]
                        let recompressed =
                            (try? manual.recompress(RecompressionRequest(type: type)))?[.pagesRecompressed] ?? 0
                        let byAlgorithm = device.compressionFigures().pagesByAlgorithm
                        let mixed = byAlgorithm[.lz4, default: 0] > 0 && byAlgorithm[.zstd, default: 0] > 0
                        maintenance.withLock {
                            $0.recompressed += recompressed
                            if mixed { $0.mixed += 1 }
                        }
                    }
                    let result = manual.runPass(.manual)
                    maintenance.withLock {
                        $0.passes += 1
                        $0.framesFreed += result.compaction.framesFreed
                        $0.objectsMoved += result.compaction.objectsMoved
                        $0.framesMigrated += result.migration.framesMigrated
                    }
                }
                return
            }
            defer { workersLeft.subtract(1, ordering: .releasing) }
            var random = SeededRandom(seed: baseSeed &+ UInt64(role))
            while Date() < deadline, failures.all.isEmpty {
                for _ in 0..<200 {
                    let (offset, length) = Self.randomRange(deviceBytes: pageCount * 4096, &random)
                    let roll = Int.random(in: 0..<100, using: &random)
                    model.withPages(offset: offset, length: length) {
                        do {
                            switch roll {
                            case 0..<45:
                                let kind = TestData.allCases.randomElement(using: &random)!
                                let data = kind.bytes(length, corpus: corpus, random: &random)
                                try device.write(data, at: offset)
                                model.store(data, at: offset)
                            case 45..<80:
                                let back = try device.read(count: length, at: offset)
                                let expected = model.expected(offset: offset, length: length)
                                if let at = firstDifference(back, expected) {
                                    failures.record("worker \(role): read \(offset)+\(length) differs at byte \(at)")
                                }
                            case 80..<90:
                                try device.discard(offset: offset, length: length)
                                model.discard(offset: offset, length: length)
                            default:
                                try device.writeZeroes(
                                    offset: offset, length: length, mayDeallocate: roll % 2 == 0)
                                model.zero(offset: offset, length: length)
                            }
                        } catch {
                            failures.record("worker \(role): \(error) at \(offset)+\(length)")
                        }
                    }
                }
                operations.add(200, ordering: .relaxed)
            }
        }
        let passes = maintenance.withLock { $0 }
        print(
            "modelWithMaintenance \(codecs): \(operations.load(ordering: .relaxed)) requests; maintenance \(passes); \(device.compressionFigures())"
        )
        #expect(failures.all.isEmpty, "\(failures.all)")
        let whole = try device.read(count: pageCount * 4096, at: 0)
        #expect(firstDifference(whole, model.expected(offset: 0, length: pageCount * 4096)) == nil)
        try device.validate()
        #expect(passes.passes > 0)
        if device.recompressionAlgorithm != nil {
            // The workers read pages of both codecs while these ran.
            #expect(passes.recompressed > 0 && passes.mixed > 0)
        }
    }

    /// A request range: mostly within one page, some page-aligned, some long
    /// and ragged, all on 512-byte sectors. Half fall in the first 1 MiB, so
    /// that the threads' ranges overlap often.
    static func randomRange(deviceBytes: Int, _ random: inout SeededRandom) -> (Int, Int) {
        let hot = Bool.random(using: &random)
        let sectors = hot ? min(deviceBytes, 1 << 20) / 512 : deviceBytes / 512
        let count: Int
        switch Int.random(in: 0..<100, using: &random) {
        case 0..<50: count = Int.random(in: 1...8, using: &random)
        case 50..<80:
            let pages = Int.random(in: 1...4, using: &random)
            let first = Int.random(in: 0...(sectors / 8 - pages), using: &random)
            return (first * 4096, pages * 4096)
        // At most 24 pages: a request holds the model's lock of each page it
        // touches, and ThreadSanitizer tracks at most 64 held locks a thread.
        default: count = Int.random(in: 9...(24 * 8), using: &random)
        }
        let start = Int.random(in: 0...(sectors - count), using: &random)
        return (start * 512, count * 512)
    }

    @Test("sub-page writes to the same pages from 4 threads lose no update")
    func noLostUpdates() throws {
        let pageCount = 4
        let device = try CompressedBlockDevice.make(pages: pageCount)
        let corpus = try Corpus.pages(256)
        let failures = Failures()
        let deadline = Date().addingTimeInterval(min(Self.stressSeconds, 3))
        let (_, baseSeed) = SeededRandom.fromEnvironment(12)
        print("noLostUpdates seed \(baseSeed)")
        runOnThreads(4) { worker in
            // Worker w owns sectors w and w+4 of every page.
            var random = SeededRandom(seed: baseSeed &+ UInt64(worker))
            var mine = [Int: [UInt8]]()
            while Date() < deadline, failures.all.isEmpty {
                let page = Int.random(in: 0..<pageCount, using: &random)
                let sector = worker + 4 * Int.random(in: 0...1, using: &random)
                let offset = page * 4096 + sector * 512
                let kind = TestData.allCases.randomElement(using: &random)!
                let data = kind.bytes(512, corpus: corpus, random: &random)
                do {
                    try device.write(data, at: offset)
                    mine[offset] = data
                    for (other, expected) in mine where Int.random(in: 0..<4, using: &random) == 0 {
                        if try device.read(count: 512, at: other) != expected {
                            failures.record("worker \(worker): sector at \(other) lost its last write")
                        }
                    }
                } catch {
                    failures.record("worker \(worker): \(error)")
                }
            }
            for (offset, expected) in mine where (try? device.read(count: 512, at: offset)) != expected {
                failures.record("worker \(worker): sector at \(offset) differs at the end")
            }
        }
        #expect(failures.all.isEmpty, "\(failures.all)")
        try device.validate()
    }

    @Test("a reader never sees a half-written page while writers replace it whole")
    func noTornReads() throws {
        let pageCount = 2
        let device = try CompressedBlockDevice.make(pages: pageCount)
        let corpus = try Corpus.pages(64)
        let failures = Failures()
        let deadline = Date().addingTimeInterval(min(Self.stressSeconds, 3))
        let reads = Atomic<Int>(0)
        // Version v of a page: text, random or same-filled by v % 3, with v
        // in its first 8 bytes (same-filled: every word is v).
        @Sendable func version(_ v: UInt64) -> [UInt8] {
            var bytes: [UInt8]
            switch v % 3 {
            case 0: bytes = Array(corpus[Int(v % 64)])
            case 1:
                var random = SeededRandom(seed: v)
                bytes = random.bytes(4096)
            default: return (0..<4096).map { UInt8(truncatingIfNeeded: v >> (($0 % 8) * 8)) }
            }
            withUnsafeBytes(of: v) { bytes.replaceSubrange(0..<8, with: $0) }
            return bytes
        }
        for page in 0..<pageCount { try device.write(version(UInt64(page) + 1), at: page * 4096) }
        runOnThreads(4) { role in
            var random = SeededRandom(seed: UInt64(role) &* 977)
            while Date() < deadline, failures.all.isEmpty {
                let page = Int.random(in: 0..<pageCount, using: &random)
                do {
                    if role < 2 {
                        try device.write(version(random.next() >> 8 | 1), at: page * 4096)
                    } else {
                        let bytes = try device.read(count: 4096, at: page * 4096)
                        let v = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                        if bytes != version(v) { failures.record("page \(page) read torn (version \(v))") }
                        reads.add(1, ordering: .relaxed)
                    }
                } catch {
                    failures.record("\(role): \(error)")
                }
            }
        }
        print("noTornReads: \(reads.load(ordering: .relaxed)) reads checked")
        #expect(failures.all.isEmpty, "\(failures.all)")
        try device.validate()
    }
}
