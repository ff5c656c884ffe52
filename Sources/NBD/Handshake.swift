public import NIOCore

/// What a connection negotiated before transmission.
public struct NBDSession: Sendable, Equatable {
    /// NBD_OPT_STRUCTURED_REPLY was acknowledged.
    public var structuredReplies = false
    /// base:allocation was selected by NBD_OPT_SET_META_CONTEXT.
    public var allocationContext = false
    /// The client asked for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO, and so agreed
    /// to the export's block sizes; otherwise the minimum block size is 1.
    public var blockSizesAgreed = false

    public init() {}
}

/// One handshake message from the client, as the frame parser cuts it.
public enum NBDHandshakeMessage: Equatable, Sendable {
    case clientFlags(UInt32)
    case option(code: UInt32, data: ByteBuffer)
    /// An option whose data is over the parser's limit; the data is skipped.
    case oversizedOption(code: UInt32, length: UInt32)
}

/// The fixed-newstyle handshake as a pure state machine: each client message
/// goes in, the reply bytes come out in `output`, and the outcome says
/// whether to go on, start transmission, or close. No sockets here.
public struct NBDHandshake: Sendable {
    public enum Outcome: Equatable, Sendable {
        case proceed
        case transmission(NBDSession)
        case close(reason: String)
    }

    /// The context id this server gives `base:allocation`.
    public static let allocationContextID: UInt32 = 1

    let export: NBDExport
    private var clientFlags: UInt32?
    private var session = NBDSession()

    public init(export: NBDExport) {
        self.export = export
    }

    /// The server's greeting: NBDMAGIC, IHAVEOPT and the handshake flags.
    public static func greeting(into output: inout ByteBuffer) {
        output.writeInteger(NBDMagic.nbd)
        output.writeInteger(NBDMagic.option)
        output.writeInteger(NBDHandshakeFlag.fixedNewstyle | NBDHandshakeFlag.noZeroes)
    }

    var noZeroes: Bool { (clientFlags ?? 0) & NBDClientFlag.noZeroes != 0 }

    public mutating func receive(_ message: NBDHandshakeMessage, into output: inout ByteBuffer) -> Outcome {
        switch message {
        case .clientFlags(let flags):
            guard clientFlags == nil else { return .close(reason: "client flags sent twice") }
            guard flags & ~NBDClientFlag.known == 0 else {
                return .close(reason: "unknown client flags 0x\(String(flags, radix: 16))")
            }
            clientFlags = flags
            return .proceed
        case .oversizedOption(let code, _):
            Self.reply(code, .errTooBig, into: &output, message: "option data too large")
            return .proceed
        case .option(let code, var data):
            return option(code, data: &data, into: &output)
        }
    }

    private mutating func option(_ code: UInt32, data: inout ByteBuffer, into output: inout ByteBuffer) -> Outcome {
        guard let option = NBDOption(rawValue: code) else {
            Self.reply(code, .errUnsupported, into: &output, message: "unknown option \(code)")
            return .proceed
        }
        switch option {
        case .exportName:
            let name = data.readString(length: data.readableBytes) ?? ""
            guard export.answers(to: name) else { return .close(reason: "unknown export \"\(name)\"") }
            output.writeInteger(UInt64(export.device.byteCount))
            output.writeInteger(export.transmissionFlags)
            if !noZeroes { output.writeRepeatingByte(0, count: 124) }
            return .transmission(session)
        case .abort:
            Self.reply(code, .ack, into: &output)
            return .close(reason: "client aborted the handshake")
        case .list:
            guard data.readableBytes == 0 else {
                Self.reply(code, .errInvalid, into: &output, message: "NBD_OPT_LIST takes no data")
                return .proceed
            }
            var payload = ByteBuffer()
            payload.writeInteger(UInt32(export.name.utf8.count))
            payload.writeString(export.name)
            payload.writeString(export.description)
            Self.reply(code, .server, payload: payload, into: &output)
            Self.reply(code, .ack, into: &output)
            return .proceed
        case .info, .go:
            return infoOrGo(option, data: &data, into: &output)
        case .structuredReply:
            guard data.readableBytes == 0 else {
                Self.reply(code, .errInvalid, into: &output, message: "NBD_OPT_STRUCTURED_REPLY takes no data")
                return .proceed
            }
            session.structuredReplies = true
            Self.reply(code, .ack, into: &output)
            return .proceed
        case .listMetaContext, .setMetaContext:
            metaContext(option, data: &data, into: &output)
            return .proceed
        case .startTLS:
            Self.reply(code, .errUnsupported, into: &output, message: "this server does not offer TLS")
            return .proceed
        case .peekExport, .extendedHeaders:
            Self.reply(code, .errUnsupported, into: &output, message: "option \(code) is not supported")
            return .proceed
        }
    }

