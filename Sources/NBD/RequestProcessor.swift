import BlockDevice
public import NIOCore

/// The bytes that answer one request: `head` (a simple reply, or structured
/// reply chunks), then for a large read its data in a buffer of its own.
/// NIO rounds a buffer's capacity up to a power of two, so a 32 MiB read
/// with its header in one buffer would reserve 64 MiB; apart, the data
/// buffer is exactly 32 MiB and nothing is copied.
public struct NBDReply: Sendable {
    public var head: ByteBuffer
    public var data: ByteBuffer?

    public init(head: ByteBuffer, data: ByteBuffer? = nil) {
        self.head = head
        self.data = data
    }

    /// Bytes on the wire.
    public var byteCount: Int { head.readableBytes + (data?.readableBytes ?? 0) }
}

/// Checks one transmission request against the export and the session, runs
/// it on the device, and encodes its reply. Pure apart from the device:
/// safe to call from any thread, and testable without sockets.
///
/// Alignment: a client that asked for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO has
/// agreed to the export's minimum block size (the device's: 1 for znbd's,
/// which serves any byte range, as nbdkit's memory plugin does), and
/// misaligned requests get EINVAL; any other client (NBD_OPT_EXPORT_NAME, or
/// GO without that request) gets the specification's default, a minimum
/// block size of 1.
public struct NBDRequestProcessor: Sendable {
    public let export: NBDExport
    public let session: NBDSession
    /// The most block-status descriptors one reply carries.
    public static let maximumExtents = 8_192
    /// Reads from this size up send their data in a buffer of its own.
    static let separateDataThreshold = 64 << 10

    public init(export: NBDExport, session: NBDSession) {
        self.export = export
        self.session = session
    }

    /// What running a request came to, for the counters.
    public struct Outcome: Sendable {
        public var command: NBDCommand
        public var error: NBDError?
        /// Payload bytes moved (read or written).
        public var bytes: Int
    }

    /// The most bytes the request holds until its reply has left, for
    /// back-pressure: a write's payload (held until the write is done), a
    /// read's data, block status at its most descriptors, a header for the
    /// rest. Never more than the request can really take: a write whose
    /// payload was dropped (over `maximumPayload`) holds none, and a read
    /// over `maximumPayload` is refused with an error, so it is charged at
    /// most that much. Charged its length, a read longer than the server's
    /// whole budget would wait for room forever, and its client with it.
    public static func replyBudget(for request: NBDRequest, maximumPayload: Int) -> Int {
        let header = 32
        switch request.type {
        case .read: return header + min(Int(request.length), maximumPayload)
        case .write: return header + (request.payload?.readableBytes ?? 0)
        case .blockStatus: return header + 8 * min(maximumExtents, Int(request.length) / 512 + 1)
        default: return header
        }
    }

    /// Runs `request` and returns the reply to send.
    public func process(_ request: NBDRequest, allocator: ByteBufferAllocator) -> (reply: NBDReply, outcome: Outcome) {
        let command = request.type
        var outcome = Outcome(command: command, error: nil, bytes: 0)
        if let error = validate(request, command: command) {
            outcome.error = error
            return (NBDReply(head: errorReply(request, error, command: command, allocator: allocator)), outcome)
        }
        // Clamped: FLUSH and DISC are not range-checked, and their offset
        // (reserved, meant to be zero) may be any 64-bit value. Every command
        // that uses it passed the range check, so it fits.
        let offset = Int(clamping: request.offset)
        let length = Int(request.length)
        let device = export.device
        do throws(BlockDeviceError) {
            switch command {
            case .read:
                outcome.bytes = length
                return (try readReply(request, allocator: allocator), outcome)
            case .write:
                if let payload = request.payload {
                    var failure: BlockDeviceError?
                    payload.withUnsafeReadableBytes { bytes in
                        do throws(BlockDeviceError) { try device.write(bytes, at: offset) } catch { failure = error }
                    }
                    if let failure { throw failure }
                }
                outcome.bytes = length
            case .trim:
                try device.discard(offset: offset, length: length)
                outcome.bytes = length
            case .writeZeroes:
                try device.writeZeroes(
                    offset: offset, length: length, mayDeallocate: request.flags & NBDCommandFlag.noHole == 0)
                outcome.bytes = length
            case .flush:
                try device.flush()
            case .cache:
                // Everything is in RAM already.
                break
            case .blockStatus:
                return (NBDReply(head: try blockStatusReply(request, allocator: allocator)), outcome)
            case .disconnect, .unknown:
                break
            }
        } catch {
            let code = Self.errno(for: error, command: command)
            outcome.error = code
            outcome.bytes = 0
            return (NBDReply(head: errorReply(request, code, command: command, allocator: allocator)), outcome)
        }
        return (NBDReply(head: simpleReply(request.cookie, error: nil, allocator: allocator)), outcome)
    }

