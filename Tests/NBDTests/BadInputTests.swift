import BlockDevice
import Foundation
import NBD
import Testing
import TestSupport

@Suite("NBD: bad input costs only the request, or only its own connection", .serialized)
struct BadInputTests {
    static let size = 64 << 20

    /// Each bad request gets its errno, and the connection still serves a read.
    @Test("out of range, misaligned, unknown command and flag, read-only, zero length: errno and the connection lives")
    func badRequests() async throws {
        // A device that asks for 512-byte alignment (znbd's asks for 1), so
        // that the misaligned rows are refused.
        let device = try MemoryBlockDevice(byteCount: Self.size, minimumBlockSize: 512)
        try await withServedDevice(device: device) { served in
            let client = try RawClient(socketPath: served.socketPath)
            try client.handshake()
            typealias C = NBDCommand
            let size = UInt64(Self.size)
            let cases: [(String, UInt16, UInt16, UInt64, UInt32, [UInt8], NBDError?)] = [
                ("read past the end", C.read.rawValue, 0, size - 512, 1024, [], .einval),
                ("trim past the end", C.trim.rawValue, 0, size, 512, [], .einval),
                ("cache past the end", C.cache.rawValue, 0, size, 4096, [], .einval),
                (
                    "write past the end", C.write.rawValue, 0, size - 512, 1024, [UInt8](repeating: 1, count: 1024),
                    .enospc
                ),
                ("write-zeroes past the end", C.writeZeroes.rawValue, 0, size, 4096, [], .enospc),
                ("misaligned read", C.read.rawValue, 0, 100, 512, [], .einval),
                ("misaligned write", C.write.rawValue, 0, 512, 100, [UInt8](repeating: 1, count: 100), .einval),
                ("unknown command", 42, 0, 0, 512, [], .einval),
                ("unknown flag", C.read.rawValue, 1 << 9, 0, 512, [], .einval),
                ("REQ_ONE on a read", C.read.rawValue, NBDCommandFlag.requestOne, 0, 512, [], .einval),
                ("block status without the context", C.blockStatus.rawValue, 0, 0, 4096, [], .einval),
                ("offset overflow", C.read.rawValue, 0, UInt64.max - 511, 1024, [], .einval),
                ("zero-length read", C.read.rawValue, 0, 0, 0, [], nil),
                ("zero-length write", C.write.rawValue, 0, 4096, 0, [], nil),
                ("zero-length trim", C.trim.rawValue, 0, 4096, 0, [], nil),
                ("flush", C.flush.rawValue, 0, 0, 0, [], nil),
                // Found by the fuzzer: offset and length of FLUSH are reserved,
                // unchecked, and once trapped when converted to Int.
                ("flush with a reserved offset past Int.max", C.flush.rawValue, 0, UInt64.max, 77, [], nil),
                ("disc-like offset on cache past the end", C.cache.rawValue, 0, UInt64.max, 0, [], .einval),
            ]
            for (index, (name, type, flags, offset, length, payload, expected)) in cases.enumerated() {
                try client.sendRequest(
                    type: type, flags: flags, cookie: UInt64(index), offset: offset, length: length, payload: payload)
                let reply = try client.receiveSimpleReply()
                #expect(reply.cookie == UInt64(index), "\(name)")
                #expect(reply.error == expected?.rawValue ?? 0, "\(name): got errno \(reply.error)")
                // Still usable: a good read.
                try client.sendRequest(type: C.read.rawValue, cookie: 1000, offset: 0, length: 512)
                let read = try client.receiveSimpleReply(dataLength: 512)
                #expect(read.error == 0 && read.cookie == 1000 && read.data.count == 512, "after \(name)")
            }
            let stats = served.server.figures()
            #expect(stats.commands["unknown"]?.errors["EINVAL"] == 1)
            #expect(stats.commands["write"]?.errors["ENOSPC"] == 1)
        }
    }

    @Test("a write on a read-only export gets EPERM")
    func readOnly() async throws {
        try await withServedDevice(mebibytes: 8, readOnly: true) { served in
            let client = try RawClient(socketPath: served.socketPath)
            try client.handshake()
            for (cookie, type) in [NBDCommand.write, .trim, .writeZeroes].enumerated() {
                let payload: [UInt8] = type == .write ? [UInt8](repeating: 7, count: 4096) : []
                try client.sendRequest(
                    type: type.rawValue, cookie: UInt64(cookie), offset: 0, length: 4096, payload: payload)
                #expect(try client.receiveSimpleReply().error == NBDError.eperm.rawValue, "\(type)")
            }
            let libnbd = try served.client()
            #expect(libnbd.isReadOnly)
        }
    }

