#if canImport(Glibc)
    import Glibc
#endif
internal import CNBDNetlink
import NBDProtocol
import Synchronization

/// What to attach: the daemon's socket and export, the device, and how the
/// kernel should wait for a daemon that went away.
public struct AttachRequest: Sendable {
    public var socketPath: String
    public var export: String
    /// The nbd device's index (/dev/nbd0: 0).
    public var index: Int
    public var connections: Int
    /// Seconds a request may take before the kernel looks at it again
    /// (NBD_ATTR_TIMEOUT); on a dead connection it is requeued, not failed.
    public var requestTimeout: Int
    /// Seconds the kernel holds requests while every connection is dead,
    /// waiting for this process to hand it new ones (NBD_ATTR_DEAD_CONN_TIMEOUT).
    public var deadConnectionTimeout: Int
    public var blockSize: Int
    /// When the device is already attached (an earlier attach process
    /// died and left it to the kernel), supervise it instead of failing:
    /// its dead connections are replaced with this daemon's. Only for a
    /// device known to be this daemon's: the kernel cannot say which
    /// server it was attached to, only its size is checked.
    public var takeOver: Bool

    public init(
        socketPath: String, export: String = "", index: Int, connections: Int = 1, requestTimeout: Int = 30,
        deadConnectionTimeout: Int = 120, blockSize: Int = 4096, takeOver: Bool = false
    ) {
        self.socketPath = socketPath
        self.export = export
        self.index = index
        self.connections = connections
        self.requestTimeout = requestTimeout
        self.deadConnectionTimeout = deadConnectionTimeout
        self.blockSize = blockSize
        self.takeOver = takeOver
    }
}

/// /dev/nbdN attached to a daemon, and kept attached while this lives:
/// `attach` hands the kernel `connections` negotiated sockets; `supervise`
/// waits for the kernel to report a dead one, negotiates a new one with
/// whatever daemon serves the socket then (the same state, after a restart)
/// and hands it over, until `stop` is asked for; then the device is
/// disconnected. With `takeOver`, a device an earlier attach process left
/// connected (it was killed, or crashed) is taken over the same way. The
/// export's size must not change: a daemon serving another size is not
/// given the device.
public final class KernelAttachment: Sendable {
    public let request: AttachRequest
    private let size = Atomic<UInt64>(0)
    private let flags = Atomic<UInt16>(0)
    /// Set by a signal handler (an atomic store is async-signal-safe).
    private static let stopRequested = Atomic<Bool>(false)

    public init(_ request: AttachRequest) {
        self.request = request
    }

    /// Asks `supervise` to disconnect and return: from a signal handler.
    public static func requestStop() { stopRequested.store(true, ordering: .relaxed) }

    /// The export's size, once attached.
    public var exportSize: UInt64 { size.load(ordering: .relaxed) }

    /// Attaches the device and keeps it attached: negotiates the
    /// connections, listens for the kernel's events before the device is
    /// connected (a connection that dies at once is still heard of),
    /// connects it (or, with `takeOver`, takes over a device that is
    /// already connected), calls `attached`, then supervises until
    /// `requestStop`, and disconnects.
    public func run(attached: () -> Void, log: (String) -> Void) throws(AttachError) {
        var sockets: [NegotiatedSocket] = []
        defer { for socket in sockets { close(socket.descriptor) } }
        for _ in 0..<request.connections {
            sockets.append(try Negotiation.connect(socketPath: request.socketPath, export: request.export))
        }
        var events = try Self.open(listen: true)
        defer { znbd_netlink_close(&events) }
        do throws(AttachError) {
            try connect(sockets)
        } catch let error where request.takeOver && error.code == EBUSY && (try? isConnected()) == true {
            try takeOver(sockets, log: log)
        }
        attached()
        try supervise(&events, log: log)
    }

    /// Whether the kernel holds a configuration for the device (NBD_CMD_STATUS).
    private func isConnected() throws(AttachError) -> Bool {
        var netlink = try Self.open(listen: false)
        defer { znbd_netlink_close(&netlink) }
        var connected: Int32 = -1
        let status = znbd_netlink_status(&netlink, Int32(request.index), &connected)
        guard status == 0 else {
            throw AttachError("NBD_CMD_STATUS /dev/nbd\(request.index): \(describe(-status))", code: -status)
        }
        return connected == 1
    }

    /// Takes over a device that is already connected: its size must be
    /// the export's; each of `sockets` replaces a connection the kernel
    /// has marked dead (those that are not dead keep serving, and a
    /// socket given for none is dropped by the kernel). Events of deaths
    /// that came while no process listened are lost, so every connection
    /// is offered a replacement now.
    private func takeOver(_ sockets: [NegotiatedSocket], log: (String) -> Void) throws(AttachError) {
        let first = sockets[0]
        let sectors = Self.readSectors(index: request.index)
        guard let sectors, sectors * 512 == first.size else {
            throw AttachError(
                "/dev/nbd\(request.index) is attached already, at \(sectors.map { "\($0 * 512) bytes" } ?? "an unknown size"), "
                    + "not the export's \(first.size): not taken over", code: EBUSY)
        }
        var netlink = try Self.open(listen: false)
        defer { znbd_netlink_close(&netlink) }
        let descriptors = sockets.map(\.descriptor)
        let status = descriptors.withUnsafeBufferPointer { fds in
            znbd_netlink_reconfigure(&netlink, Int32(request.index), fds.baseAddress, Int32(fds.count))
        }
        guard status == 0 else {
            throw AttachError("NBD_CMD_RECONFIGURE /dev/nbd\(request.index): \(describe(-status))", code: -status)
        }
        size.store(first.size, ordering: .relaxed)
        flags.store(first.transmissionFlags, ordering: .relaxed)
        log(
            "/dev/nbd\(request.index) was attached already (\(first.size) bytes): taken over, its dead connections replaced"
        )
    }

