public import NIOCore

/// One transmission request as it arrived.
public struct NBDRequest: Equatable, Sendable {
    public var flags: UInt16
    public var type: NBDCommand
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32
    /// A WRITE's data; nil for other commands and for a write whose payload
    /// was over the limit (then `payloadDropped`).
    public var payload: ByteBuffer?
    /// The payload was larger than the export accepts: it was read and
    /// thrown away so that the stream stays in step, and the request fails.
    public var payloadDropped = false

    public init(
        flags: UInt16, type: NBDCommand, cookie: UInt64, offset: UInt64, length: UInt32, payload: ByteBuffer? = nil
    ) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
        self.payload = payload
    }

    public static let headerSize = 28
}

/// Cuts the client's byte stream into handshake messages and requests. Pure:
/// it reads from a buffer the caller fills; nothing here touches a socket.
///
/// During the handshake a frame is cut only once all of it is in the
/// caller's buffer (options are small and rare). In transmission the parser
/// takes every byte it is handed: a partial request header waits in a
/// 28-byte buffer of its own, and a WRITE's payload that has not arrived
/// whole is copied, as it arrives, into a buffer of its own. So the caller
/// never has to append one socket read to the rest of the last (which would
/// grow a buffer past the read's size and copy every byte once more), and
/// its receive buffers can go back to the channel's pool once parsed.
///
/// `ownPayloads`: every payload gets a buffer of its own, also one that
/// arrived whole, for a server that hands writes to other threads: such a
/// payload then shares no storage with a receive buffer the event loop will
/// write into again (that a worker has dropped its reference is seen through
/// a reference count, which gives ThreadSanitizer no happens-before edge).
/// Otherwise a payload that arrived whole in one read is a slice of it: no
/// copy, for a server that runs writes on the loop.
public struct NBDFrameParser: Sendable {
    public enum Phase: Sendable, Equatable {
        case clientFlags
        case options
        case transmission
    }

    public enum Frame: Equatable, Sendable {
        case handshake(NBDHandshakeMessage)
        case request(NBDRequest)
        /// The stream cannot be understood any more (bad magic): close.
        case protocolError(String)
    }

    public var phase: Phase = .clientFlags
    /// Largest option data kept; longer options are skipped and refused.
    public let maximumOptionLength: Int
    /// Largest WRITE payload kept; longer ones are skipped and refused.
    public let maximumPayload: Int
    /// Bytes still to throw away (the rest of an oversized payload).
    private var skipping = 0
    /// The start of a request header whose rest has not arrived.
    private var partialHeader: ByteBuffer
    /// A WRITE whose payload is still arriving, with the bytes so far.
    private var partialWrite: NBDRequest?
    public let ownPayloads: Bool
    private let allocator: ByteBufferAllocator

    public init(
        maximumPayload: Int, maximumOptionLength: Int = 64 << 10, ownPayloads: Bool = true,
        allocator: ByteBufferAllocator = .init()
    ) {
        self.maximumPayload = maximumPayload
        self.maximumOptionLength = maximumOptionLength
        self.ownPayloads = ownPayloads
        self.allocator = allocator
        partialHeader = allocator.buffer(capacity: NBDRequest.headerSize)
    }

    /// No frame is partly consumed: no header or payload half-received and
    /// no oversized payload or option half-skipped. (Before transmission,
    /// the rest of an incomplete frame stays in the caller's buffer.)
    public var isBetweenFrames: Bool {
        skipping == 0 && partialWrite == nil && partialHeader.readableBytes == 0
    }

    /// The next complete frame at the front of `buffer`, consuming it; nil
    /// when more bytes are needed.
    public mutating func next(_ buffer: inout ByteBuffer) -> Frame? {
        dropSkippedBytes(&buffer)
        if skipping > 0 { return nil }
        switch phase {
        case .clientFlags:
            guard let flags = buffer.readInteger(as: UInt32.self) else { return nil }
            phase = .options
            return .handshake(.clientFlags(flags))
        case .options:
            return nextOption(&buffer)
        case .transmission:
            return nextRequest(&buffer)
        }
    }

    private mutating func nextOption(_ buffer: inout ByteBuffer) -> Frame? {
        guard
            let (magic, code, length) = buffer.getMultipleIntegers(
                at: buffer.readerIndex, as: (UInt64, UInt32, UInt32).self)
        else { return nil }
        guard magic == NBDMagic.option else {
            return .protocolError("bad option magic 0x\(String(magic, radix: 16))")
        }
        if Int(length) > maximumOptionLength {
            buffer.moveReaderIndex(forwardBy: 16)
            skipping = Int(length)
            dropSkippedBytes(&buffer)
            return .handshake(.oversizedOption(code: code, length: length))
        }
        guard buffer.readableBytes >= 16 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 16)
        let data = buffer.readSlice(length: Int(length))!
        return .handshake(.option(code: code, data: data))
    }

    private mutating func nextRequest(_ buffer: inout ByteBuffer) -> Frame? {
        if partialWrite != nil { return continueWrite(&buffer) }
        var header: ByteBuffer
        if partialHeader.readableBytes > 0 || buffer.readableBytes < NBDRequest.headerSize {
            let wanted = NBDRequest.headerSize - partialHeader.readableBytes
            var arrived = buffer.readSlice(length: min(wanted, buffer.readableBytes))!
            partialHeader.writeBuffer(&arrived)
            guard partialHeader.readableBytes == NBDRequest.headerSize else { return nil }
            header = partialHeader
            partialHeader.clear()
        } else {
            header = buffer.readSlice(length: NBDRequest.headerSize)!
        }
        let (magic, flags, type, cookie, offset, length) = header.readMultipleIntegers(
            as: (UInt32, UInt16, UInt16, UInt64, UInt64, UInt32).self)!
        guard magic == NBDMagic.request else {
            return .protocolError("bad request magic 0x\(String(magic, radix: 16))")
        }
        var request = NBDRequest(
            flags: flags, type: NBDCommand(rawValue: type), cookie: cookie, offset: offset, length: length)
        guard request.type == .write, length > 0 else { return .request(request) }
        if Int(length) > maximumPayload {
            request.payloadDropped = true
            skipping = Int(length)
            dropSkippedBytes(&buffer)
            return .request(request)
        }
        if !ownPayloads, buffer.readableBytes >= Int(length) {
            request.payload = buffer.readSlice(length: Int(length))
            return .request(request)
        }
        request.payload = allocator.buffer(capacity: Int(length))
        partialWrite = request
        return continueWrite(&buffer)
    }

    /// Copies what has arrived of the pending WRITE's payload; the request
    /// once the payload is whole.
    private mutating func continueWrite(_ buffer: inout ByteBuffer) -> Frame? {
        var request = partialWrite!
        partialWrite = nil  // the payload's storage stays uniquely held
        let missing = Int(request.length) - request.payload!.readableBytes
        var arrived = buffer.readSlice(length: min(missing, buffer.readableBytes))!
        request.payload!.writeBuffer(&arrived)
        guard request.payload!.readableBytes == Int(request.length) else {
            partialWrite = request
            return nil
        }
        return .request(request)
    }

    /// Throws away as much of an oversized payload as has arrived.
    private mutating func dropSkippedBytes(_ buffer: inout ByteBuffer) {
        let dropped = min(skipping, buffer.readableBytes)
        buffer.moveReaderIndex(forwardBy: dropped)
        skipping -= dropped
    }
}
