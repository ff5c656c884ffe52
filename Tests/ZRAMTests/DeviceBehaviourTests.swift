import BlockDevice
import Testing
import ZNBDFigures
import TestSupport
@testable import ZRAM
import ZNBDSystem
import ZSPool

@Suite("ZRAM: pages, ranges and allocation status")
struct DeviceBehaviourTests {
    @Test("ZRAM's locks come before the pool's in the lock order: both are held around pool calls")
    func lockLevels() {
        #expect(LockLevel.maintenance < LockLevel.slot)
        #expect(LockLevel.slot < LockLevel.outermostInPool)
    }

    @Test("an unwritten device reads as zeroes and reports one unallocated extent")
    func freshDevice() throws {
        let device = try CompressedBlockDevice.make(pages: 64)
        #expect(try device.read(count: 64 * 4096, at: 0) == [UInt8](repeating: 0, count: 64 * 4096))
        #expect(
            try device.allocationExtents(offset: 0, length: 64 * 4096, maximumExtents: 10)
                == [AllocationExtent(length: 64 * 4096, status: .unallocated)])
        #expect(device.figures()[.memUsedTotal] == 0)
    }

    @Test("sub-page, page-aligned and multi-page writes read back, with the rest of each page intact")
    func granularity() throws {
        let device = try CompressedBlockDevice.make(pages: 16)
        let corpus = try Corpus.pages(16)
        var model = [UInt8](repeating: 0, count: 16 * 4096)
        func write(_ bytes: [UInt8], at offset: Int) throws {
            try device.write(bytes, at: offset)
            model.replaceSubrange(offset..<offset + bytes.count, with: bytes)
            #expect(try device.read(count: model.count, at: 0) == model, "after writing \(bytes.count) at \(offset)")
        }
        try write(Array(corpus[3]), at: 4096)  // one whole page
        try write([UInt8](repeating: 7, count: 512), at: 4096 + 1024)  // one sector inside it
        try write(Array(corpus.bytes[0..<1536]), at: 3 * 4096 - 512)  // straddles two pages
        try write(Array(corpus.bytes[8192..<8192 + 5 * 4096 + 1024]), at: 6 * 4096 + 512)  // many, ragged
        try write(Array(corpus.bytes[0..<512]), at: 15 * 4096 + 3584)  // last sector of the device
        // Reads at every alignment agree with the model.
        for offset in stride(from: 0, to: 8 * 4096, by: 1536) {
            #expect(try device.read(count: 2560, at: offset)[...] == model[offset..<offset + 2560])
        }
    }

    @Test("requests past the end fail, count as invalid_io and change nothing; any alignment is served")
    func invalidRanges() throws {
        let device = try CompressedBlockDevice.make(pages: 4)
        try device.write([UInt8](repeating: 1, count: 4096), at: 0)
        let size = 4 * 4096
        #expect(throws: BlockDeviceError.outOfRange(offset: size - 512, length: 1024, deviceSize: size)) {
            try device.write([UInt8](repeating: 2, count: 1024), at: size - 512)
        }
        #expect(throws: BlockDeviceError.outOfRange(offset: size, length: 512, deviceSize: size)) {
            _ = try device.read(count: 512, at: size)
        }
        #expect(throws: BlockDeviceError.outOfRange(offset: -512, length: 512, deviceSize: size)) {
            try device.discard(offset: -512, length: 512)
        }
        #expect(throws: BlockDeviceError.outOfRange(offset: 0, length: Int.max, deviceSize: size)) {
            _ = try device.allocationExtents(offset: 0, length: Int.max, maximumExtents: 1)
        }
        #expect(device.figures()[.invalidIO] == 4)
        #expect(try device.read(count: 4096, at: 0) == [UInt8](repeating: 1, count: 4096))
        #expect(try device.read(count: 4096, at: 4096) == [UInt8](repeating: 0, count: 4096))
        // Off sector boundaries is the server's business (NBD refuses it only
        // to clients that agreed to block sizes): the device serves it.
        try device.write([UInt8](repeating: 2, count: 512), at: 100)
        try device.writeZeroes(offset: 0, length: 100, mayDeallocate: true)
        var expected = [UInt8](repeating: 1, count: 4096)
        expected.replaceSubrange(0..<100, with: repeatElement(0, count: 100))
        expected.replaceSubrange(100..<612, with: repeatElement(2, count: 512))
        #expect(try device.read(count: 4096, at: 0) == expected)
        #expect(try device.read(count: 7, at: 99) == [0, 2, 2, 2, 2, 2, 2])
        // A refusal by the server is counted here too.
        device.recordInvalidRequest()
        #expect(device.figures()[.invalidIO] == 5)
        // Zero-length requests inside the device are fine and do nothing.
        try device.write([], at: size)
        #expect(try device.read(count: 0, at: 0) == [])
    }

    @Test("discard frees whole pages only; write-zeroes makes zero pages and patches partial ones")
    func discardAndWriteZeroes() throws {
        let device = try CompressedBlockDevice.make(pages: 8)
        let corpus = try Corpus.pages(8)
        try device.write(corpus.bytes, at: 0)
        // Discard from the middle of page 1 to the middle of page 4: pages 2
        // and 3 are freed, pages 1 and 4 keep every byte.
        try device.discard(offset: 4096 + 2048, length: 3 * 4096)
        var expected = corpus.bytes
        expected.replaceSubrange(2 * 4096..<4 * 4096, with: repeatElement(0, count: 2 * 4096))
        #expect(try device.read(count: 8 * 4096, at: 0) == expected)
        #expect(
            try device.allocationExtents(offset: 0, length: 8 * 4096, maximumExtents: 10) == [
                AllocationExtent(length: 2 * 4096, status: .data),
                AllocationExtent(length: 2 * 4096, status: .unallocated),
                AllocationExtent(length: 4 * 4096, status: .data),
            ])
        // Write-zeroes with NO_HOLE over pages 5 (half) ... 7 (whole): the
        // half is patched, whole pages become zero pages.
        try device.writeZeroes(offset: 5 * 4096 + 2048, length: 2048 + 2 * 4096, mayDeallocate: false)
        expected.replaceSubrange(5 * 4096 + 2048..<8 * 4096, with: repeatElement(0, count: 2048 + 2 * 4096))
        #expect(try device.read(count: 8 * 4096, at: 0) == expected)
        #expect(
            try device.allocationExtents(offset: 0, length: 8 * 4096, maximumExtents: 10) == [
                AllocationExtent(length: 2 * 4096, status: .data),
                AllocationExtent(length: 2 * 4096, status: .unallocated),
                AllocationExtent(length: 2 * 4096, status: .data),
                AllocationExtent(length: 2 * 4096, status: .zero),
            ])
        // Extents are capped, and an extent may start mid-page.
        #expect(
            try device.allocationExtents(offset: 1024, length: 5 * 4096, maximumExtents: 2) == [
                AllocationExtent(length: 2 * 4096 - 1024, status: .data),
                AllocationExtent(length: 2 * 4096, status: .unallocated),
            ])
        // A non-zero same-filled page is data to base:allocation.
        try device.write([UInt8](repeating: 0xAB, count: 4096), at: 2 * 4096)
        #expect(
            try device.allocationExtents(offset: 2 * 4096, length: 4096, maximumExtents: 1)
                == [AllocationExtent(length: 4096, status: .data)])
        try device.validate()
    }

    @Test("write-zeroes that may deallocate frees whole pages as zram does; with NO_HOLE they are zero pages")
    func writeZeroesFiguresMatchZram() throws {
        let device = try CompressedBlockDevice.make(pages: 8)
        let corpus = try Corpus.pages(8)
        try device.write(corpus.bytes, at: 0)
        let stored = device.figures()
        #expect(stored[.origDataSize] == 8 * 4096 && stored[.samePages] == 0)
        // Pages 1 (from its middle) to 4 (whole) without NO_HOLE: 2, 3 and 4
        // are freed, like a discard, and page 1's second half is patched.
        try device.writeZeroes(offset: 4096 + 2048, length: 2048 + 3 * 4096, mayDeallocate: true)
        var expected = corpus.bytes
        expected.replaceSubrange(4096 + 2048..<5 * 4096, with: repeatElement(0, count: 2048 + 3 * 4096))
        #expect(try device.read(count: 8 * 4096, at: 0) == expected)
        var figures = device.figures()
        #expect(figures[.origDataSize] == 5 * 4096)
        #expect(figures[.samePages] == 0)
        #expect(figures[.notifyFree] == 3)
        #expect(figures[.zeroes] == 1)
        #expect(
            try device.allocationExtents(offset: 0, length: 8 * 4096, maximumExtents: 10) == [
                AllocationExtent(length: 2 * 4096, status: .data),
                AllocationExtent(length: 3 * 4096, status: .unallocated),
                AllocationExtent(length: 3 * 4096, status: .data),
            ])
        // The same over pages 5 to 7 with NO_HOLE: three zero pages, still
        // counted in DATA as zram counts same-filled pages.
        try device.writeZeroes(offset: 5 * 4096, length: 3 * 4096, mayDeallocate: false)
        expected.replaceSubrange(5 * 4096..<8 * 4096, with: repeatElement(0, count: 3 * 4096))
        #expect(try device.read(count: 8 * 4096, at: 0) == expected)
        figures = device.figures()
        #expect(figures[.origDataSize] == 5 * 4096)
        #expect(figures[.samePages] == 3)
        #expect(figures[.notifyFree] == 3)
        #expect(
            try device.allocationExtents(offset: 5 * 4096, length: 3 * 4096, maximumExtents: 10)
                == [AllocationExtent(length: 3 * 4096, status: .zero)])
        // Deallocating zero pages frees them too.
        try device.writeZeroes(offset: 5 * 4096, length: 3 * 4096, mayDeallocate: true)
        figures = device.figures()
        #expect(figures[.origDataSize] == 2 * 4096 && figures[.samePages] == 0)
        try device.validate()
    }

    @Test("a sub-page write into a same-filled or unallocated page keeps the rest of it")
    func patchesKeepTheRest() throws {
        let device = try CompressedBlockDevice.make(pages: 2)
        try device.write([UInt8](repeating: 0x5A, count: 4096), at: 0)
        try device.write([UInt8](repeating: 1, count: 512), at: 512)
        try device.write([UInt8](repeating: 2, count: 512), at: 4096 + 3584)
        var expected = [UInt8](repeating: 0x5A, count: 4096) + [UInt8](repeating: 0, count: 4096)
        expected.replaceSubrange(512..<1024, with: repeatElement(1, count: 512))
        expected.replaceSubrange(4096 + 3584..<8192, with: repeatElement(2, count: 512))
        #expect(try device.read(count: 8192, at: 0) == expected)
        let stats = device.figures()
        #expect(stats[.samePages] == 0)
        #expect(stats[.origDataSize] == 8192)
    }
}
