import BlockDevice
import Foundation
import PageCodec
import Synchronization
import Testing
import ZNBDFigures
import TestSupport
import ZNBDSystem
@testable import ZRAM

@Suite("ZRAM codecs, idle pages and recompression", .serialized)
struct RecompressionTests {
    static func device(
        pages: Int, _ algorithm: String = "lzo", recompression: String? = "zstd"
    ) throws -> CompressedBlockDevice {
        try CompressedBlockDevice(
            .init(
                byteCount: pages * 4096, algorithm: try CodecChoice.parse(algorithm),
                recompressionAlgorithm: try recompression.map(CodecChoice.parse)))
    }

    @Test(
        "a device of each codec stores the corpus, reads it back, and counts its pages by algorithm",
        arguments: ["lzo", "lz4", "zstd", "zstd:12"])
    func eachCodec(_ choice: String) throws {
        let device = try Self.device(pages: 2_048, choice, recompression: nil)
        let corpus = try Corpus.pages(2_048)
        try device.write(corpus.bytes, at: 0)
        #expect(try device.read(count: corpus.bytes.count, at: 0) == corpus.bytes)
        try device.validate()
        let stats = device.figures()
        let compression = device.compressionFigures()
        let algorithm = try CodecChoice.parse(choice).algorithm
        #expect(compression.algorithm == (try CodecChoice.parse(choice)))
        #expect(compression.pagesByAlgorithm[algorithm] == 2_048 - stats[.samePages] - stats[.hugePages])
        #expect(compression.pagesByAlgorithm.filter { $0.key != algorithm }.values.allSatisfy { $0 == 0 })
        print("eachCodec \(choice): compr_data_size \(stats[.comprDataSize]), mem_used_total \(stats[.memUsedTotal])")
    }

    @Test("idle marks, types, thresholds and max_pages select as zram's recompress does; a page is tried once")
    func selection() throws {
        let device = try Self.device(pages: 512)
        let corpus = try Corpus.pages(256)
        var random = SeededRandom(seed: 5)
        let noise = random.bytes(64 * 4096)
        try device.write(corpus.bytes, at: 0)  // pages 0..<256: text
        try device.write(noise, at: 256 * 4096)  // pages 256..<320: huge
        let textObjects = device.compressionFigures().pagesByAlgorithm[.lzo, default: 0]
        let hugeObjects = device.figures()[.hugePages]  // the noise, and a few corpus pages
        let objects = textObjects + hugeObjects
        #expect(hugeObjects >= 64 && textObjects > 200)

        // Nothing is idle until marked; a read clears one page's mark.
        #expect(device.compressionFigures().idlePages == 0)
        #expect(try device.recompress(RecompressionRequest(type: .idle))[.pagesTried] == 0)
        #expect(device.markIdle(notAccessedFor: .seconds(3600)) == 0, "everything was written just now")
        #expect(device.markIdle() == objects)
        #expect(device.markIdle() == 0)
        _ = try device.read(count: 4096, at: 0)
        #expect(device.compressionFigures().idlePages == objects - 1)

        // huge_idle takes only raw pages; random data stays raw under zstd.
        let huge = try device.recompress(RecompressionRequest(type: .hugeIdle))
        #expect(huge[.pagesTried] == hugeObjects && huge[.pagesIncompressible] >= 64)
        #expect(huge[.pagesRecompressed] + huge[.pagesNotSmaller] == hugeObjects)
        #expect(try device.recompress(RecompressionRequest(type: .huge))[.pagesTried] == 0, "tried once")

        // max_pages and threshold.
        let three = try device.recompress(RecompressionRequest(type: .idle, maxPages: 3))
        #expect(three[.pagesTried] == 3)
        let big = try device.recompress(RecompressionRequest(type: .idle, thresholdBytes: 3_000))
        #expect(big[.pagesTried] > 0)
        let rest = try device.recompress(RecompressionRequest(type: .idle))
        #expect(rest[.pagesTried] == textObjects - 1 - 3 - big[.pagesTried], "page 0 was read, so it is not idle")
        #expect(rest[.pagesRecompressed] > rest[.pagesTried] / 2, "zstd beats LZO1X-1 on most text pages")
        #expect(rest[.bytesAfter] < rest[.bytesBefore])

        // Idle marks and access times survive recompression; a write clears
        // the tried bit, and the page is taken again.
        #expect(device.compressionFigures().idlePages == objects - 1)
        let recompressed = device.compressionFigures().recompression[.pagesRecompressed]
        #expect(device.compressionFigures().pagesByAlgorithm[.zstd] == recompressed)
        try device.write(Array(corpus.bytes[4096..<8192]), at: 4096)
        #expect(try device.recompress(RecompressionRequest(type: .all))[.pagesTried] == 2, "pages 0 and 1")
        #expect(try device.read(count: 256 * 4096, at: 0) == corpus.bytes)
        #expect(try device.read(count: 64 * 4096, at: 256 * 4096) == noise)
        try device.validate()
        let totals = device.compressionFigures().recompression
        #expect(totals[.pagesTried] == totals[.pagesRecompressed] + totals[.pagesNotSmaller] + totals[.pagesRaced])
    }

