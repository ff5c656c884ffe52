internal import CLZO
import ZNBDSystem

/// LZO1X-1 from liblzo2, the compressor the kernel's zram uses by default
/// (`lzo`).
///
/// Compression uses a per-thread work area kept by the C shim (128 KiB,
/// allocated on a thread's first compress and freed when the thread exits), so
/// the codec value itself is stateless and `Sendable`. Decompression uses
/// `lzo1x_decompress_safe`, which checks every input read and output write.
public struct LZO1X1Codec: PageCodec {
    /// The library failed its own start-up check (`lzo_init`).
    public struct InitializationError: Error, CustomStringConvertible {
        public let code: Int32
        public var description: String { "lzo_init() failed with code \(code)" }
    }

    public var name: String { "lzo" }

    /// liblzo2's documented worst case for one page: 4096 + 4096/16 + 64 + 3.
    public var maxCompressedSize: Int { Self.maxCompressedSize }

    public static let maxCompressedSize = Int(clzo_lzo1x_worst_case_size(pageSize))

    /// The version of the liblzo2 this process runs with.
    public static var libraryVersion: String { String(cString: clzo_version_string()) }

    /// Checks that liblzo2 was built for this ABI (lzo_init) once per process.
    public init() throws(InitializationError) {
        let status = clzo_init()
        guard Int(status) == CLZO_OK else { throw InitializationError(code: status) }
    }

    public func compress(
        page: UnsafeRawBufferPointer,
        into destination: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) -> Int {
        let (source, output) = try compressionBuffers(
            page: page, destination: destination, worstCase: Self.maxCompressedSize)
        var compressedLength = 0
        let status = clzo_lzo1x_1_compress(source, pageSize, output, destination.count, &compressedLength)
        guard Int(status) == CLZO_OK else {
            throw Int(status) == CLZO_OUT_OF_MEMORY ? .outOfMemory : .corrupt(code: status)
        }
        return compressedLength
    }

    public func decompress(
        _ source: UnsafeRawBufferPointer,
        into page: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) {
        let (input, output) = try decompressionBuffers(source: source, page: page)
        var decompressedLength = 0
        let status = clzo_lzo1x_decompress_safe(input, source.count, output, pageSize, &decompressedLength)
        // The shim's status constants import as Int; liblzo2 returns C int.
        switch Int(status) {
        case CLZO_OK:
            guard decompressedLength == pageSize else { throw .shortOutput(decompressedLength) }
        case CLZO_INPUT_OVERRUN, CLZO_EOF_NOT_FOUND: throw .truncatedInput
        case CLZO_OUTPUT_OVERRUN: throw .outputOverrun
        case CLZO_LOOKBEHIND_OVERRUN: throw .lookbehindOverrun
        case CLZO_INPUT_NOT_CONSUMED: throw .trailingInput
        default: throw .corrupt(code: status)
        }
    }
}
