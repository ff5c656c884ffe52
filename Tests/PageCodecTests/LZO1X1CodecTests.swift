import Foundation
import PageCodec
import ZNBDSystem
import Testing
import TestSupport

/// Compresses one page and returns exactly the compressed bytes.
func compressed(_ page: some Collection<UInt8>, with codec: some PageCodec = try! LZO1X1Codec()) throws -> [UInt8] {
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
func decompressed(_ stream: [UInt8], with codec: some PageCodec = try! LZO1X1Codec()) throws -> [UInt8] {
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
}
