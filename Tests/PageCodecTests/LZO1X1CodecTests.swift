import Foundation
import PageCodec
import ZNBDSystem
import Testing
import TestSupport

/// Compresses one page and returns exactly the compressed bytes.
func compressed(_ page: some Collection<UInt8>, with codec: LZO1X1Codec = try! LZO1X1Codec()) throws -> [UInt8] {
    let page = Array(page)
    var output = [UInt8](repeating: 0, count: codec.maxCompressedSize)
    let length = try page.withUnsafeBytes { source in
        try output.withUnsafeMutableBytes { destination in
            try codec.compress(page: source, into: destination)
        }
    }
    #expect(length <= codec.maxCompressedSize)
    return Array(output[..<length])
}

/// Decompresses into a fresh page.
func decompressed(_ stream: [UInt8], with codec: LZO1X1Codec = try! LZO1X1Codec()) throws -> [UInt8] {
    var page = [UInt8](repeating: 0xA5, count: pageSize)
    try stream.withUnsafeBytes { source in
        try page.withUnsafeMutableBytes { destination in
            try codec.decompress(source, into: destination)
        }
    }
    return page
}

@Suite("LZO1X-1 page codec")
struct LZO1X1CodecTests {
    let codec = try! LZO1X1Codec()

    @Test("worst-case bound is liblzo2's documented 4096 + 4096/16 + 64 + 3")
    func worstCaseBound() {
        #expect(codec.maxCompressedSize == 4096 + 4096 / 16 + 64 + 3)
        #expect(LZO1X1Codec.libraryVersion.hasPrefix("2."))
    }

    @Test("all-zero page round-trips and compresses to a few bytes")
    func zeroPage() throws {
        let page = [UInt8](repeating: 0, count: pageSize)
        let stream = try compressed(page)
        #expect(stream.count < 64)
        #expect(try decompressed(stream) == page)
    }

    @Test("page of one repeated 8-byte word round-trips")
    func repeatedWord() throws {
        var page = [UInt8](repeating: 0, count: pageSize)
        page.withUnsafeMutableBytes { raw in
            for offset in stride(from: 0, to: pageSize, by: 8) {
                raw.storeBytes(of: UInt64(0xDEAD_BEEF_0BAD_F00D), toByteOffset: offset, as: UInt64.self)
            }
        }
        let stream = try compressed(page)
        #expect(stream.count < 128)
        #expect(try decompressed(stream) == page)
    }

    @Test("random bytes expand, and the codec says so honestly")
    func incompressible() throws {
        var random = SeededRandom(seed: 42)
        for _ in 0..<32 {
            let page = random.bytes(pageSize)
            let stream = try compressed(page)
            #expect(stream.count > pageSize, "LZO cannot shrink random data; it reports the expansion")
            #expect(stream.count <= codec.maxCompressedSize)
            #expect(try decompressed(stream) == page)
        }
    }

    @Test("English text round-trips and compresses")
    func text() throws {
        let sentence = "A block device that returns a wrong byte once is worthless. "
        var text = ""
        var counter = 0
        while text.utf8.count < pageSize {
            text += "\(counter): \(sentence)"
            counter += 1
        }
        let page = Array(text.utf8.prefix(pageSize))
        let stream = try compressed(page)
        #expect(stream.count < pageSize / 2)
        #expect(try decompressed(stream) == page)
    }

    @Test("a page cut from a real binary round-trips")
    func binaryPage() throws {
        let candidates = ["/opt/swift/usr/bin/swift-frontend", "/usr/bin/bash", "/bin/sh"]
        let path = try #require(candidates.first { FileManager.default.fileExists(atPath: $0) })
        let data = try #require(FileManager.default.contents(atPath: path))
        try #require(data.count >= 3 * pageSize)
        let page = [UInt8](data[pageSize..<2 * pageSize])
        #expect(try decompressed(try compressed(page)) == page)
    }

    @Test("10,000 corpus pages round-trip within the bound")
    func corpus() throws {
        let pages = try Corpus.pages(10_000)
        var output = [UInt8](repeating: 0, count: codec.maxCompressedSize)
        var restored = [UInt8](repeating: 0, count: pageSize)
        var totalCompressed = 0
        try pages.bytes.withUnsafeBytes { all in
            try output.withUnsafeMutableBytes { out in
                try restored.withUnsafeMutableBytes { back in
                    for index in 0..<pages.count {
                        let page = UnsafeRawBufferPointer(rebasing: all[index * pageSize..<(index + 1) * pageSize])
                        let length = try codec.compress(page: page, into: out)
                        #expect(length > 0 && length <= codec.maxCompressedSize)
                        totalCompressed += length
                        try codec.decompress(UnsafeRawBufferPointer(rebasing: out[..<length]), into: back)
                        if !back.elementsEqual(page) {
                            Issue.record("page \(index) did not round-trip")
                            return
                        }
                    }
                }
            }
        }
        // A tar of libraries and documentation compresses; if this ever reads
        // near 1.0 the corpus, not the codec, is broken.
        let ratio = Double(pages.bytes.count) / Double(totalCompressed)
        #expect(ratio > 1.3, "corpus ratio \(ratio)")
    }

    @Test("wrong buffer sizes are errors, not crashes")
    func bufferSizes() throws {
        let page = [UInt8](repeating: 1, count: pageSize)
        var small = [UInt8](repeating: 0, count: pageSize)
        #expect(throws: PageCodecError.destinationTooSmall(capacity: pageSize, required: codec.maxCompressedSize)) {
            _ = try page.withUnsafeBytes { source in
                try small.withUnsafeMutableBytes { try codec.compress(page: source, into: $0) }
            }
        }
        #expect(throws: PageCodecError.wrongPageBufferSize(100)) {
            _ = try page.prefix(100).withUnsafeBytes { source in
                try small.withUnsafeMutableBytes { try codec.compress(page: source, into: $0) }
            }
        }
        let stream = try compressed(page)
        var bigger = [UInt8](repeating: 0, count: pageSize + 1)
        #expect(throws: PageCodecError.wrongPageBufferSize(pageSize + 1)) {
            try stream.withUnsafeBytes { source in
                try bigger.withUnsafeMutableBytes { try codec.decompress(source, into: $0) }
            }
        }
        #expect(throws: PageCodecError.truncatedInput) { _ = try decompressed([]) }
    }

    @Test("a stream that decodes to fewer than 4096 bytes is an error, not success")
    func shortStream() throws {
        // LZO1X's end-of-stream marker alone is a valid stream of zero bytes.
        #expect(throws: PageCodecError.shortOutput(0)) { _ = try decompressed([0x11, 0x00, 0x00]) }
    }
}
