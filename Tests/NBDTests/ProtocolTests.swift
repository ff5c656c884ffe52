import BlockDevice
import NBD
import NIOCore
import Testing

@Suite("NBD protocol state machines, without sockets")
struct ProtocolTests {
    static func export(readOnly: Bool = false) throws -> NBDExport {
        NBDExport(name: "disk", description: "d", device: try MemoryBlockDevice(byteCount: 1 << 20), readOnly: readOnly)
    }

    static func option(_ code: NBDOption, _ data: [UInt8] = []) -> NBDHandshakeMessage {
        .option(code: code.rawValue, data: ByteBuffer(bytes: data))
    }

    /// Option reply types in `output`, in order.
    static func replyTypes(_ output: ByteBuffer) -> [UInt32] {
        var output = output
        var types: [UInt32] = []
        while let (magic, _, type, length) = output.readMultipleIntegers(as: (UInt64, UInt32, UInt32, UInt32).self) {
            #expect(magic == NBDMagic.optionReply)
            types.append(type)
            output.moveReaderIndex(forwardBy: Int(length))
        }
        return types
    }

    static func goData(_ name: String, infos: [UInt16] = []) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(name.utf8.count))
        buffer.writeString(name)
        buffer.writeInteger(UInt16(infos.count))
        for info in infos { buffer.writeInteger(info) }
        return Array(buffer.readableBytesView)
    }

    @Test("GO answers EXPORT, NAME, DESCRIPTION and BLOCK_SIZE, then ACK, and starts transmission")
    func go() throws {
        var handshake = NBDHandshake(export: try Self.export())
        var output = ByteBuffer()
        #expect(
            handshake.receive(.clientFlags(NBDClientFlag.fixedNewstyle | NBDClientFlag.noZeroes), into: &output)
                == .proceed)
        #expect(handshake.receive(Self.option(.structuredReply), into: &output) == .proceed)
        let context = Array("base:allocation".utf8)
        var meta = ByteBuffer()
        meta.writeInteger(UInt32(4))
        meta.writeString("disk")
        meta.writeInteger(UInt32(1))
        meta.writeInteger(UInt32(context.count))
        meta.writeBytes(context)
        #expect(
            handshake.receive(.option(code: NBDOption.setMetaContext.rawValue, data: meta), into: &output) == .proceed)
        let outcome = handshake.receive(Self.option(.go, Self.goData("disk", infos: [1, 2, 3])), into: &output)
        var session = NBDSession()
        session.structuredReplies = true
        session.allocationContext = true
        session.blockSizesAgreed = true
        #expect(outcome == .transmission(session))
        #expect(Self.replyTypes(output) == [1, 4, 1, 3, 3, 3, 3, 1])
    }

    @Test("errors: unknown option, unknown export, malformed GO, meta context before structured replies, STARTTLS")
    func refusals() throws {
        var handshake = NBDHandshake(export: try Self.export())
        var output = ByteBuffer()
        _ = handshake.receive(.clientFlags(NBDClientFlag.fixedNewstyle), into: &output)
        #expect(handshake.receive(.option(code: 77, data: ByteBuffer()), into: &output) == .proceed)
        #expect(handshake.receive(Self.option(.go, Self.goData("nope")), into: &output) == .proceed)
        #expect(handshake.receive(Self.option(.go, [0, 0, 0, 9]), into: &output) == .proceed)
        #expect(handshake.receive(Self.option(.setMetaContext, Self.goData("disk")), into: &output) == .proceed)
        #expect(handshake.receive(Self.option(.startTLS), into: &output) == .proceed)
        #expect(handshake.receive(Self.option(.list, [1]), into: &output) == .proceed)
        #expect(handshake.receive(.oversizedOption(code: 7, length: 1 << 30), into: &output) == .proceed)
        let reply = NBDOptionReply.self
        #expect(
            Self.replyTypes(output)
                == [
                    reply.errUnsupported, reply.errUnknown, reply.errInvalid, reply.errInvalid, reply.errUnsupported,
                    reply.errInvalid,
                    reply.errTooBig,
                ].map(\.rawValue))
        #expect(handshake.receive(Self.option(.abort), into: &output) != .proceed)
    }

    @Test("EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES; an unknown name closes")
    func exportName() throws {
        for noZeroes in [false, true] {
            var handshake = NBDHandshake(export: try Self.export(readOnly: true))
            var output = ByteBuffer()
            _ = handshake.receive(
                .clientFlags(NBDClientFlag.fixedNewstyle | (noZeroes ? NBDClientFlag.noZeroes : 0)), into: &output)
            #expect(
                handshake.receive(Self.option(.exportName, Array("disk".utf8)), into: &output)
                    == .transmission(NBDSession()))
            #expect(output.readableBytes == (noZeroes ? 10 : 134))
            #expect(output.readInteger(as: UInt64.self) == 1 << 20)
            let flags = output.readInteger(as: UInt16.self)!
            #expect(flags & NBDTransmissionFlag.readOnly != 0 && flags & NBDTransmissionFlag.sendTrim == 0)
        }
        var handshake = NBDHandshake(export: try Self.export())
        var output = ByteBuffer()
        _ = handshake.receive(.clientFlags(0), into: &output)
        if case .close = handshake.receive(Self.option(.exportName, Array("other".utf8)), into: &output) {
        } else {
            Issue.record("an unknown export name must close the connection")
        }
    }

    @Test("the parser cuts the same frames from a stream however it is split")
    func parserSplits() {
        var stream = ByteBuffer()
        stream.writeInteger(NBDClientFlag.fixedNewstyle)
        stream.writeMultipleIntegers(NBDMagic.option, NBDOption.structuredReply.rawValue, UInt32(0))
        stream.writeMultipleIntegers(NBDMagic.option, NBDOption.exportName.rawValue, UInt32(4))
        stream.writeString("disk")
        stream.writeMultipleIntegers(
            NBDMagic.request, UInt16(0), NBDCommand.write.rawValue, UInt64(7), UInt64(4096), UInt32(8))
        stream.writeBytes([1, 2, 3, 4, 5, 6, 7, 8])
        stream.writeMultipleIntegers(
            NBDMagic.request, UInt16(0), NBDCommand.write.rawValue, UInt64(8), UInt64(0), UInt32(64))
        stream.writeRepeatingByte(9, count: 64)  // over a 32-byte limit: skipped
        stream.writeMultipleIntegers(
            NBDMagic.request, UInt16(0), NBDCommand.read.rawValue, UInt64(9), UInt64(0), UInt32(512))
        let bytes = Array(stream.readableBytesView)

        func parse(chunk: Int) -> [NBDFrameParser.Frame] {
            var parser = NBDFrameParser(maximumPayload: 32)
            var buffer = ByteBuffer()
            var frames: [NBDFrameParser.Frame] = []
            var fed = 0
            while fed < bytes.count {
                let end = min(bytes.count, fed + chunk)
                buffer.writeBytes(bytes[fed..<end])
                fed = end
                while let frame = parser.next(&buffer) {
                    frames.append(frame)
                    // The handshake ends with EXPORT_NAME (the 3rd frame).
                    if frames.count == 3 { parser.phase = .transmission }
                }
            }
            #expect(buffer.readableBytes == 0)
            return frames
        }
        let whole = parse(chunk: bytes.count)
        #expect(whole.count == 6)
        if case .request(let dropped) = whole[4] { #expect(dropped.payloadDropped && dropped.cookie == 8) }
        if case .request(let read) = whole[5] { #expect(read.cookie == 9 && read.length == 512) }
        for chunk in [1, 2, 3, 7, 13, 28, 29] { #expect(parse(chunk: chunk) == whole, "chunk \(chunk)") }
    }

    @Test("in transmission the parser takes every byte it is handed; payloads are buffers of their own or slices")
    func parserConsumesEachRead() {
        var stream = ByteBuffer()
        let sizes = [8, 4096, 5000, 7000, 1]
        for (index, size) in sizes.enumerated() {
            stream.writeMultipleIntegers(
                NBDMagic.request, UInt16(0), NBDCommand.write.rawValue, UInt64(index), UInt64(0), UInt32(size))
            stream.writeRepeatingByte(UInt8(index + 1), count: size)  // 7000: over the limit below, skipped
            stream.writeMultipleIntegers(
                NBDMagic.request, UInt16(0), NBDCommand.read.rawValue, UInt64(100 + index), UInt64(0), UInt32(512))
        }
        let bytes = Array(stream.readableBytesView)

        func parse(chunk: Int, ownPayloads: Bool = true) -> [NBDFrameParser.Frame] {
            var parser = NBDFrameParser(maximumPayload: 6000, ownPayloads: ownPayloads)
            parser.phase = .transmission
            var frames: [NBDFrameParser.Frame] = []
            var fed = 0
            while fed < bytes.count {
                // Each read in a buffer of its own, as the channel hands them.
                let end = min(bytes.count, fed + chunk)
                var read = ByteBuffer(bytes: bytes[fed..<end])
                fed = end
                while let frame = parser.next(&read) { frames.append(frame) }
                #expect(read.readableBytes == 0, "chunk \(chunk): \(read.readableBytes) bytes left to the caller")
            }
            return frames
        }
        let whole = parse(chunk: bytes.count)
        #expect(whole.count == 2 * sizes.count)
        for frame in whole {
            guard case .request(let request) = frame, request.type == .write else { continue }
            if Int(request.length) > 6000 {
                #expect(request.payloadDropped && request.payload == nil)
            } else {
                let payload = request.payload!
                #expect(payload.readableBytes == Int(request.length))
                #expect(payload.readableBytesView.allSatisfy { $0 == UInt8(request.cookie + 1) })
                // Its own storage: no larger than the next power of two.
                #expect(payload.capacity < 2 * Int(request.length))
            }
        }
        for chunk in [1, 2, 3, 7, 13, 27, 28, 29, 4096, 4125] {
            #expect(parse(chunk: chunk) == whole, "chunk \(chunk)")
            // Slices where a payload arrived whole: the same frames.
            #expect(parse(chunk: chunk, ownPayloads: false) == whole, "chunk \(chunk), slices")
        }
    }

    @Test("a request with a bad magic is a protocol error")
    func badMagic() {
        var parser = NBDFrameParser(maximumPayload: 1 << 20)
        parser.phase = .transmission
        var buffer = ByteBuffer(bytes: [UInt8](repeating: 0x42, count: 28))
        if case .protocolError = parser.next(&buffer) {} else { Issue.record("expected a protocol error") }
    }
}
