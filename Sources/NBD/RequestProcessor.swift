import BlockDevice
public import NIOCore

/// Checks one transmission request against the export and the session, runs
/// it on the device, and encodes its reply. Pure apart from the device:
/// safe to call from any thread, and testable without sockets.
public struct NBDRequestProcessor: Sendable {
    public let export: NBDExport
    public let session: NBDSession
    /// The most block-status descriptors one reply carries.
    public static let maximumExtents = 8_192

    public init(export: NBDExport, session: NBDSession) {
        self.export = export
        self.session = session
    }

    /// What running a request came to, for the counters.
    public struct Outcome: Sendable {
        public var command: NBDCommand?
        public var error: NBDError?
        /// Payload bytes moved (read or written).
        public var bytes: Int
    }

    /// Runs `request` and returns the reply bytes to send.
    public func process(_ request: NBDRequest, allocator: ByteBufferAllocator) -> (reply: ByteBuffer, outcome: Outcome) {
        let command = NBDCommand(rawValue: request.type)
        var outcome = Outcome(command: command, error: nil, bytes: 0)
        if let error = validate(request, command: command) {
            outcome.error = error
            return (errorReply(request, error, command: command, allocator: allocator), outcome)
        }
        let offset = Int(request.offset)
        let length = Int(request.length)
        let device = export.device
        do throws(BlockDeviceError) {
            switch command! {
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
                try device.writeZeroes(offset: offset, length: length)
                outcome.bytes = length
            case .flush:
                try device.flush()
            case .cache:
                // Everything is in RAM already.
                break
            case .blockStatus:
                return (try blockStatusReply(request, allocator: allocator), outcome)
            case .disconnect:
                break
            }
        } catch {
            let code = Self.errno(for: error, command: command!)
            outcome.error = code
            outcome.bytes = 0
            return (errorReply(request, code, command: command, allocator: allocator), outcome)
        }
        return (simpleReply(request.cookie, error: nil, allocator: allocator), outcome)
    }

    /// The protocol's checks, before the device sees anything.
    func validate(_ request: NBDRequest, command: NBDCommand?) -> NBDError? {
        guard let command else { return .einval }
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
        if request.payloadDropped { return .einval }
        switch command {
        case .flush, .disconnect:
            return nil
        case .write, .trim, .writeZeroes:
            if export.readOnly { return .eperm }
        case .read, .cache, .blockStatus:
            break
        }
        let size = UInt64(export.device.byteCount)
        let (end, overflow) = request.offset.addingReportingOverflow(UInt64(request.length))
        if overflow || end > size { return Self.pastTheEnd(command) }
        let sector = UInt64(export.minimumBlockSize)
        guard request.offset % sector == 0, UInt64(request.length) % sector == 0 else { return .einval }
        if command == .read, Int(request.length) > export.maximumPayload { return .einval }
        if command == .blockStatus {
            guard session.structuredReplies, session.allocationContext, request.length > 0 else { return .einval }
        }
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
        case .misaligned: .einval
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
    func errorReply(_ request: NBDRequest, _ error: NBDError, command: NBDCommand?, allocator: ByteBufferAllocator)
        -> ByteBuffer
    {
        guard session.structuredReplies, command == .read || command == .blockStatus else {
            return simpleReply(request.cookie, error: error, allocator: allocator)
        }
        let message = "\(command!.name): \(error.name)"
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

    private func readReply(_ request: NBDRequest, allocator: ByteBufferAllocator) throws(BlockDeviceError) -> ByteBuffer {
        let offset = Int(request.offset)
        let length = Int(request.length)
        var reply: ByteBuffer
        if session.structuredReplies {
            // A range that holds no data goes back as one hole: no bytes.
            if length > 0 {
                let extents = try export.device.allocationExtents(offset: offset, length: length, maximumExtents: 1)
                if extents.count == 1, extents[0].length == length, extents[0].status != .data {
                    reply = allocator.buffer(capacity: 32)
                    writeChunkHeader(&reply, request.cookie, type: NBDChunk.offsetHole, length: 12)
                    reply.writeMultipleIntegers(request.offset, request.length)
                    return reply
                }
            }
            reply = allocator.buffer(capacity: 28 + length)
            writeChunkHeader(&reply, request.cookie, type: NBDChunk.offsetData, length: 8 + length)
            reply.writeInteger(request.offset)
        } else {
            reply = allocator.buffer(capacity: 16 + length)
            reply.writeMultipleIntegers(NBDMagic.simpleReply, UInt32(0), request.cookie)
        }
        guard length > 0 else { return reply }
        var failure: BlockDeviceError?
        reply.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
            do throws(BlockDeviceError) {
                try export.device.read(into: UnsafeMutableRawBufferPointer(rebasing: space[..<length]), at: offset)
            } catch {
                failure = error
            }
            return length
        }
        if let failure { throw failure }
        return reply
    }

    private func blockStatusReply(_ request: NBDRequest, allocator: ByteBufferAllocator) throws(BlockDeviceError)
        -> ByteBuffer
    {
        let one = request.flags & NBDCommandFlag.requestOne != 0
        let extents = try export.device.allocationExtents(
            offset: Int(request.offset), length: Int(request.length), maximumExtents: one ? 1 : Self.maximumExtents)
        var reply = allocator.buffer(capacity: 24 + 4 + 8 * extents.count)
        writeChunkHeader(&reply, request.cookie, type: NBDChunk.blockStatus, length: 4 + 8 * extents.count)
        reply.writeInteger(NBDHandshake.allocationContextID)
        for extent in extents {
            let flags: UInt32 = switch extent.status {
            case .unallocated: NBDAllocationFlag.hole | NBDAllocationFlag.zero
            case .zero: NBDAllocationFlag.zero
            case .data: 0
            }
            reply.writeMultipleIntegers(UInt32(extent.length), flags)
        }
        return reply
    }
}