    @Test("a write over the payload limit is refused and its payload skipped; the next request is understood")
    func oversizedWrite() async throws {
        try await withServedDevice(mebibytes: 8, maximumPayload: 64 << 10) { served in
            let client = try RawClient(socketPath: served.socketPath)
            try client.handshake()
            let big = [UInt8](repeating: 0x55, count: 1 << 20)
            try client.sendRequest(
                type: NBDCommand.write.rawValue, cookie: 1, offset: 0, length: UInt32(big.count), payload: big)
            try client.sendRequest(
                type: NBDCommand.write.rawValue, cookie: 2, offset: 0, length: 4096,
                payload: [UInt8](repeating: 9, count: 4096))
            var replies: [UInt64: UInt32] = [:]
            for _ in 0..<2 {
                let reply = try client.receiveSimpleReply()
                replies[reply.cookie] = reply.error
            }
            #expect(replies == [1: NBDError.einval.rawValue, 2: 0])
            try client.sendRequest(type: NBDCommand.read.rawValue, cookie: 3, offset: 0, length: 4096)
            #expect(try client.receiveSimpleReply(dataLength: 4096).data == [UInt8](repeating: 9, count: 4096))
        }
    }

    @Test(
        "requests longer than the server's whole budget are refused, not held forever: a huge read, a dropped payload",
        arguments: [2, 0])
    func overBudget(workerThreads: Int) async throws {
        try await withServedDevice(
            mebibytes: 8, workerThreads: workerThreads, maximumPayload: 64 << 10, maximumInFlightBytesTotal: 4 << 20
        ) { served in
            let client = try RawClient(socketPath: served.socketPath)
            try client.handshake()
            // Charged its length, this read (4 GiB) or this write (its 8 MiB
            // payload dropped) would wait for room the budget never has.
            try client.sendRequest(type: NBDCommand.read.rawValue, cookie: 1, offset: 0, length: .max)
            #expect(try client.receiveSimpleReply().error == NBDError.einval.rawValue)
            let big = [UInt8](repeating: 0x55, count: 8 << 20)
            try client.sendRequest(
                type: NBDCommand.write.rawValue, cookie: 2, offset: 0, length: UInt32(big.count), payload: big)
            #expect(try client.receiveSimpleReply().error == NBDError.einval.rawValue)
            try client.sendRequest(type: NBDCommand.read.rawValue, cookie: 3, offset: 0, length: 4096)
            #expect(try client.receiveSimpleReply(dataLength: 4096).cookie == 3)
        }
    }

