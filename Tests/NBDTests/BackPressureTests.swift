import BlockDevice
import Foundation
import NBD
import Synchronization
import Testing
import TestSupport

/// A RAM device whose writes wait at a gate until the test opens it.
final class GatedDevice: ForwardingDevice, @unchecked Sendable {
    // @unchecked: `open` is guarded by `condition`'s mutex.
    let memory: MemoryBlockDevice
    let writesEntered = Atomic<Int>(0)
    private var open = false
    private let condition = NSCondition()

    init(byteCount: Int) throws {
        memory = try MemoryBlockDevice(byteCount: byteCount)
        super.init(inner: memory)
    }

    func openGate() {
        condition.lock()
        open = true
        condition.broadcast()
        condition.unlock()
    }

    override func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(BlockDeviceError) {
        writesEntered.add(1, ordering: .relaxed)
        condition.lock()
        while !open { condition.wait() }
        condition.unlock()
        try memory.write(bytes, at: offset)
    }
}

@Suite("NBD back-pressure")
struct BackPressureTests {
    @Test("a client flooding 128 MiB of writes at a stalled device meets back-pressure, not an unbounded buffer")
    func floodingClient() async throws {
        let device = try GatedDevice(byteCount: 128 << 20)
        try await withServedDevice(device: device, workerThreads: 2) { served in
            defer { device.openGate() }  // never leave workers blocked, even on failure
            let client = try RawClient(socketPath: served.socketPath)
            try client.handshake()
            let before = residentBytes()
            let count = 2_048
            let payload = [UInt8](repeating: 0x77, count: 65536)
            let sent = Atomic<Int>(0)
            let sender = Thread {
                // Blocks once the server stops reading; the gate opens later.
                for index in 0..<count {
                    do {
                        try client.sendRequest(
                            type: NBDCommand.write.rawValue, cookie: UInt64(index),
                            offset: UInt64(index) * 65536, length: 65536, payload: payload)
                        sent.add(1, ordering: .relaxed)
                    } catch {
                        return
                    }
                }
            }
            sender.start()
            try await Task.sleep(for: .seconds(1))
            let stalledGrowth = residentBytes() - before
            let acceptedWhileStalled = sent.load(ordering: .relaxed)
            // The server holds at most 128 requests (8 MiB here) plus socket
            // buffers; the client could not push the rest.
            #expect(
                acceptedWhileStalled < count / 2, "\(acceptedWhileStalled) of \(count) writes went out while stalled")
            #expect(stalledGrowth < 48 << 20, "RSS grew \(stalledGrowth) bytes while stalled")
            #expect(device.writesEntered.load(ordering: .relaxed) <= 2)
            device.openGate()
            var replies = 0
            while replies < count {
                let reply = try client.receiveSimpleReply()
                #expect(reply.error == 0)
                replies += 1
            }
            #expect(sent.load(ordering: .relaxed) == count)
            var check = [UInt8](repeating: 0, count: 65536)
            try check.withUnsafeMutableBytes { try device.read(into: $0, at: (count - 1) * 65536) }
            #expect(check == payload)
        }
    }

    @Test("a client that sends its requests and half-closes gets every reply, also those parsed after the limit")
    func halfCloseAfterBurst() async throws {
        let device = try GatedDevice(byteCount: 16 << 20)
        try await withServedDevice(device: device, workerThreads: 2) { served in
            let client = try RawClient(socketPath: served.socketPath)
            try client.handshake()
            defer { device.openGate() }  // never leave workers blocked, even on failure
            // 200 small writes, more than the 128 the server keeps in
            // progress, so the rest wait unparsed in its buffer (or the
            // socket's) when the input closes. They go out in one send of
            // 105 KiB: sent one by one, each small message costs the socket
            // about 1.3 KiB of its 208 KiB send buffer, and the client would
            // block once the server stops reading.
            let count = 200
            var batch: [UInt8] = []
            for index in 0..<count {
                batch += RawClient.request(
                    type: NBDCommand.write.rawValue, cookie: UInt64(index),
                    offset: UInt64(index) * 512, length: 512,
                    payload: [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 512))
            }
            try client.send(batch)
            client.finishSending()
            try await Task.sleep(for: .milliseconds(200))
            device.openGate()
            try Self.expectEveryReplyThenClose(client, count: count)
        }
    }

    @Test("a server that stops while requests wait behind the limit and in the socket answers every one of them")
    func shutdownAnswersHeldRequests() async throws {
        let device = try GatedDevice(byteCount: 16 << 20)
        let directory = try makeTemporaryDirectory("znbd-drain")
        defer { try? FileManager.default.removeItem(at: directory) }
        let socketPath = directory.appendingPathComponent("nbd.sock").path
        let server = NBDServer(
            export: NBDExport(name: "", description: "", device: device, readOnly: false),
            configuration: .init(unixSocketPath: socketPath, eventLoopThreads: 1, workerThreads: 2))
        _ = try await server.start()
        defer { device.openGate() }
        let client = try RawClient(socketPath: socketPath)
        try client.handshake()
        // 400 writes of 4 KiB: 128 held in progress at the closed gate, the
        // rest in the server's buffer and in the socket, where the sender
        // blocks. They go out in one send, begun before the server stops:
        // sent one by one, a sender thread that the machine left unscheduled
        // for a quiet period between two requests would rightly find the
        // connection closed.
        let count = 400
        let batch = (0..<count).flatMap { index in
            RawClient.request(
                type: NBDCommand.write.rawValue, cookie: UInt64(index),
                offset: UInt64(index) * 4096, length: 4096,
                payload: [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 4096))
        }
        let sent = Atomic<Bool>(false)
        let sender = Thread {
            guard (try? client.send(batch)) != nil else { return }
            sent.store(true, ordering: .relaxed)
        }
        sender.start()
        try await Task.sleep(for: .milliseconds(300))
        let sentAlready = sent.load(ordering: .relaxed)
        #expect(!sentAlready, "the sender should be blocked behind the limit")
        let stopping = Task { await server.shutdown(drainTimeout: .seconds(10)) }
        try await Task.sleep(for: .milliseconds(100))
        device.openGate()
        try Self.expectEveryReplyThenClose(client, count: count)
        await stopping.value
    }

    @Test("requests parsed after the limit frees up are answered at once, not at the client's next packet")
    func repliesAfterTheLimitLeaveAtOnce() async throws {
        let device = try GatedDevice(byteCount: 16 << 20)
        try await withServedDevice(device: device, workerThreads: 2) { served in
            defer { device.openGate() }
            let client = try RawClient(socketPath: served.socketPath)
            try client.handshake()
            // 130 writes (past the 128 in progress, so the rest wait), then
            // five reads, which run on the loop once room frees up: their
            // replies must be flushed then, though nothing more arrives.
            // The reads are of blocks no write touches, stored beforehand:
            // room frees up as writes finish, in whatever order the workers
            // finish them, so a read of a written block could come first.
            func readPattern(_ index: Int) -> [UInt8] { [UInt8](repeating: UInt8(0xA0 + index), count: 4096) }
            for index in 0..<5 {
                try readPattern(index).withUnsafeBytes { try device.memory.write($0, at: (200 + index) * 4096) }
            }
            var batch: [UInt8] = []
            for index in 0..<130 {
                batch += RawClient.request(
                    type: NBDCommand.write.rawValue, cookie: UInt64(index),
                    offset: UInt64(index) * 4096, length: 4096,
                    payload: [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 4096))
            }
            for index in 0..<5 {
                batch += RawClient.request(
                    type: NBDCommand.read.rawValue, cookie: UInt64(1000 + index),
                    offset: UInt64(200 + index) * 4096, length: 4096)
            }
            try client.send(batch)
            try await Task.sleep(for: .milliseconds(100))
            device.openGate()
            var reads = 0
            for _ in 0..<135 {
                // 16-byte header; a read's data follows.
                let header = try client.receive(16)
                #expect(header.be32(4) == 0)
                let cookie = header.be64(8)
                if cookie >= 1000 {
                    let data = try client.receive(4096)
                    #expect(data == readPattern(Int(cookie) - 1000), "read \(cookie): not the stored bytes")
                    reads += 1
                }
            }
            #expect(reads == 5)
        }
    }

    /// `count` replies, one per cookie 0..<count, each without error; then
    /// the server closes the connection.
    static func expectEveryReplyThenClose(
        _ client: RawClient, count: Int, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        var cookies = Set<UInt64>()
        for _ in 0..<count {
            let reply = try client.receiveSimpleReply()
            #expect(reply.error == 0, sourceLocation: sourceLocation)
            cookies.insert(reply.cookie)
        }
        #expect(cookies == Set(0..<UInt64(count)), sourceLocation: sourceLocation)
        #expect(client.isClosedByServer(), sourceLocation: sourceLocation)
    }
}
