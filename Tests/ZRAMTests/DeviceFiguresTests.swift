import BlockDevice
import PageCodec
import Testing
import ZNBDFigures
import TestSupport
@testable import ZRAM

@Suite("ZRAM: zram's figures, mem_limit and the compression accounting", .serialized)
struct DeviceFiguresTests {
    @Test("zero pages: same_pages rises by N and mem_used_total by 0")
    func zeroPages() throws {
        let device = try CompressedBlockDevice.make(pages: 256)
        let before = device.figures()
        try device.write([UInt8](repeating: 0, count: 100 * 4096), at: 0)
        let after = device.figures()
        #expect(after[.samePages] - before[.samePages] == 100)
        #expect(after[.memUsedTotal] == before[.memUsedTotal])
        #expect(after[.origDataSize] - before[.origDataSize] == 100 * 4096)
        #expect(after[.comprDataSize] == before[.comprDataSize])
        #expect(device.pool.figures()[.liveObjects] == 0)
    }

    @Test("incompressible pages are stored raw and counted as huge")
    func hugePages() throws {
        let device = try CompressedBlockDevice.make(pages: 64)
        var random = SeededRandom(seed: 42)
        try device.write(random.bytes(10 * 4096), at: 0)
        var stats = device.figures()
        #expect(stats[.hugePages] == 10)
        #expect(stats[.hugePagesSince] == 10)
        #expect(stats[.comprDataSize] == 10 * 4096)
        #expect(stats[.memUsedTotal] == 10 * 4096)
        // Overwriting them with text ends their hugeness; the "since" count stays.
        let corpus = try Corpus.pages(10)
        try device.write(corpus.bytes, at: 0)
        stats = device.figures()
        #expect(stats[.hugePages] == 0)
        #expect(stats[.hugePagesSince] == 10)
        try device.validate()
    }

    @Test("discard frees: orig and compr data sizes return to their earlier values, notify_free counts the pages")
    func discardReturnsFigures() throws {
        let device = try CompressedBlockDevice.make(pages: 1024)
        let corpus = try Corpus.pages(512)
        try device.write(Array(corpus.bytes[0..<256 * 4096]), at: 0)
        let before = device.figures()
        var random = SeededRandom(seed: 7)
        try device.write(Array(corpus.bytes[256 * 4096..<512 * 4096]), at: 512 * 4096)
        try device.write([UInt8](repeating: 0, count: 16 * 4096), at: 768 * 4096)
        try device.write(random.bytes(16 * 4096), at: 784 * 4096)
        let full = device.figures()
        #expect(full[.origDataSize] == before[.origDataSize] + 288 * 4096)
        #expect(full[.comprDataSize] > before[.comprDataSize])
        try device.discard(offset: 512 * 4096, length: 512 * 4096)
        let after = device.figures()
        #expect(after[.origDataSize] == before[.origDataSize])
        #expect(after[.comprDataSize] == before[.comprDataSize])
        #expect(after[.samePages] == before[.samePages])
        #expect(after[.hugePages] == before[.hugePages])
        #expect(after[.notifyFree] - before[.notifyFree] == 512)
        #expect(after[.discards] == 1)
        // The pool gives the memory back once compacted.
        _ = try DeviceMaintenance(device: device, policy: .manualOnly).runPass(.manual)
        #expect(device.figures()[.memUsedTotal] <= before[.memUsedTotal] + 4 * 4096)
        try device.validate()
    }