    @Test("malformed requests through nbdsh with strict mode off")
    func nbdshMalformed() async throws {
        try await withServedDevice(device: try MemoryBlockDevice(byteCount: 16 << 20, minimumBlockSize: 512)) {
            served in
            let script = """
                import errno
                h.set_strict_mode(0)
                h.connect_uri("\(served.uri)")
                size = h.get_size()
                def expect(name, call, code):
                    try:
                        call()
                        print(name, "succeeded")
                    except nbd.Error as e:
                        print(name, errno.errorcode.get(e.errno, e.errno))
                expect("read-past-end", lambda: h.pread(1024, size - 512), errno.EINVAL)
                expect("write-past-end", lambda: h.pwrite(b"x" * 1024, size - 512), errno.ENOSPC)
                expect("zero-past-end", lambda: h.zero(4096, size), errno.ENOSPC)
                expect("trim-past-end", lambda: h.trim(512, size), errno.EINVAL)
                expect("misaligned-read", lambda: h.pread(512, 100), errno.EINVAL)
                expect("misaligned-write", lambda: h.pwrite(b"y" * 100, 512), errno.EINVAL)
                expect("block-status-past-end", lambda: h.block_status(4096, size, lambda *a: 0), errno.EINVAL)
                print("still-alive", len(h.pread(4096, 0)))
                """
            let result = try runCommand(["nbdsh", "-c", script], timeout: 60)
            #expect(!result.timedOut && result.status == 0, "\(result.standardError)")
            let lines = Set(result.standardOutput.split(separator: "\n").map(String.init))
            #expect(
                lines == [
                    "read-past-end EINVAL", "write-past-end ENOSPC", "zero-past-end ENOSPC", "trim-past-end EINVAL",
                    "misaligned-read EINVAL", "misaligned-write EINVAL", "block-status-past-end EINVAL",
                    "still-alive 4096",
                ], "\(result.standardOutput)\(result.standardError)")
        }
    }

    @Test("garbage and truncated handshakes, and clients that vanish mid-payload, cost only their connection")
    func garbageAndVanishing() async throws {
        try await withServedDevice(mebibytes: 8) { served in
            let healthy = try served.client()
            try healthy.write([UInt8](repeating: 3, count: 4096), at: 0)
            // Unknown client flags: the server closes.
            do {
                let client = try RawClient(socketPath: served.socketPath)
                _ = try client.receive(18)
                try client.send([0xff, 0xff, 0xff, 0xff])
                #expect(client.isClosedByServer())
            }
            // Garbage instead of an option: closed.
            do {
                let client = try RawClient(socketPath: served.socketPath)
                _ = try client.receive(18)
                try client.send(UInt32(3).bigEndianBytes + [UInt8](repeating: 0x41, count: 64))
                #expect(client.isClosedByServer())
            }
            // Garbage instead of a request: closed.
            do {
                let client = try RawClient(socketPath: served.socketPath)
                try client.handshake()
                try client.send([UInt8](repeating: 0x42, count: 28))
                #expect(client.isClosedByServer())
            }
            // Truncated handshake, then gone.
            do {
                let client = try RawClient(socketPath: served.socketPath)
                _ = try client.receive(18)
                try client.send([0, 0])
            }
            // Vanishes halfway through a 1 MiB write's payload.
            do {
                let client = try RawClient(socketPath: served.socketPath)
                try client.handshake()
                try client.sendRequest(
                    type: NBDCommand.write.rawValue, cookie: 1, offset: 0, length: 1 << 20,
                    payload: [UInt8](repeating: 9, count: 1 << 19))
            }
            // Unknown options are refused and the handshake goes on.
            do {
                let client = try RawClient(socketPath: served.socketPath)
                _ = try client.receive(18)
                try client.send(UInt32(NBDClientFlag.fixedNewstyle | NBDClientFlag.noZeroes).bigEndianBytes)
                try client.sendOption(99, data: [1, 2, 3])
                #expect(try client.receiveOptionReply().type == NBDOptionReply.errUnsupported.rawValue)
                try client.sendOption(NBDOption.startTLS.rawValue, data: [])
                #expect(try client.receiveOptionReply().type == NBDOptionReply.errUnsupported.rawValue)
                try client.sendOption(
                    NBDOption.go.rawValue, data: UInt32(7).bigEndianBytes + Array("missing".utf8) + [0, 0])
                #expect(try client.receiveOptionReply().type == NBDOptionReply.errUnknown.rawValue)
                try client.sendOption(NBDOption.list.rawValue, data: [])
                let list = try client.receiveOptionReplies()
                #expect(list.map(\.type) == [NBDOptionReply.server.rawValue, NBDOptionReply.ack.rawValue])
                try client.sendOption(NBDOption.abort.rawValue, data: [])
                #expect(try client.receiveOptionReply().type == NBDOptionReply.ack.rawValue)
                #expect(client.isClosedByServer())
            }
            // The healthy connection never noticed; the first 4 KiB are intact
            // (the vanished write was never complete, so never applied).
            #expect(try healthy.read(count: 4096, at: 0) == [UInt8](repeating: 3, count: 4096))
            #expect(served.server.figures()[.protocolErrors] == 2)
        }
    }

    /// Where a client can vanish: before and in every part of the
    /// handshake, between and inside requests, with replies unread.
    static let abortStages: [(String, @Sendable (RawClient) throws -> Void)] = [
        ("before the greeting", { _ in }),
        ("after the greeting", { client in _ = try client.receive(18) }),
        (
            "inside the client flags",
            { client in
                _ = try client.receive(18)
                try client.send([0, 0])
            }
        ),
        (
            "inside an option header",
            { client in
                _ = try client.receive(18)
                try client.send(UInt32(NBDClientFlag.fixedNewstyle).bigEndianBytes + NBDMagic.option.bigEndianBytes)
            }
        ),
        (
            "inside an option's data",
            { client in
                _ = try client.receive(18)
                try client.send(UInt32(NBDClientFlag.fixedNewstyle).bigEndianBytes)
                try client.send(
                    NBDMagic.option.bigEndianBytes + NBDOption.go.rawValue.bigEndianBytes
                        + UInt32(100).bigEndianBytes + [UInt8](repeating: 0, count: 50))
            }
        ),
        (
            "after NBD_OPT_ABORT",
            { client in
                _ = try client.receive(18)
                try client.send(UInt32(NBDClientFlag.fixedNewstyle).bigEndianBytes)
                try client.sendOption(NBDOption.abort.rawValue, data: [])
                _ = try client.receiveOptionReply()
            }
        ),
        ("after GO", { client in try client.handshake() }),
        (
            "inside a request header",
            { client in
                try client.handshake()
                try client.send(
                    Array(
                        RawClient.request(type: NBDCommand.read.rawValue, cookie: 1, offset: 0, length: 4096).prefix(14)
                    ))
            }
        ),
        (
            "inside a write's payload",
            { client in
                try client.handshake()
                try client.sendRequest(
                    type: NBDCommand.write.rawValue, cookie: 1, offset: 0, length: 65536,
                    payload: [UInt8](repeating: 5, count: 30000))
            }
        ),
        (
            "with a 1 MiB read unread",
            { client in
                try client.handshake()
                try client.sendRequest(type: NBDCommand.read.rawValue, cookie: 1, offset: 0, length: 1 << 20)
            }
        ),
        (
            "with structured 4 MiB reads unread",
            { client in
                try client.handshake(structuredReplies: true)
                for cookie in 0..<4 {
                    try client.sendRequest(
                        type: NBDCommand.read.rawValue, cookie: UInt64(cookie), offset: 0, length: 4 << 20)
                }
            }
        ),
        (
            "after NBD_CMD_DISC",
            { client in
                try client.handshake()
                try client.sendRequest(type: NBDCommand.disconnect.rawValue, cookie: 1, offset: 0, length: 0)
            }
        ),
    ]

    static func waitForConnections(_ server: NBDServer, open: Int) async throws {
        for _ in 0..<500 where server.figures()[.connectionsOpen] != open {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(server.figures()[.connectionsOpen] == open)
    }
}
