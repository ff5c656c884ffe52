internal import CLZ4
import ZNBDSystem

/// LZ4 block compression from liblz4, the kernel zram's `lz4`: the fastest to
/// read back, at a ratio a little below LZO1X-1's.
///
/// Compression uses a per-thread hash table kept by the C shim (16 KiB,
/// allocated on a thread's first compress and freed when the thread exits).
/// Decompression is `LZ4_decompress_safe`, which checks every input read and
/// output write, and needs the block's exact length: bytes after the block's
/// end are an error.
public struct LZ4Codec: PageCodec {
    /// liblz4's acceleration: 1 (its default, best ratio) and up; each step
    /// trades some ratio for speed.
    public let acceleration: Int

    public static let defaultAcceleration = 1
    public static let accelerationRange = 1...Int(clz4_acceleration_max())

    public var name: String { "lz4" }

    /// LZ4_compressBound(4096): 4096 + 4096/255 + 16.
    public var maxCompressedSize: Int { Self.maxCompressedSize }

    public static let maxCompressedSize = Int(clz4_compress_bound(pageSize))

    /// The version of the liblz4 this process runs with.
    public static var libraryVersion: String { String(cString: clz4_version_string()) }

    /// A codec with `acceleration` in `accelerationRange`, checked by
    /// `CodecChoice`, which is how the daemon makes one.
    public init(acceleration: Int = LZ4Codec.defaultAcceleration) {
        precondition(Self.accelerationRange.contains(acceleration), "lz4 acceleration \(acceleration) out of range")
        self.acceleration = acceleration
    }

    public func compress(
        page: UnsafeRawBufferPointer,
        into destination: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) -> Int {
        let (source, output) = try compressionBuffers(
            page: page, destination: destination, worstCase: Self.maxCompressedSize)
        var compressedLength = 0
        let status = clz4_compress(source, pageSize, output, destination.count, Int32(acceleration), &compressedLength)
        switch Int(status) {
        case CLZ4_OK: return compressedLength
        case CLZ4_OUT_OF_MEMORY: throw .outOfMemory
        default: throw .corrupt(code: status)
        }
    }

    public func decompress(
        _ source: UnsafeRawBufferPointer,
        into page: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) {
        let (input, output) = try decompressionBuffers(source: source, page: page)
        var decompressedLength = 0
        let status = clz4_decompress(input, source.count, output, pageSize, &decompressedLength)
        // liblz4 says only "malformed", not where: one code for all of it.
        guard Int(status) == CLZ4_OK else { throw .corrupt(code: status) }
        guard decompressedLength == pageSize else { throw .shortOutput(decompressedLength) }
    }
}
