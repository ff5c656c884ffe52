#if canImport(Glibc)
    import Glibc
#endif
import PageCodec
import ZNBDSystem

/// The same loop as tools/lzo-bench.c, through `LZO1X1Codec`: compress every
/// page of the corpus, then decompress each and compare it with the original;
/// the best of `passes` passes. Prints "swift compress_MBps decompress_MBps ratio".
func runCodecBenchmark(corpusPath: String, passes: Int) {
    let corpus = readPages(corpusPath, pageSize: pageSize)
    defer { corpus.deallocate() }
    let pages = corpus.count / pageSize
    let codec: LZO1X1Codec
    do { codec = try LZO1X1Codec() } catch { fail("\(error)") }
    let bound = codec.maxCompressedSize
    let streams = UnsafeMutableRawBufferPointer.allocate(byteCount: pages * bound, alignment: 16)
    defer { streams.deallocate() }
    var lengths = [Int](repeating: 0, count: pages)
    let page = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: 16)
    defer { page.deallocate() }

    var bestCompress = Double.infinity
    var bestDecompress = Double.infinity
    var total = 0
    for _ in 0..<passes {
        var start = monotonicSeconds()
        total = 0
        for index in 0..<pages {
            let source = UnsafeRawBufferPointer(rebasing: corpus[index * pageSize..<(index + 1) * pageSize])
            let destination = UnsafeMutableRawBufferPointer(rebasing: streams[index * bound..<(index + 1) * bound])
            do {
                lengths[index] = try codec.compress(page: source, into: destination)
            } catch {
                fail("compress page \(index): \(error)")
            }
            total += lengths[index]
        }
        bestCompress = min(bestCompress, monotonicSeconds() - start)

        start = monotonicSeconds()
        for index in 0..<pages {
            let stream = UnsafeRawBufferPointer(rebasing: streams[index * bound..<index * bound + lengths[index]])
            do {
                try codec.decompress(stream, into: page)
            } catch {
                fail("decompress page \(index): \(error)")
            }
            guard memcmp(page.baseAddress!, corpus.baseAddress! + index * pageSize, pageSize) == 0 else {
                fail("page \(index) did not round-trip")
            }
        }
        bestDecompress = min(bestDecompress, monotonicSeconds() - start)
    }
    let bytes = Double(corpus.count)
    print(
        "swift \(format(bytes / bestCompress / 1e6)) \(format(bytes / bestDecompress / 1e6)) \(format(bytes / Double(total), 3))"
    )
}

func format(_ value: Double, _ decimals: Int = 1) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    return "\(rounded)"
}
