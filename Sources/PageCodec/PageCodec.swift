// PageCodec: compress and decompress one 4 KiB page, with LZO1X-1 (zram's
// default), lz4 or zstd, through the C shims CLZO, CLZ4 and CZSTD (internal
// imports: no C type appears in this module's API).
//
// THE MAP
//   PageCodec.swift     the contract every codec keeps (this file): the
//                       PageCodec protocol and PageCodecError
//   LZO1X1Codec.swift   LZO1X-1 on liblzo2
//   LZ4Codec.swift      lz4 on liblz4 (acceleration as its level)
//   ZstdCodec.swift     zstd on libzstd, one frame per page
//   CodecChoice.swift   CompressionAlgorithm (the number a slot records),
//                       CodecChoice (an algorithm and its level, as zram's
//                       algorithm_params), AnyPageCodec (a switch, no
//                       existential) and PageDecoder (any algorithm's pages)
//
// docs/ARCHITECTURE.md's "Page codec contract" says what a codec promises
// about buffer sizes, corrupt input and allocation.

import ZNBDSystem

/// Why a page could not be compressed or decompressed.
///
/// Every corrupt, truncated or foreign input ends in one of these; a codec
/// never crashes on its input and never reports a short page as success.
public enum PageCodecError: Error, Equatable, Sendable {
    /// The source buffer is not exactly one page (compress), or the destination
    /// is not exactly one page (decompress).
    case wrongPageBufferSize(Int)
    /// The compress destination is smaller than the codec's worst case.
    case destinationTooSmall(capacity: Int, required: Int)
    /// The codec could not get its work memory.
    case outOfMemory
    /// The compressed stream ends before the page is complete.
    case truncatedInput
    /// The stream describes more than one page of output.
    case outputOverrun
    /// The stream refers back to bytes before the start of the page.
    case lookbehindOverrun
    /// The stream ended (valid end marker) but bytes are left over after it.
    case trailingInput
    /// The stream decoded successfully to fewer bytes than one page.
    case shortOutput(Int)
    /// Any other failure, with the library's own code.
    case corrupt(code: Int32)
}

/// Compresses one 4 KiB page and restores it.
///
/// Implementations are stateless values that are safe to use from many
/// threads at once, and do no heap allocation per call.
public protocol PageCodec: Sendable {
    /// A short name for logs and statistics, e.g. "lzo".
    var name: String { get }

    /// The largest number of bytes `compress` may write for one page. Callers
    /// give `compress` a destination at least this large.
    var maxCompressedSize: Int { get }

    /// Compresses exactly `pageSize` bytes of `page` into `destination` and
    /// returns the compressed length, which may exceed `pageSize` for
    /// incompressible input (the caller then stores the page raw).
    func compress(
        page: UnsafeRawBufferPointer,
        into destination: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) -> Int

    /// Decompresses `source` into `page`, which must be exactly `pageSize`
    /// bytes. Succeeds only when the stream decodes to exactly one full page
    /// and consumes all of `source`; otherwise throws, having written nothing
    /// outside `page`.
    func decompress(
        _ source: UnsafeRawBufferPointer,
        into page: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError)
}

/// The checks every codec makes before compressing: exactly one page in,
/// room for the codec's worst case out. Returns the two buffers as bytes.
@inline(__always)
func compressionBuffers(
    page: UnsafeRawBufferPointer, destination: UnsafeMutableRawBufferPointer, worstCase: Int
) throws(PageCodecError) -> (source: UnsafePointer<UInt8>, output: UnsafeMutablePointer<UInt8>) {
    guard page.count == pageSize, let source = page.baseAddress else {
        throw .wrongPageBufferSize(page.count)
    }
    guard destination.count >= worstCase, let output = destination.baseAddress else {
        throw .destinationTooSmall(capacity: destination.count, required: worstCase)
    }
    return (source.assumingMemoryBound(to: UInt8.self), output.assumingMemoryBound(to: UInt8.self))
}

/// The checks every codec makes before decompressing: exactly one page out,
/// and some input (each library would read a first byte of an empty buffer
/// through its non-nil pointer; no valid stream is empty).
@inline(__always)
func decompressionBuffers(
    source: UnsafeRawBufferPointer, page: UnsafeMutableRawBufferPointer
) throws(PageCodecError) -> (input: UnsafePointer<UInt8>, output: UnsafeMutablePointer<UInt8>) {
    guard page.count == pageSize, let output = page.baseAddress else {
        throw .wrongPageBufferSize(page.count)
    }
    guard let input = source.baseAddress, source.count > 0 else {
        throw .truncatedInput
    }
    return (input.assumingMemoryBound(to: UInt8.self), output.assumingMemoryBound(to: UInt8.self))
}