    private mutating func infoOrGo(
        _ option: NBDOption, data: inout ByteBuffer, into output: inout ByteBuffer
    )
        -> Outcome
    {
        let code = option.rawValue
        guard let nameLength = data.readInteger(as: UInt32.self), nameLength <= data.readableBytes,
            let name = data.readString(length: Int(nameLength)),
            let count = data.readInteger(as: UInt16.self), data.readableBytes == Int(count) * 2
        else {
            Self.reply(code, .errInvalid, into: &output, message: "malformed NBD_OPT_INFO/GO")
            return .proceed
        }
        guard export.answers(to: name) else {
            Self.reply(code, .errUnknown, into: &output, message: "no export named \"\(name)\"")
            return .proceed
        }
        var requested: Set<UInt16> = []
        for _ in 0..<count { requested.insert(data.readInteger(as: UInt16.self)!) }
        // Only GO binds the client to the sizes; INFO lets it look first.
        let agreesToBlockSizes = option == .go && requested.contains(NBDInfo.blockSize.rawValue)

        var info = ByteBuffer()
        info.writeInteger(NBDInfo.export.rawValue)
        info.writeInteger(UInt64(export.device.byteCount))
        info.writeInteger(export.transmissionFlags)
        Self.reply(code, .info, payload: info, into: &output)
        if requested.contains(NBDInfo.name.rawValue) {
            info.clear()
            info.writeInteger(NBDInfo.name.rawValue)
            info.writeString(export.name)
            Self.reply(code, .info, payload: info, into: &output)
        }
        if requested.contains(NBDInfo.description.rawValue) {
            info.clear()
            info.writeInteger(NBDInfo.description.rawValue)
            info.writeString(export.description)
            Self.reply(code, .info, payload: info, into: &output)
        }
        // Block sizes always: a client that did not ask may still use them
        // as hints, though only one that asked is held to them.
        info.clear()
        info.writeInteger(NBDInfo.blockSize.rawValue)
        info.writeInteger(UInt32(export.minimumBlockSize))
        info.writeInteger(UInt32(export.preferredBlockSize))
        info.writeInteger(UInt32(export.maximumPayload))
        Self.reply(code, .info, payload: info, into: &output)
        Self.reply(code, .ack, into: &output)
        guard option == .go else { return .proceed }
        session.blockSizesAgreed = agreesToBlockSizes
        return .transmission(session)
    }

    private mutating func metaContext(_ option: NBDOption, data: inout ByteBuffer, into output: inout ByteBuffer) {
        let code = option.rawValue
        if option == .setMetaContext, !session.structuredReplies {
            Self.reply(code, .errInvalid, into: &output, message: "negotiate structured replies first")
            return
        }
        guard let nameLength = data.readInteger(as: UInt32.self), nameLength <= data.readableBytes,
            let name = data.readString(length: Int(nameLength)),
            let count = data.readInteger(as: UInt32.self)
        else {
            Self.reply(code, .errInvalid, into: &output, message: "malformed meta context request")
            return
        }
        var queries: [String] = []
        for _ in 0..<count {
            guard let length = data.readInteger(as: UInt32.self), length <= data.readableBytes,
                let query = data.readString(length: Int(length))
            else {
                Self.reply(code, .errInvalid, into: &output, message: "malformed meta context query")
                return
            }
            queries.append(query)
        }
        guard data.readableBytes == 0 else {
            Self.reply(code, .errInvalid, into: &output, message: "trailing bytes in meta context request")
            return
        }
        guard export.answers(to: name) else {
            Self.reply(code, .errUnknown, into: &output, message: "no export named \"\(name)\"")
            return
        }
        // LIST with no queries lists every context; "base:" names the whole
        // namespace when listing. SET selects exactly the contexts it names.
        let matches =
            queries.contains(NBDAllocationFlag.contextName)
            || (option == .listMetaContext && (queries.isEmpty || queries.contains("base:")))
        if option == .setMetaContext { session.allocationContext = matches }
        if matches {
            var payload = ByteBuffer()
            payload.writeInteger(Self.allocationContextID)
            payload.writeString(NBDAllocationFlag.contextName)
            Self.reply(code, .metaContext, payload: payload, into: &output)
        }
        Self.reply(code, .ack, into: &output)
    }

    /// Writes one option reply; error replies carry a message for humans.
    static func reply(
        _ option: UInt32, _ type: NBDOptionReply, payload: ByteBuffer? = nil, into output: inout ByteBuffer,
        message: String? = nil
    ) {
        output.writeInteger(NBDMagic.optionReply)
        output.writeInteger(option)
        output.writeInteger(type.rawValue)
        if let payload {
            output.writeInteger(UInt32(payload.readableBytes))
            output.writeImmutableBuffer(payload)
        } else if let message {
            output.writeInteger(UInt32(message.utf8.count))
            output.writeString(message)
        } else {
            output.writeInteger(UInt32(0))
        }
    }
}
