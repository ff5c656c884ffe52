import CNBD
import Foundation

/// A connection through libnbd: an NBD client written by others, so that
/// tests check the server against a real implementation of the protocol.
public final class LibNBDClient: @unchecked Sendable {
    // @unchecked: libnbd takes its handle's own lock in every call, so a
    // handle may be used from any thread.
    public struct Failure: Error, CustomStringConvertible {
        public let errno: Int32
        public let message: String
        public var description: String { "libnbd: \(message) (errno \(errno))" }
    }

    private let handle: OpaquePointer

    /// Connects to `uri` (e.g. nbd+unix:///?socket=PATH), asking for
    /// base:allocation. `strict` false lets malformed requests through;
    /// `blockSizes` false leaves NBD_INFO_BLOCK_SIZE out of NBD_OPT_GO.
    public init(uri: String, strict: Bool = true, structuredReplies: Bool = true, blockSizes: Bool = true) throws {
        guard let handle = nbd_create() else { throw Self.lastFailure() }
        self.handle = handle
        if !strict { nbd_set_strict_mode(handle, 0) }
        if !structuredReplies { nbd_set_request_structured_replies(handle, false) }
        if !blockSizes { nbd_set_request_block_size(handle, false) }
        nbd_add_meta_context(handle, "base:allocation")
        guard nbd_connect_uri(handle, uri) == 0 else {
            let failure = Self.lastFailure()
            nbd_close(handle)
            throw failure
        }
    }

    deinit {
        nbd_close(handle)
    }

    static func lastFailure() -> Failure {
        Failure(errno: nbd_get_errno(), message: nbd_get_error().map { String(cString: $0) } ?? "unknown error")
    }

    private func check(_ status: Int32) throws {
        if status == -1 { throw Self.lastFailure() }
    }

    public var size: Int64 { nbd_get_size(handle) }
    public var canMultiConn: Bool { nbd_can_multi_conn(handle) == 1 }
    public var isReadOnly: Bool { nbd_is_read_only(handle) == 1 }
    public var structuredRepliesNegotiated: Bool { nbd_get_structured_replies_negotiated(handle) == 1 }

    public func read(count: Int, at offset: Int, flags: UInt32 = 0) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try check(nbd_pread(handle, $0.baseAddress, count, UInt64(offset), flags)) }
        return bytes
    }

    public func write(_ bytes: [UInt8], at offset: Int, flags: UInt32 = 0) throws {
        try bytes.withUnsafeBytes { try check(nbd_pwrite(handle, $0.baseAddress, bytes.count, UInt64(offset), flags)) }
    }

    public func trim(count: Int, at offset: Int, flags: UInt32 = 0) throws {
        try check(nbd_trim(handle, UInt64(count), UInt64(offset), flags))
    }

    public func zero(count: Int, at offset: Int, flags: UInt32 = 0) throws {
        try check(nbd_zero(handle, UInt64(count), UInt64(offset), flags))
    }

    public func cache(count: Int, at offset: Int) throws {
        try check(nbd_cache(handle, UInt64(count), UInt64(offset), 0))
    }

    public func flush() throws {
        try check(nbd_flush(handle, 0))
    }

    /// base:allocation extents as (length, flags) pairs.
    public func blockStatus(count: Int, at offset: Int, flags: UInt32 = 0) throws -> [(length: UInt32, flags: UInt32)] {
        final class Box { var extents: [(length: UInt32, flags: UInt32)] = [] }
        let box = Box()
        let callback = nbd_extent_callback(
            callback: { userData, context, _, entries, count, _ in
                guard let context, String(cString: context) == "base:allocation", let entries else { return 0 }
                let box = Unmanaged<Box>.fromOpaque(userData!).takeUnretainedValue()
                for index in stride(from: 0, to: count, by: 2) {
                    box.extents.append((UInt32(entries[index]), UInt32(entries[index + 1])))
                }
                return 0
            }, user_data: Unmanaged.passUnretained(box).toOpaque(), free: nil)
        try check(nbd_block_status(handle, UInt64(count), UInt64(offset), callback, flags))
        return box.extents
    }

    /// Sends a read of `count` bytes at each offset at once, then waits for
    /// every reply (the data is dropped): reads pipelined on one connection.
    public func readConcurrently(count: Int, at offsets: [Int]) throws {
        let buffers = offsets.map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, count), alignment: 16)
        }
        defer { buffers.forEach { $0.deallocate() } }
        var cookies: [Int64] = []
        for (offset, buffer) in zip(offsets, buffers) {
            let cookie = nbd_aio_pread(
                handle, buffer.baseAddress, count, UInt64(offset),
                nbd_completion_callback(callback: nil, user_data: nil, free: nil), 0)
            if cookie == -1 { throw Self.lastFailure() }
            cookies.append(cookie)
        }
        try wait(for: cookies)
    }

    private func wait(for cookies: [Int64]) throws {
        for cookie in cookies {
            while true {
                let done = nbd_aio_command_completed(handle, UInt64(cookie))
                if done == 1 { break }
                if done == -1 { throw Self.lastFailure() }
                try check(nbd_poll(handle, -1))
            }
        }
    }

    /// Sends every write at once (up to libnbd's queue), then waits for all
    /// replies: many requests in flight on one connection.
    public func writeConcurrently(_ writes: [(bytes: [UInt8], offset: Int)]) throws {
        // libnbd sends from the caller's memory after the call returns, so
        // each payload gets a buffer that lives until every reply is in.
        let buffers = writes.map { write in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, write.bytes.count), alignment: 16)
            write.bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
            return buffer
        }
        defer { buffers.forEach { $0.deallocate() } }
        var cookies: [Int64] = []
        for (write, buffer) in zip(writes, buffers) {
            let cookie = nbd_aio_pwrite(
                handle, buffer.baseAddress, write.bytes.count, UInt64(write.offset),
                nbd_completion_callback(callback: nil, user_data: nil, free: nil), 0)
            if cookie == -1 { throw Self.lastFailure() }
            cookies.append(cookie)
        }
        try wait(for: cookies)
    }
}