    /// The protocol's checks, before the device sees anything. A refusal for
    /// the request's range, size or alignment is counted by the device as
    /// invalid I/O.
    func validate(_ request: NBDRequest, command: NBDCommand) -> NBDError? {
        if case .unknown = command { return .einval }
        guard request.flags & ~NBDCommandFlag.known == 0 else { return .einval }
        // Flags that only some commands take (FUA is accepted on any).
        let allowed: UInt16
        switch command {
        case .read: allowed = session.structuredReplies ? NBDCommandFlag.dontFragment : 0
        case .writeZeroes: allowed = NBDCommandFlag.noHole | NBDCommandFlag.fastZero
        case .blockStatus: allowed = NBDCommandFlag.requestOne
        default: allowed = 0
        }
        guard request.flags & ~(allowed | NBDCommandFlag.fua) == 0 else { return .einval }
        if request.payloadDropped {
            export.device.recordInvalidRequest()
            return .einval
        }
        switch command {
        case .flush, .disconnect:
            return nil
        case .write, .trim, .writeZeroes:
            if export.readOnly { return .eperm }
        case .read, .cache, .blockStatus, .unknown:
            break
        }
        if command == .blockStatus, !(session.structuredReplies && session.allocationContext) { return .einval }
        if let refusal = rangeRefusal(request, command: command) {
            export.device.recordInvalidRequest()
            return refusal
        }
        // Zero-length block status has no descriptor to answer with (each
        // must be nonzero): refused, the connection goes on.
        if command == .blockStatus, request.length == 0 { return .einval }
        return nil
    }

    /// Past the end, over the payload limit, or misaligned for a client that
    /// agreed to block sizes.
    func rangeRefusal(_ request: NBDRequest, command: NBDCommand) -> NBDError? {
        let size = UInt64(export.device.byteCount)
        let (end, overflow) = request.offset.addingReportingOverflow(UInt64(request.length))
        if overflow || end > size { return Self.pastTheEnd(command) }
        if command == .read, Int(request.length) > export.maximumPayload { return .einval }
        let alignment = UInt64(session.blockSizesAgreed ? export.minimumBlockSize : 1)
        guard request.offset % alignment == 0, UInt64(request.length) % alignment == 0 else { return .einval }
        return nil
    }

    /// The specification's errno for a range past the end: writes ask for
    /// space that is not there; anything else asks for bytes that are not.
    static func pastTheEnd(_ command: NBDCommand) -> NBDError {
        command == .write || command == .writeZeroes ? .enospc : .einval
    }

    static func errno(for error: BlockDeviceError, command: NBDCommand) -> NBDError {
        switch error {
        case .outOfRange: pastTheEnd(command)
        case .noSpace: .enospc
        case .ioError: .eio
        }
    }

    // MARK: Replies

    func simpleReply(_ cookie: UInt64, error: NBDError?, allocator: ByteBufferAllocator) -> ByteBuffer {
        var reply = allocator.buffer(capacity: 16)
        reply.writeMultipleIntegers(NBDMagic.simpleReply, error?.rawValue ?? 0, cookie)
        return reply
    }