    @Test("mem_limit: writes fail with no space and change nothing; discard makes room; the limit can change")
    func memLimit() throws {
        let limit = 2 << 20
        let device = try CompressedBlockDevice.make(pages: 4096, memLimitBytes: limit)
        let corpus = try Corpus.pages(4096)
        var written = 0
        var failure: (any Error)?
        while written < 4096 {
            do {
                try device.write(Array(corpus[written]), at: written * 4096)
                written += 1
            } catch {
                failure = error
                break
            }
        }
        #expect(failure as? BlockDeviceError == .noSpace)
        #expect(written > 256, "a 2 MiB limit should hold more than 1 MiB of text")
        var stats = device.figures()
        #expect(stats[.memLimit] == limit)
        #expect(stats[.memUsedTotal] <= limit)
        #expect(stats[.failedWrites] == 1)
        #expect(stats[.origDataSize] == written * 4096)
        // The failed page was not written; every earlier page is intact.
        #expect(device.slots.withLock(written) { device.slots.content(written) } == .unallocated)
        for page in 0..<written {
            #expect(try device.read(count: 4096, at: page * 4096)[...] == corpus[page])
        }
        // Overwriting text with random pages (a frame each) soon fails; the
        // page whose overwrite failed keeps its old data.
        var random = SeededRandom(seed: 3)
        var overwritten = 0
        while overwritten < written {
            let page = random.bytes(4096)
            do {
                try device.write(page, at: overwritten * 4096)
                #expect(try device.read(count: 4096, at: overwritten * 4096) == page)
                overwritten += 1
            } catch {
                #expect(error as? BlockDeviceError == .noSpace)
                break
            }
        }
        #expect(overwritten < written)
        #expect(try device.read(count: 4096, at: overwritten * 4096)[...] == corpus[overwritten])
        let unchanged = overwritten + 1..<written
        // Same-filled pages need no pool memory, so they still succeed.
        try device.write([UInt8](repeating: 0, count: 4096), at: written * 4096)
        for page in unchanged {
            #expect(try device.read(count: 4096, at: page * 4096)[...] == corpus[page])
        }
        // Discard half, compact: writes succeed again.
        try device.discard(offset: 0, length: written / 2 * 4096)
        _ = try DeviceMaintenance(device: device, policy: .manualOnly).runPass(.manual)
        try device.write(Array(corpus.bytes[0..<64 * 4096]), at: 0)
        // Raising the limit at run time lets the rest in.
        device.memLimitBytes = nil
        stats = device.figures()
        #expect(stats[.memLimit] == 0)
        try device.write(corpus.bytes, at: 0)
        #expect(try device.read(count: corpus.bytes.count, at: 0) == corpus.bytes)
        try device.validate()
    }

    @Test("compr_data_size of the 128 MiB corpus is the sum of its LZO1X-1 lengths, plus 4096 per huge page")
    func compressionFigure() throws {
        let pageCount = 32_768
        let corpus = try Corpus.pages(pageCount)
        let device = try CompressedBlockDevice.make(pages: pageCount)
        let codec = try LZO1X1Codec()
        var expectedCompressed = 0, expectedSame = 0, expectedHuge = 0
        var scratch = [UInt8](repeating: 0, count: codec.maxCompressedSize)
        corpus.bytes.withUnsafeBytes { all in
            for page in 0..<pageCount {
                let bytes = UnsafeRawBufferPointer(rebasing: all[page * 4096..<(page + 1) * 4096])
                let words = bytes.bindMemory(to: UInt64.self)
                if words.allSatisfy({ $0 == words[0] }) {
                    expectedSame += 1
                    continue
                }
                let length = scratch.withUnsafeMutableBytes { try! codec.compress(page: bytes, into: $0) }
                if length > device.hugeThreshold {
                    expectedHuge += 1
                    expectedCompressed += 4096
                } else {
                    expectedCompressed += length
                }
            }
        }
        // Write in 128 KiB requests, as a kernel client would.
        for chunk in stride(from: 0, to: pageCount * 4096, by: 128 << 10) {
            try device.write(Array(corpus.bytes[chunk..<chunk + (128 << 10)]), at: chunk)
        }
        let stats = device.figures()
        #expect(stats[.origDataSize] == pageCount * 4096)
        #expect(stats[.comprDataSize] == expectedCompressed)
        #expect(stats[.samePages] == expectedSame)
        #expect(stats[.hugePages] == expectedHuge)
        let ratio = Double(stats[.origDataSize]) / Double(stats[.comprDataSize])
        let kernelRatio = 1_074_601_984.0 / 538_304_758.0
        print(
            "corpus 128 MiB: compr_data_size \(stats[.comprDataSize]), same \(stats[.samePages]), "
                + "huge \(stats[.hugePages]), mem_used_total \(stats[.memUsedTotal]); ratio \(ratio) (kernel zram, 8 copies: \(kernelRatio))"
        )
        // Every byte comes back.
        for chunk in stride(from: 0, to: pageCount * 4096, by: 1 << 20) {
            let back = try device.read(count: 1 << 20, at: chunk)
            #expect(back[...] == corpus.bytes[chunk..<chunk + (1 << 20)], "at \(chunk)")
        }
        try device.validate()
    }
}