    @Test("without a recompression codec, recompress says how to get one")
    func unavailable() throws {
        let device = try Self.device(pages: 16, recompression: nil)
        #expect(throws: RecompressionRefused.unavailable) { try device.recompress(RecompressionRequest(type: .all)) }
    }

    @Test("a page written between recompression's read and switch keeps the write; the result is freed unseen")
    func writeBetweenReadAndSwitch() throws {
        let device = try Self.device(pages: 4, "lz4", recompression: "zstd:1")
        let corpus = try Corpus.pages(4)
        let first = Array(corpus.bytes[0..<4096])
        let second = Array(corpus.bytes[4096..<8192])
        let codec = try CodecChoice.parse("zstd:1").makeCodec()
        let everything = Selection(RecompressionRequest(type: .all), now: 0)
        for (index, meanwhile) in [
            ("write", { try! device.write(second, at: 0) }),
            ("discard", { try! device.discard(offset: 0, length: 4096) }),
        ].enumerated() {
            try device.write(first, at: 0)
            let objectsBefore = device.poolFigures()[.liveObjects]
            let outcome = device.withRecompressionBuffers(codec) { buffers in
                device.recompressPage(0, everything, codec: codec, buffers: buffers, meanwhile: meanwhile.1)
            }
            #expect(outcome == .raced, "\(meanwhile.0)")
            #expect(try device.read(count: 4096, at: 0) == (index == 0 ? second : [UInt8](repeating: 0, count: 4096)))
            #expect(device.poolFigures()[.liveObjects] == objectsBefore - index, "the new object was freed")
            try device.validate()
        }
        // Undisturbed, the same call switches.
        try device.write(first, at: 0)
        let outcome = device.withRecompressionBuffers(codec) { buffers in
            device.recompressPage(0, everything, codec: codec, buffers: buffers)
        }
        guard case .recompressed = outcome else {
            Issue.record("undisturbed: \(outcome)")
            return
        }
        #expect(try device.read(count: 4096, at: 0) == first)
        try device.validate()
    }