    /// An error: a simple reply, or an ERROR chunk where the command needs a
    /// structured reply (READ and BLOCK_STATUS once negotiated).
    func errorReply(
        _ request: NBDRequest, _ error: NBDError, command: NBDCommand, allocator: ByteBufferAllocator
    )
        -> ByteBuffer
    {
        guard session.structuredReplies, command == .read || command == .blockStatus else {
            return simpleReply(request.cookie, error: error, allocator: allocator)
        }
        let message = "\(command.name): \(error.name)"
        var reply = allocator.buffer(capacity: 20 + 6 + message.utf8.count)
        writeChunkHeader(&reply, request.cookie, type: NBDChunk.error, length: 6 + message.utf8.count)
        reply.writeInteger(error.rawValue)
        reply.writeInteger(UInt16(message.utf8.count))
        reply.writeString(message)
        return reply
    }

    func writeChunkHeader(_ reply: inout ByteBuffer, _ cookie: UInt64, type: UInt16, length: Int) {
        reply.writeMultipleIntegers(NBDMagic.structuredReply, NBDChunk.flagDone, type, cookie, UInt32(length))
    }

    private func readReply(_ request: NBDRequest, allocator: ByteBufferAllocator) throws(BlockDeviceError) -> NBDReply {
        let offset = Int(clamping: request.offset)
        let length = Int(request.length)
        let separate = length >= Self.separateDataThreshold
        var head: ByteBuffer
        if session.structuredReplies {
            // Nothing to read: no content chunk (each must carry at least one
            // byte), only the final NONE chunk.
            guard length > 0 else {
                head = allocator.buffer(capacity: 20)
                writeChunkHeader(&head, request.cookie, type: NBDChunk.none, length: 0)
                return NBDReply(head: head)
            }
            // A range that holds no data goes back as one hole: no bytes.
            let extents = try export.device.allocationExtents(offset: offset, length: length, maximumExtents: 1)
            if extents.count == 1, extents[0].length == length, extents[0].status != .data {
                head = allocator.buffer(capacity: 32)
                writeChunkHeader(&head, request.cookie, type: NBDChunk.offsetHole, length: 12)
                head.writeMultipleIntegers(request.offset, request.length)
                return NBDReply(head: head)
            }
            head = allocator.buffer(capacity: 28 + (separate ? 0 : length))
            writeChunkHeader(&head, request.cookie, type: NBDChunk.offsetData, length: 8 + length)
            head.writeInteger(request.offset)
        } else {
            head = allocator.buffer(capacity: 16 + (separate ? 0 : length))
            head.writeMultipleIntegers(NBDMagic.simpleReply, UInt32(0), request.cookie)
        }
        guard length > 0 else { return NBDReply(head: head) }
        if separate {
            var data = allocator.buffer(capacity: length)
            try read(into: &data, length: length, at: offset)
            return NBDReply(head: head, data: data)
        }
        try read(into: &head, length: length, at: offset)
        return NBDReply(head: head)
    }

    /// Appends `length` bytes of the device from `offset` to `buffer`.
    private func read(into buffer: inout ByteBuffer, length: Int, at offset: Int) throws(BlockDeviceError) {
        var failure: BlockDeviceError?
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
            do throws(BlockDeviceError) {
                try export.device.read(into: UnsafeMutableRawBufferPointer(rebasing: space[..<length]), at: offset)
            } catch {
                failure = error
            }
            return length
        }
        if let failure { throw failure }
    }

    private func blockStatusReply(
        _ request: NBDRequest, allocator: ByteBufferAllocator
    ) throws(BlockDeviceError)
        -> ByteBuffer
    {
        let one = request.flags & NBDCommandFlag.requestOne != 0
        let extents = try export.device.allocationExtents(
            offset: Int(clamping: request.offset), length: Int(request.length),
            maximumExtents: one ? 1 : Self.maximumExtents)
        var reply = allocator.buffer(capacity: 24 + 4 + 8 * extents.count)
        writeChunkHeader(&reply, request.cookie, type: NBDChunk.blockStatus, length: 4 + 8 * extents.count)
        reply.writeInteger(NBDHandshake.allocationContextID)
        for extent in extents {
            let flags: UInt32 =
                switch extent.status {
                case .unallocated: NBDAllocationFlag.hole | NBDAllocationFlag.zero
                case .zero: NBDAllocationFlag.zero
                case .data: 0
                }
            reply.writeMultipleIntegers(UInt32(extent.length), flags)
        }
        return reply
    }
}
