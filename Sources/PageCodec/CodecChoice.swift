/// The compressors a device can use. The raw value is what a slot records
/// for the pages a codec wrote (zram keeps a priority in its slot flags), so
/// it must never change for an algorithm.
public enum CompressionAlgorithm: UInt8, CaseIterable, Sendable, CustomStringConvertible {
    case lzo = 0
    case lz4 = 1
    case zstd = 2

    /// The name zram's `comp_algorithm` uses.
    public var description: String {
        switch self {
        case .lzo: "lzo"
        case .lz4: "lz4"
        case .zstd: "zstd"
        }
    }

    public init?(name: String) {
        guard let algorithm = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = algorithm
    }
}

/// An algorithm and its one parameter: zstd's level, lz4's acceleration
/// (LZO1X-1 has none). Written as zram takes it, `--algorithm zstd
/// --algorithm-params level=9`, or in one word, `zstd:9`.
public struct CodecChoice: Sendable, Equatable, CustomStringConvertible {
    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    public let algorithm: CompressionAlgorithm
    /// zstd's level or lz4's acceleration; nil for the library's default.
    public let level: Int?

    public static let lzo = CodecChoice(validated: .lzo, level: nil)

    public init(_ algorithm: CompressionAlgorithm, level: Int? = nil) throws(Invalid) {
        if let level {
            switch algorithm {
            case .lzo:
                throw Invalid(description: "lzo takes no parameters (got level \(level))")
            case .lz4 where !LZ4Codec.accelerationRange.contains(level):
                throw Invalid(description: "lz4 acceleration must be in \(LZ4Codec.accelerationRange), got \(level)")
            case .zstd where !ZstdCodec.levelRange.contains(level):
                throw Invalid(description: "zstd level must be in \(ZstdCodec.levelRange), got \(level)")
            default:
                break
            }
        }
        self.init(validated: algorithm, level: level)
    }

    private init(validated algorithm: CompressionAlgorithm, level: Int?) {
        self.algorithm = algorithm
        self.level = level
    }

    /// `lzo`, `lz4`, `lz4:ACCELERATION`, `zstd` or `zstd:LEVEL`.
    public static func parse(_ text: String) throws(Invalid) -> CodecChoice {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        let algorithm = try algorithm(named: String(parts[0]))
        guard parts.count == 2 else { return try CodecChoice(algorithm) }
        guard let level = Int(parts[1]) else {
            throw Invalid(description: "'\(parts[1])' in '\(text)' is not a whole number")
        }
        return try CodecChoice(algorithm, level: level)
    }

    /// An algorithm's name and zram's `algorithm_params` text: `level=N`
    /// (lz4 takes it as its acceleration, as the kernel does, or as
    /// `acceleration=N`). Empty params: the library's default.
    public static func parse(algorithm name: String, params: String) throws(Invalid) -> CodecChoice {
        try parse(algorithm: try algorithm(named: name), params: params)
    }

    /// As `parse(algorithm:params:)`, for an algorithm already known.
    public static func parse(algorithm: CompressionAlgorithm, params: String) throws(Invalid) -> CodecChoice {
        var level: Int?
        for field in params.split(whereSeparator: { $0 == " " || $0 == "," }) {
            let pair = field.split(separator: "=", maxSplits: 1)
            let known = algorithm == .lz4 ? ["level", "acceleration"] : ["level"]
            guard pair.count == 2, known.contains(String(pair[0])) else {
                let expected = algorithm == .lzo ? "none" : known.map { "\($0)=N" }.joined(separator: " or ")
                throw Invalid(description: "unknown \(algorithm) parameter '\(field)' (expected \(expected))")
            }
            guard let value = Int(pair[1]) else {
                throw Invalid(description: "'\(pair[1])' in '\(field)' is not a whole number")
            }
            level = value
        }
        return try CodecChoice(algorithm, level: level)
    }

    private static func algorithm(named name: String) throws(Invalid) -> CompressionAlgorithm {
        guard let algorithm = CompressionAlgorithm(name: name) else {
            let known = CompressionAlgorithm.allCases.map(\.description).joined(separator: ", ")
            throw Invalid(description: "unknown algorithm '\(name)' (known: \(known))")
        }
        return algorithm
    }

    /// `zstd:9`, or the bare name for the library's default.
    public var description: String { level.map { "\(algorithm):\($0)" } ?? algorithm.description }

    /// zram's `algorithm_params` text for this choice, empty for defaults.
    public var params: String {
        guard let level else { return "" }
        return "level=\(level)"
    }

    /// The codec this choice names.
    public func makeCodec() throws(Invalid) -> AnyPageCodec {
        switch algorithm {
        case .lzo:
            do {
                return .lzo(try LZO1X1Codec())
            } catch {
                throw Invalid(description: error.description)
            }
        case .lz4: return .lz4(LZ4Codec(acceleration: level ?? LZ4Codec.defaultAcceleration))
        case .zstd: return .zstd(ZstdCodec(level: level ?? ZstdCodec.defaultLevel))
        }
    }
}

/// One of the codecs, chosen at run time, without an existential's boxing:
/// a switch per page.
public enum AnyPageCodec: PageCodec {
    case lzo(LZO1X1Codec)
    case lz4(LZ4Codec)
    case zstd(ZstdCodec)

    public var algorithm: CompressionAlgorithm {
        switch self {
        case .lzo: .lzo
        case .lz4: .lz4
        case .zstd: .zstd
        }
    }

    public var name: String { algorithm.description }

    public var maxCompressedSize: Int {
        switch self {
        case .lzo(let codec): codec.maxCompressedSize
        case .lz4(let codec): codec.maxCompressedSize
        case .zstd(let codec): codec.maxCompressedSize
        }
    }

    /// The largest worst case of any algorithm: a buffer this big serves
    /// every codec.
    public static let largestMaxCompressedSize = max(
        LZO1X1Codec.maxCompressedSize, LZ4Codec.maxCompressedSize, ZstdCodec.maxCompressedSize)

    public func compress(
        page: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) -> Int {
        switch self {
        case .lzo(let codec): try codec.compress(page: page, into: destination)
        case .lz4(let codec): try codec.compress(page: page, into: destination)
        case .zstd(let codec): try codec.compress(page: page, into: destination)
        }
    }

    public func decompress(
        _ source: UnsafeRawBufferPointer, into page: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) {
        switch self {
        case .lzo(let codec): try codec.decompress(source, into: page)
        case .lz4(let codec): try codec.decompress(source, into: page)
        case .zstd(let codec): try codec.decompress(source, into: page)
        }
    }
}

/// Decompresses a page written by any algorithm: the algorithm's parameter
/// matters only when compressing, so one decoder serves every page.
public struct PageDecoder: Sendable {
    private let lzo: LZO1X1Codec

    public init() throws(LZO1X1Codec.InitializationError) {
        lzo = try LZO1X1Codec()
    }

    @inline(__always)
    public func decompress(
        _ source: UnsafeRawBufferPointer, algorithm: CompressionAlgorithm, into page: UnsafeMutableRawBufferPointer
    ) throws(PageCodecError) {
        switch algorithm {
        case .lzo: try lzo.decompress(source, into: page)
        case .lz4: try LZ4Codec().decompress(source, into: page)
        case .zstd: try ZstdCodec().decompress(source, into: page)
        }
    }
}
