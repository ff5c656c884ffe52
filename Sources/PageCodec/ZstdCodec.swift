internal import CZSTD
import ZNBDSystem

/// Zstandard from libzstd, the kernel zram's `zstd`: the smallest streams of
/// the three, at a higher cost per page to write.
///
/// Each thread keeps one compression and one decompression context, made by
/// the C shim on its first use and freed when it exits, so no page allocates.
/// A stored page is exactly one zstd frame (with the frame's header, as the
/// kernel stores it); several frames, skippable frames or trailing bytes are
/// errors.
public struct ZstdCodec: PageCodec {
    /// libzstd's level: negative levels are faster, 22 the strongest.
    public let level: Int

    public static let defaultLevel = Int(czstd_default_level())
    public static let levelRange = Int(czstd_min_level())...Int(czstd_max_level())

    public var name: String { "zstd" }

    /// ZSTD_compressBound(4096).
    public var maxCompressedSize: Int { Self.maxCompressedSize }

    public static let maxCompressedSize = Int(czstd_compress_bound(pageSize))

    /// The version of the libzstd this process runs with.
    public static var libraryVersion: String { String(cString: czstd_version_string()) }

    /// A codec with `level` in `levelRange`, checked by `CodecChoice`, which
    /// is how the daemon makes one.
    public init(level: Int = ZstdCodec.defaultLevel) {
        precondition(Self.levelRange.contains(level), "zstd level \(level) out of range")
        self.level = level
    }

    public func compress(
        page: UnsafeRawBufferPointer,
        into destination: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) -> Int {
        let (source, output) = try compressionBuffers(
            page: page, destination: destination, worstCase: Self.maxCompressedSize)
        var compressedLength = 0
        var libraryError: Int32 = 0
        let status = czstd_compress(
            source, pageSize, output, destination.count, Int32(level), &compressedLength, &libraryError)
        switch Int(status) {
        case CZSTD_OK: return compressedLength
        case CZSTD_OUT_OF_MEMORY: throw .outOfMemory
        default: throw .corrupt(code: libraryError)
        }
    }

    public func decompress(
        _ source: UnsafeRawBufferPointer,
        into page: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) {
        let (input, output) = try decompressionBuffers(source: source, page: page)
        var decompressedLength = 0
        var libraryError: Int32 = 0
        let status = czstd_decompress(input, source.count, output, pageSize, &decompressedLength, &libraryError)
        switch Int(status) {
        case CZSTD_OK:
            guard decompressedLength == pageSize else { throw .shortOutput(decompressedLength) }
        case CZSTD_OUT_OF_MEMORY: throw .outOfMemory
        case CZSTD_OUTPUT_OVERRUN: throw .outputOverrun
        case CZSTD_TRUNCATED: throw .truncatedInput
        case CZSTD_TRAILING_INPUT: throw .trailingInput
        default: throw .corrupt(code: libraryError)
        }
    }
}
