import PageCodec
import ZNBDSystem
import Testing
import TestSupport

/// The page-codec contract, for every codec: exactly one page out, within
/// the codec's bound, and every stream that is not one page an error.
@Suite("Every codec keeps the page-codec contract")
struct CodecContractTests {
    @Test("10,000 corpus pages round-trip within the bound", arguments: everyCodec)
    func corpus(_ choice: String) throws {
        let codec = try CodecChoice.parse(choice).makeCodec()
        let decoder = try PageDecoder()
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
                        // The decoder that reads a device's pages needs only
                        // the algorithm, not the level it was written at.
                        try decoder.decompress(
                            UnsafeRawBufferPointer(rebasing: out[..<length]), algorithm: codec.algorithm, into: back)
                        if !back.elementsEqual(page) {
                            Issue.record("page \(index) did not round-trip")
                            return
                        }
                    }
                }
            }
        }
        // A tar of libraries and documentation compresses, even at lz4's
        // acceleration 64 (about 1.15); near 1.0 the corpus, not the codec, is broken.
        let ratio = Double(pages.bytes.count) / Double(totalCompressed)
        print("codec \(choice): corpus ratio \(ratio)")
        #expect(ratio > 1.1, "corpus ratio \(ratio)")
    }

    @Test("zero, repeated, text and random pages round-trip; random pages stay within the bound", arguments: everyCodec)
    func kindsOfPage(_ choice: String) throws {
        let codec = try CodecChoice.parse(choice).makeCodec()
        var random = SeededRandom(seed: 7)
        let text = Array(
            String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 100).utf8.prefix(pageSize))
        let pages: [(String, [UInt8])] = [
            ("zero", [UInt8](repeating: 0, count: pageSize)),
            ("repeated", (0..<pageSize).map { UInt8(truncatingIfNeeded: $0 % 8 * 37) }),
            ("text", text),
            ("random", random.bytes(pageSize)),
        ]
        for (kind, page) in pages {
            let stream = try compressed(page, with: codec)
            #expect(try decompressed(stream, with: codec) == page, "\(kind) page")
            if kind == "random" {
                #expect(stream.count > pageSize - 64, "random data does not compress")
            } else {
                #expect(stream.count < pageSize / 4, "\(kind) page compressed to \(stream.count)")
            }
        }
    }

    @Test("wrong buffer sizes and empty streams are errors, not crashes", arguments: everyCodec)
    func bufferSizes(_ choice: String) throws {
        let codec = try CodecChoice.parse(choice).makeCodec()
        let page = [UInt8](repeating: 1, count: pageSize)
        var small = [UInt8](repeating: 0, count: codec.maxCompressedSize - 1)
        #expect(throws: PageCodecError.destinationTooSmall(capacity: small.count, required: codec.maxCompressedSize)) {
            _ = try page.withUnsafeBytes { source in
                try small.withUnsafeMutableBytes { try codec.compress(page: source, into: $0) }
            }
        }
        #expect(throws: PageCodecError.wrongPageBufferSize(100)) {
            _ = try page.prefix(100).withUnsafeBytes { source in
                try small.withUnsafeMutableBytes { try codec.compress(page: source, into: $0) }
            }
        }
        let stream = try compressed(page, with: codec)
        var bigger = [UInt8](repeating: 0, count: pageSize + 1)
        #expect(throws: PageCodecError.wrongPageBufferSize(pageSize + 1)) {
            try stream.withUnsafeBytes { source in
                try bigger.withUnsafeMutableBytes { try codec.decompress(source, into: $0) }
            }
        }
        #expect(throws: PageCodecError.truncatedInput) { _ = try decompressed([], with: codec) }
    }

    @Test("a valid stream with one byte more, or one byte less, is an error", arguments: everyCodec)
    func exactLength(_ choice: String) throws {
        let codec = try CodecChoice.parse(choice).makeCodec()
        let pages = try Corpus.pages(64)
        for index in 0..<pages.count {
            let stream = try compressed(pages.bytes[index * pageSize..<(index + 1) * pageSize], with: codec)
            for extra: UInt8 in [0, 0xFF] {
                #expect(throws: PageCodecError.self, "page \(index) + byte \(extra)") {
                    _ = try decompressed(stream + [extra], with: codec)
                }
            }
            #expect(throws: PageCodecError.self, "page \(index) less its last byte") {
                _ = try decompressed(Array(stream.dropLast()), with: codec)
            }
        }
    }

    @Test("a valid stream of fewer than 4096 bytes is an error, not success")
    func shortStreams() throws {
        // LZO1X's end-of-stream marker alone: a valid stream of zero bytes.
        #expect(throws: PageCodecError.shortOutput(0)) {
            _ = try decompressed([0x11, 0x00, 0x00], with: LZO1X1Codec())
        }
        // An LZ4 block of one sequence: five literals and no match.
        #expect(throws: PageCodecError.shortOutput(5)) {
            _ = try decompressed([0x50, 1, 2, 3, 4, 5], with: LZ4Codec())
        }
        // A zstd frame (magic, single segment, content size 0) whose one
        // block is the last, raw and empty.
        #expect(throws: PageCodecError.shortOutput(0)) {
            _ = try decompressed([0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x00, 0x01, 0x00, 0x00], with: ZstdCodec())
        }
        // The same frame twice, or behind a skippable frame: valid zstd, but
        // not one frame.
        let frame: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x00, 0x01, 0x00, 0x00]
        #expect(throws: PageCodecError.trailingInput) { _ = try decompressed(frame + frame, with: ZstdCodec()) }
        let skippable: [UInt8] = [0x50, 0x2A, 0x4D, 0x18, 0x01, 0x00, 0x00, 0x00, 0xEE]
        #expect(throws: PageCodecError.trailingInput) { _ = try decompressed(skippable + frame, with: ZstdCodec()) }
    }

    @Test("choices parse as the daemon's options write them, and out-of-range ones are refused")
    func choices() throws {
        #expect(try CodecChoice.parse("zstd:9") == CodecChoice(.zstd, level: 9))
        #expect(try CodecChoice.parse("lz4") == CodecChoice(.lz4))
        #expect(try CodecChoice.parse(algorithm: "zstd", params: "level=-3") == CodecChoice(.zstd, level: -3))
        #expect(try CodecChoice.parse(algorithm: "lz4", params: "acceleration=8") == CodecChoice(.lz4, level: 8))
        #expect(try CodecChoice.parse(algorithm: "lzo", params: "") == .lzo)
        #expect(try CodecChoice.parse("zstd:9").description == "zstd:9")
        #expect(try CodecChoice.parse("zstd:9").params == "level=9")
        for bad in ["zlib", "zstd:", "zstd:x", "zstd:99", "lz4:0", "lzo:1", ""] {
            #expect(throws: CodecChoice.Invalid.self, "\(bad)") { _ = try CodecChoice.parse(bad) }
        }
        for (algorithm, params) in [
            ("lzo", "level=1"), ("zstd", "acceleration=2"), ("zstd", "level"), ("lz4", "dict=x"),
        ] {
            #expect(throws: CodecChoice.Invalid.self, "\(algorithm) \(params)") {
                _ = try CodecChoice.parse(algorithm: algorithm, params: params)
            }
        }
        #expect(CompressionAlgorithm.allCases.map(\.rawValue) == [0, 1, 2], "slots record these numbers")
        #expect(LZ4Codec.libraryVersion.hasPrefix("1."))
        #expect(ZstdCodec.libraryVersion.hasPrefix("1."))
    }
}