    /// /sys/block/nbdN/size: the device's size in 512-byte sectors, or nil.
    private static func readSectors(index: Int) -> UInt64? {
        let descriptor = Glibc.open("/sys/block/nbd\(index)/size", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: 32)
        let count = bytes.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return UInt64(
            String(
                decoding: bytes[..<count].prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }, as: UTF8.self))
    }

    /// Connects the device over the negotiated `sockets` (the caller closes
    /// its copies: the kernel holds its own).
    private func connect(_ sockets: [NegotiatedSocket]) throws(AttachError) {
        let first = sockets[0]
        guard sockets.allSatisfy({ $0.size == first.size }) else {
            throw AttachError("the connections report different sizes")
        }
        guard request.connections == 1 || first.transmissionFlags & NBDTransmissionFlag.canMultiConn != 0 else {
            throw AttachError("the server does not allow more than one connection (no NBD_FLAG_CAN_MULTI_CONN)")
        }
        guard first.size % UInt64(request.blockSize) == 0 else {
            throw AttachError("the export's size \(first.size) is not a multiple of \(request.blockSize)")
        }
        var netlink = try Self.open(listen: false)
        defer { znbd_netlink_close(&netlink) }
        var connected: Int32 = -1
        let descriptors = sockets.map(\.descriptor)
        let status = descriptors.withUnsafeBufferPointer { fds in
            znbd_netlink_connect(
                &netlink, Int32(request.index), first.size, UInt64(request.blockSize),
                UInt64(first.transmissionFlags), UInt64(request.requestTimeout), UInt64(request.deadConnectionTimeout),
                fds.baseAddress, Int32(fds.count), &connected)
        }
        guard status == 0 else {
            throw AttachError(
                "NBD_CMD_CONNECT /dev/nbd\(request.index): \(describe(-status))"
                    + (status == -EBUSY ? " (the device is in use, or open)" : ""), code: -status)
        }
        size.store(first.size, ordering: .relaxed)
        flags.store(first.transmissionFlags, ordering: .relaxed)
    }

    /// Keeps the device attached: on each dead connection the kernel
    /// reports on `events`, a new one is negotiated (retried every
    /// `retryMilliseconds` while no daemon answers) and handed over. `log`
    /// hears each event. Returns after `requestStop`, having disconnected
    /// the device.
    private func supervise(
        _ events: inout znbd_netlink, retryMilliseconds: Int32 = 100, log: (String) -> Void
    ) throws(AttachError) {
        var dead = 0
        var failing: String?
        while !Self.stopRequested.load(ordering: .relaxed) {
            var command: Int32 = 0
            var index: Int32 = 0
            let status = znbd_netlink_next_event(&events, dead > 0 ? retryMilliseconds : 1000, &command, &index)
            if status == 0, command == znbd_netlink_link_dead_command(), Int(index) == request.index {
                dead = min(dead + 1, request.connections)
                log("a connection of /dev/nbd\(request.index) died (\(dead) to replace); reconnecting")
            } else if status == -ENOBUFS {
                // Events were lost: replace them all; the kernel ignores a
                // socket given for a connection that is not dead.
                dead = request.connections
            } else if status != 0 && status != -ETIMEDOUT && status != -EINTR {
                throw AttachError("netlink: \(describe(-status))", code: -status)
            }
            while dead > 0 && !Self.stopRequested.load(ordering: .relaxed) {
                do throws(AttachError) {
                    try replaceOne()
                    dead -= 1
                    if failing != nil || dead == 0 { log("/dev/nbd\(request.index): a new connection handed over") }
                    failing = nil
                } catch {
                    if failing != error.description { log("reconnecting: \(error) (retrying)") }
                    failing = error.description
                    break
                }
            }
        }
        var netlink = try Self.open(listen: false)
        defer { znbd_netlink_close(&netlink) }
        let status = znbd_netlink_disconnect(&netlink, Int32(request.index))
        guard status == 0 else {
            throw AttachError("NBD_CMD_DISCONNECT /dev/nbd\(request.index): \(describe(-status))", code: -status)
        }
        log("/dev/nbd\(request.index) disconnected")
    }

    /// One new negotiated connection, handed to the kernel for a dead one.
    private func replaceOne() throws(AttachError) {
        let socket = try Negotiation.connect(socketPath: request.socketPath, export: request.export)
        defer { close(socket.descriptor) }
        guard socket.size == exportSize else {
            throw AttachError("the daemon now serves \(socket.size) bytes, not \(exportSize): not handed over")
        }
        var netlink = try Self.open(listen: false)
        defer { znbd_netlink_close(&netlink) }
        var descriptor = socket.descriptor
        let status = znbd_netlink_reconfigure(&netlink, Int32(request.index), &descriptor, 1)
        guard status == 0 else {
            throw AttachError("NBD_CMD_RECONFIGURE /dev/nbd\(request.index): \(describe(-status))", code: -status)
        }
    }

    private static func open(listen: Bool) throws(AttachError) -> znbd_netlink {
        var handle = znbd_netlink()
        let status = znbd_netlink_open(&handle, listen ? 1 : 0)
        guard status == 0 else {
            throw AttachError(
                status == -ENOENT
                    ? "the kernel has no nbd netlink family (modprobe nbd)" : "netlink: \(describe(-status))",
                code: -status)
        }
        return handle
    }
}