    @Test("two threads: every read after a write sees it, while a third recompresses the same pages")
    func racingWrites() throws {
        let pages = 8
        let device = try Self.device(pages: pages, "lz4", recompression: "zstd:1")
        let corpus = try Corpus.pages(64)
        let stop = Atomic<Bool>(false)
        let writersLeft = Atomic<Int>(2)
        let failures = Locked<[String]>([])
        /// Corpus text with the version stamped in: compressible, distinct.
        @Sendable func content(page: Int, version: Int) -> [UInt8] {
            var bytes = Array(corpus.bytes[(version % 64) * 4096..<(version % 64 + 1) * 4096])
            withUnsafeBytes(of: UInt64(version)) { bytes.replaceSubrange(page * 8..<page * 8 + 8, with: $0) }
            return bytes
        }
        let deadline = Date().addingTimeInterval(min(4, DeviceConcurrencyTests.stressSeconds))
        runOnThreads(3) { role in
            if role == 2 {
                while !stop.load(ordering: .acquiring) {
                    _ = try? device.recompress(RecompressionRequest(type: .all))
                }
                return
            }
            defer {
                if writersLeft.subtract(1, ordering: .releasing).newValue == 0 {
                    stop.store(true, ordering: .releasing)
                }
            }
            var version = role
            while Date() < deadline {
                version += 2
                // Each writer owns half the pages.
                for page in stride(from: role, to: pages, by: 2) {
                    let bytes = content(page: page, version: version)
                    do {
                        try device.write(bytes, at: page * 4096)
                        for _ in 0..<3 where try device.read(count: 4096, at: page * 4096) != bytes {
                            failures.withLock { $0.append("page \(page) version \(version) read back stale") }
                        }
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                }
            }
        }
        let totals = device.compressionFigures().recompression
        print("racingWrites: \(totals)")
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(5) })")
        #expect(totals[.pagesRecompressed] > 0)
        try device.validate()
    }

    @Test("a manual run goes in slices, honours max_pages across them, and refuses a second run meanwhile")
    func slicedManualRun() throws {
        let device = try Self.device(pages: 512)
        try device.write(try Corpus.pages(512).bytes, at: 0)
        let objects = device.compressionFigures().pagesByAlgorithm[.lzo, default: 0] + device.figures()[.hugePages]
        var policy = MaintenancePolicy.manualOnly
        policy.recompressScanSlots = 100
        let maintenance = try DeviceMaintenance(device: device, policy: policy)
        let first = try maintenance.recompress(RecompressionRequest(type: .all, maxPages: 250))
        #expect(first[.pagesTried] == 250 && !first.finished)
        let rest = try maintenance.recompress(RecompressionRequest(type: .all))
        #expect(rest[.pagesTried] == objects - 250 && rest.finished && rest[.pagesScanned] == 512)

        // While one run holds the device, a second is refused.
        let slow = try Self.device(pages: 8_192)
        try slow.write(try Corpus.pages(8_192).bytes, at: 0)
        let slowMaintenance = try DeviceMaintenance(device: slow, policy: policy)
        let refusals = Locked<[RecompressionRefused]>([])
        runOnThreads(2) { role in
            if role == 0 {
                _ = try? slowMaintenance.recompress(RecompressionRequest(type: .all))
                return
            }
            // Once its first slice of 100 pages is counted, the run has
            // 8,000 pages (hundreds of milliseconds) still to go.
            while slow.compressionFigures().recompression[.pagesTried] == 0 { usleep(100) }
            do throws(RecompressionRefused) {
                _ = try slowMaintenance.recompress(RecompressionRequest(type: .all, maxPages: 1))
            } catch {
                refusals.withLock { $0.append(error) }
            }
        }
        #expect(refusals.withLock { $0 } == [.busy])
        try device.validate()
        try slow.validate()
    }

    @Test("the maintenance thread recompresses pages idle for its age, unasked, and their memory goes back")
    func automatic() throws {
        let device = try Self.device(pages: 8_192)
        let corpus = try Corpus.pages(4_096)
        try device.write(corpus.bytes, at: 0)
        let before = device.figures()[.memUsedTotal]
        let candidates = 4_096 - 1 - device.figures()[.samePages]  // every stored page but page 0
        var policy = MaintenancePolicy()
        policy.recompressIdleAge = .seconds(2)
        policy.recompressPagesPerSecond = 20_000
        let maintenance = try DeviceMaintenance(device: device, policy: policy)
        maintenance.start()
        defer { maintenance.stop() }
        // A thread of its own reads page 0 every 10 ms, so it never stays
        // unread for 2 s and is never taken.
        let stop = Atomic<Bool>(false)
        let done = Atomic<Bool>(false)
        runOnThreads(2) { role in
            if role == 0 {
                while !stop.load(ordering: .acquiring) {
                    _ = try? device.read(count: 4096, at: 0)
                    usleep(10_000)
                }
                return
            }
            defer { stop.store(true, ordering: .releasing) }
            let deadline = Date().addingTimeInterval(60)
            // Every candidate tried, then a pass that gave the memory back.
            while Date() < deadline {
                if maintenance.figures().recompression[.pagesTried] >= candidates,
                    device.figures()[.memUsedTotal] < before * 9 / 10
                {
                    done.store(true, ordering: .relaxed)
                    return
                }
                usleep(50_000)
            }
        }
        let stats = maintenance.figures()
        let compression = device.compressionFigures()
        print(
            "automatic: \(stats.recompression), sweeps \(stats.totals[.recompressionSweeps]); "
                + "mem_used_total \(before) -> \(device.figures()[.memUsedTotal])"
        )
        let finished = done.load(ordering: .relaxed)
        #expect(finished, "within 60 s: every idle page tried, and memory back")
        #expect(stats.recompression[.pagesTried] == candidates, "all stored pages but page 0, each once")
        #expect(compression.pagesByAlgorithm[.zstd] == stats.recompression[.pagesRecompressed])
        #expect(device.markIdle(notAccessedFor: .seconds(3600)) == 0, "the device is younger than an hour")
        #expect(try device.read(count: corpus.bytes.count, at: 0) == corpus.bytes)
        maintenance.stop()
        try device.validate()
    }
}
