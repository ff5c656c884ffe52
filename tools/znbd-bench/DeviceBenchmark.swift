#if canImport(Glibc)
    import Glibc
#endif
import PageCodec
import ZNBDFigures
import ZNBDSystem
import ZRAM

/// The corpus, shared read-only by benchmark threads.
private struct SharedPages: @unchecked Sendable {
    // @unchecked: written once before the threads start, then only read.
    let bytes: UnsafeMutableRawBufferPointer
    var count: Int { bytes.count / pageSize }
    func page(_ index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[index * pageSize..<(index + 1) * pageSize])
    }
    /// Thread `worker` of `threads` takes pages worker, worker+threads, ...
    func pages(worker: Int, of threads: Int) -> StrideTo<Int> { stride(from: worker, to: count, by: threads) }
}

/// `znbd-bench device CORPUS_FILE [ROUNDS]`: page writes and reads through
/// CompressedBlockDevice beside the codec alone doing the same pages, on one
/// and two threads, rounds alternating; the best round of each. Prints MB/s
/// of page data and the device/codec ratio.
func runDeviceBenchmark(corpusPath: String, rounds: Int, maxChain: Int, algorithm: CodecChoice) {
    let corpus = SharedPages(bytes: readPages(corpusPath, pageSize: pageSize))
    defer { corpus.bytes.deallocate() }
    let codec: AnyPageCodec
    do { codec = try algorithm.makeCodec() } catch { fail("\(error)") }
    let bound = codec.maxCompressedSize
    let streams = SharedPages(bytes: .allocate(byteCount: corpus.count * bound, alignment: 16))
    defer { streams.bytes.deallocate() }
    var lengthsStorage = [Int](repeating: 0, count: corpus.count)
    for index in 0..<corpus.count {
        let destination = UnsafeMutableRawBufferPointer(rebasing: streams.bytes[index * bound..<(index + 1) * bound])
        do { lengthsStorage[index] = try codec.compress(page: corpus.page(index), into: destination) } catch {
            fail("compress: \(error)")
        }
    }
    let lengths = lengthsStorage

    print(
        "# device: \(corpus.count) pages of \(corpusPath), 4 KiB requests, max chain \(maxChain), algorithm \(algorithm); MB/s of page data (best of \(rounds))"
    )
    print("threads op codec_MBps device_MBps device/codec")
    for threads in [1, 2] {
        var best = (compress: 0.0, write: 0.0, overwrite: 0.0, decompress: 0.0, read: 0.0)
        for _ in 0..<rounds {
            let device: CompressedBlockDevice
            do {
                device = try CompressedBlockDevice(
                    .init(byteCount: corpus.bytes.count, maxChain: maxChain, algorithm: algorithm))
            } catch {
                fail("\(error)")
            }
            let megabytes = Double(corpus.bytes.count) / 1e6
            let compress = timeThreads(threads) { worker in
                withUnsafeTemporaryAllocation(byteCount: bound, alignment: 16) { scratch in
                    for index in corpus.pages(worker: worker, of: threads) {
                        do { _ = try codec.compress(page: corpus.page(index), into: scratch) } catch {
                            fail("\(error)")
                        }
                    }
                }
            }
            let write = timeThreads(threads) { worker in
                for index in corpus.pages(worker: worker, of: threads) {
                    do { try device.write(corpus.page(index), at: index * pageSize) } catch { fail("\(error)") }
                }
            }
            let overwrite = timeThreads(threads) { worker in
                for index in corpus.pages(worker: worker, of: threads) {
                    do { try device.write(corpus.page(index), at: index * pageSize) } catch { fail("\(error)") }
                }
            }
            let decompress = timeThreads(threads) { worker in
                withUnsafeTemporaryAllocation(byteCount: pageSize, alignment: 16) { page in
                    for index in corpus.pages(worker: worker, of: threads) {
                        let stream = UnsafeRawBufferPointer(
                            rebasing: streams.bytes[index * bound..<index * bound + lengths[index]])
                        do { try codec.decompress(stream, into: page) } catch { fail("\(error)") }
                    }
                }
            }
            let read = timeThreads(threads) { worker in
                withUnsafeTemporaryAllocation(byteCount: pageSize, alignment: 16) { page in
                    for index in corpus.pages(worker: worker, of: threads) {
                        do { try device.read(into: page, at: index * pageSize) } catch { fail("\(error)") }
                    }
                }
            }
            // A benchmark that returns wrong bytes measures nothing.
            withUnsafeTemporaryAllocation(byteCount: pageSize, alignment: 16) { page in
                for index in stride(from: 0, to: corpus.count, by: 97) {
                    do { try device.read(into: page, at: index * pageSize) } catch { fail("\(error)") }
                    guard memcmp(page.baseAddress!, corpus.page(index).baseAddress!, pageSize) == 0 else {
                        fail("page \(index) read back wrong")
                    }
                }
            }
            if threads == 1, best.write == 0 {
                let figures = device.figures()
                let used = figures[.memUsedTotal]
                let compressed = figures[.comprDataSize]
                print(
                    "# pool after the writes: mem_used_total \(used) for compr_data_size \(compressed) "
                        + "(\(format(Double(used) / Double(compressed), 3))x); "
                        + "ratio \(format(Double(figures[.origDataSize]) / Double(compressed), 3)), "
                        + "huge pages \(figures[.hugePages])"
                )
            }
            best.compress = max(best.compress, megabytes / compress)
            best.write = max(best.write, megabytes / write)
            best.overwrite = max(best.overwrite, megabytes / overwrite)
            best.decompress = max(best.decompress, megabytes / decompress)
            best.read = max(best.read, megabytes / read)
        }
        let rows: [(String, Double, Double)] = [
            ("write", best.compress, best.write), ("overwrite", best.compress, best.overwrite),
            ("read", best.decompress, best.read),
        ]
        for (name, codecRate, deviceRate) in rows {
            print(
                "\(threads) \(name) \(format(codecRate)) \(format(deviceRate)) \(format(100 * deviceRate / codecRate))%"
            )
        }
    }
}
