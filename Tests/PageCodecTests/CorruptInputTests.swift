import Dispatch
import PageCodec
import Synchronization
import ZNBDSystem
import Testing
import TestSupport

/// Decompresses `stream` from a buffer of exactly its size (so AddressSanitizer
/// sees any read past it) into a page followed by a guard zone (so a write past
/// the page is caught even without the sanitizer).
private func decompressGuarded(_ stream: [UInt8], codec: some PageCodec) -> Result<[UInt8], PageCodecError> {
    let guardSize = 256
    let canary: UInt8 = 0xC3
    let source = UnsafeMutableRawBufferPointer.allocate(byteCount: max(stream.count, 1), alignment: 1)
    defer { source.deallocate() }
    source.copyBytes(from: stream)
    let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize + guardSize, alignment: 16)
    defer { destination.deallocate() }
    destination.initializeMemory(as: UInt8.self, repeating: canary)
    let result: Result<[UInt8], PageCodecError>
    do throws(PageCodecError) {
        try codec.decompress(
            UnsafeRawBufferPointer(rebasing: source[..<stream.count]),
            into: UnsafeMutableRawBufferPointer(rebasing: destination[..<pageSize]))
        result = .success(Array(destination[..<pageSize]))
    } catch {
        result = .failure(error)
    }
    let guardIntact = destination[pageSize...].allSatisfy { $0 == canary }
    #expect(guardIntact, "decompress wrote past the 4 KiB page")
    return result
}

/// Every codec the device can use, with parameters at both ends of their ranges.
let everyCodec = ["lzo", "lz4", "lz4:64", "zstd", "zstd:-5", "zstd:19"]

@Suite("Each codec on corrupt input")
struct CorruptInputTests {
    @Test("10,000 corrupted streams give an error or a full page, never a crash or overrun", arguments: everyCodec)
    func corruptedStreams(_ choice: String) throws {
        let codec = try CodecChoice.parse(choice).makeCodec()
        let pages = try Corpus.pages(512)
        let streams = try (0..<pages.count).map { try compressed(pages[$0], with: codec) }
        var (random, seed) = SeededRandom.fromEnvironment(1)
        print("corruptedStreams \(choice) seed \(seed)")
        var errors = 0
        var fullPages = 0
        for trial in 0..<10_000 {
            let pick = Int.random(in: 0..<streams.count, using: &random)
            var stream = streams[pick]
            let kind = trial % 5
            switch kind {
            case 0:  // bit flips
                for _ in 0...Int.random(in: 0..<8, using: &random) {
                    let bit = Int.random(in: 0..<stream.count * 8, using: &random)
                    stream[bit / 8] ^= UInt8(1 << (bit % 8))
                }
            case 1:  // truncation
                stream = Array(stream.prefix(Int.random(in: 0..<stream.count, using: &random)))
            case 2:  // random bytes of random length
                stream = random.bytes(Int.random(in: 1...(pageSize + 512), using: &random))
            case 3:  // another page's valid stream, its length changed
                let other = streams[(pick + 1) % streams.count]
                let delta = Int.random(in: 1...64, using: &random)
                stream =
                    Bool.random(using: &random)
                    ? Array(other.dropLast(min(delta, other.count - 1)))
                    : other + random.bytes(delta)
            default:  // the head of one stream spliced onto the tail of another
                let other = streams[Int.random(in: 0..<streams.count, using: &random)]
                let cut = Int.random(in: 0..<min(stream.count, other.count), using: &random)
                stream = Array(stream[..<cut] + other[cut...])
            }
            switch decompressGuarded(stream, codec: codec) {
            case .success(let page):
                #expect(page.count == pageSize)
                // A prefix of a stream lacks its end marker: never a page.
                #expect(kind != 1, "truncated stream \(trial) reported success")
                fullPages += 1
            case .failure:
                errors += 1
            }
        }
        #expect(errors + fullPages == 10_000)
        #expect(errors > 5_000, "most corruptions must be detected; got \(errors) errors")
        print("corruptedStreams \(choice): \(errors) errors, \(fullPages) full pages")
    }

    @Test("two threads compressing and decompressing at once match one thread", arguments: everyCodec)
    func twoThreadsMatchOne(_ choice: String) throws {
        let codec = try CodecChoice.parse(choice).makeCodec()
        let pages = try Corpus.pages(2_000)
        let reference = try (0..<pages.count).map { try compressed(pages[$0], with: codec) }
        let mismatches = Locked(0)
        runOnThreads(2) { worker in
            var output = [UInt8](repeating: 0, count: codec.maxCompressedSize)
            var page = [UInt8](repeating: 0, count: pageSize)
            var bad = 0
            for round in 0..<3 {
                // The two workers walk the pages in opposite orders so that they
                // touch different data at the same moment.
                for step in 0..<pages.count {
                    let index = (worker + round) % 2 == 0 ? step : pages.count - 1 - step
                    let ok: Bool = pages.bytes.withUnsafeBytes { all in
                        output.withUnsafeMutableBytes { out in
                            page.withUnsafeMutableBytes { back in
                                let source = UnsafeRawBufferPointer(
                                    rebasing: all[index * pageSize..<(index + 1) * pageSize])
                                guard let length = try? codec.compress(page: source, into: out),
                                    out[..<length].elementsEqual(reference[index]),
                                    (try? codec.decompress(UnsafeRawBufferPointer(rebasing: out[..<length]), into: back))
                                        != nil
                                else { return false }
                                return back.elementsEqual(source)
                            }
                        }
                    }
                    if !ok { bad += 1 }
                }
            }
            mismatches.withLock { $0 += bad }
        }
        #expect(mismatches.withLock { $0 } == 0)
    }
}
