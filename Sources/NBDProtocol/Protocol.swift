// The NBD protocol's numbers, as the specification (doc/proto.md of the
// NetworkBlockDevice project) names them. Fixed newstyle only: oldstyle is
// obsolete and not served.

/// Magic numbers on the wire (big-endian).
public enum NBDMagic {
    public static let nbd: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
    public static let option: UInt64 = 0x4948_4156_454F_5054  // "IHAVEOPT"
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    public static let request: UInt32 = 0x2560_9513
    public static let simpleReply: UInt32 = 0x6744_6698
    public static let structuredReply: UInt32 = 0x668e_33ef
}

/// Handshake flags the server sends (16 bits).
public enum NBDHandshakeFlag {
    public static let fixedNewstyle: UInt16 = 1 << 0
    public static let noZeroes: UInt16 = 1 << 1
}

/// Flags the client answers with (32 bits).
public enum NBDClientFlag {
    public static let fixedNewstyle: UInt32 = 1 << 0
    public static let noZeroes: UInt32 = 1 << 1
    public static let known: UInt32 = fixedNewstyle | noZeroes
}

/// Option codes (NBD_OPT_*).
public enum NBDOption: UInt32, Sendable, CaseIterable {
    case exportName = 1
    case abort = 2
    case list = 3
    case peekExport = 4
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
    case extendedHeaders = 11
}

/// Option reply types (NBD_REP_*); errors have bit 31 set.
public enum NBDOptionReply: UInt32, Sendable {
    case ack = 1
    case server = 2
    case info = 3
    case metaContext = 4
    case errUnsupported = 0x8000_0001
    case errPolicy = 0x8000_0002
    case errInvalid = 0x8000_0003
    case errPlatform = 0x8000_0004
    case errTLSRequired = 0x8000_0005
    case errUnknown = 0x8000_0006
    case errShutdown = 0x8000_0007
    case errBlockSizeRequired = 0x8000_0008
    case errTooBig = 0x8000_0009
}

/// Information types of NBD_REP_INFO (NBD_INFO_*).
public enum NBDInfo: UInt16, Sendable {
    case export = 0
    case name = 1
    case description = 2
    case blockSize = 3
}

/// Transmission flags (16 bits, NBD_FLAG_*).
public enum NBDTransmissionFlag {
    public static let hasFlags: UInt16 = 1 << 0
    public static let readOnly: UInt16 = 1 << 1
    public static let sendFlush: UInt16 = 1 << 2
    public static let sendFUA: UInt16 = 1 << 3
    public static let rotational: UInt16 = 1 << 4
    public static let sendTrim: UInt16 = 1 << 5
    public static let sendWriteZeroes: UInt16 = 1 << 6
    public static let sendDF: UInt16 = 1 << 7
    public static let canMultiConn: UInt16 = 1 << 8
    public static let sendResize: UInt16 = 1 << 9
    public static let sendCache: UInt16 = 1 << 10
    public static let sendFastZero: UInt16 = 1 << 11
}

/// Request types (NBD_CMD_*), and any other type a client sends.
public enum NBDCommand: Hashable, Sendable {
    case read
    case write
    case disconnect
    case flush
    case trim
    case cache
    case writeZeroes
    case blockStatus
    /// A type this server does not know: answered with EINVAL.
    case unknown(UInt16)

    /// The commands this server knows, in the order of their numbers.
    public static let known: [NBDCommand] = [
        .read, .write, .disconnect, .flush, .trim, .cache, .writeZeroes, .blockStatus,
    ]

    public init(rawValue: UInt16) {
        switch rawValue {
        case 0: self = .read
        case 1: self = .write
        case 2: self = .disconnect
        case 3: self = .flush
        case 4: self = .trim
        case 5: self = .cache
        case 6: self = .writeZeroes
        case 7: self = .blockStatus
        default: self = .unknown(rawValue)
        }
    }

    /// The number on the wire.
    public var rawValue: UInt16 {
        switch self {
        case .read: 0
        case .write: 1
        case .disconnect: 2
        case .flush: 3
        case .trim: 4
        case .cache: 5
        case .writeZeroes: 6
        case .blockStatus: 7
        case .unknown(let type): type
        }
    }

    /// The name used in statistics and logs ("unknown" for every unknown type).
    public var name: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .disconnect: "disc"
        case .flush: "flush"
        case .trim: "trim"
        case .cache: "cache"
        case .writeZeroes: "write_zeroes"
        case .blockStatus: "block_status"
        case .unknown: "unknown"
        }
    }
}

/// Command flags (16 bits, NBD_CMD_FLAG_*).
public enum NBDCommandFlag {
    public static let fua: UInt16 = 1 << 0
    public static let noHole: UInt16 = 1 << 1
    public static let dontFragment: UInt16 = 1 << 2
    public static let requestOne: UInt16 = 1 << 3
    public static let fastZero: UInt16 = 1 << 4
    public static let known: UInt16 = fua | noHole | dontFragment | requestOne | fastZero
}

/// Structured reply chunk types (NBD_REPLY_TYPE_*) and flags.
public enum NBDChunk {
    public static let flagDone: UInt16 = 1 << 0
    public static let none: UInt16 = 0
    public static let offsetData: UInt16 = 1
    public static let offsetHole: UInt16 = 2
    public static let blockStatus: UInt16 = 5
    public static let error: UInt16 = 0x8001
    public static let errorOffset: UInt16 = 0x8002
}

/// The errno values the protocol carries (they are fixed by the protocol,
/// whatever the host's errno numbering).
public enum NBDError: UInt32, Sendable, CaseIterable {
    case eperm = 1
    case eio = 5
    case enomem = 12
    case einval = 22
    case enospc = 28
    case eoverflow = 75
    case enotsup = 95
    case eshutdown = 108

    public var name: String {
        switch self {
        case .eperm: "EPERM"
        case .eio: "EIO"
        case .enomem: "ENOMEM"
        case .einval: "EINVAL"
        case .enospc: "ENOSPC"
        case .eoverflow: "EOVERFLOW"
        case .enotsup: "ENOTSUP"
        case .eshutdown: "ESHUTDOWN"
        }
    }
}

/// The `base:allocation` metadata context: flags of a block-status extent.
public enum NBDAllocationFlag {
    public static let hole: UInt32 = 1 << 0
    public static let zero: UInt32 = 1 << 1
    public static let contextName = "base:allocation"
}
