import BlockDevice
import CNBD
import Foundation
import NBD
import Testing
import TestSupport
import ZNBDSystem
import ZRAM

@Suite("NBD through libnbd and the Debian tools", .serialized)
struct ClientTests {
    @Test("read, write, trim, write-zeroes, flush, cache and block status through libnbd, on the compressed device")
    func roundTrip() async throws {
        let device = try CompressedBlockDevice(.init(byteCount: 16 << 20))
        try await withServedDevice(device: device) { served in
            let client = try served.client()
            #expect(client.size == 16 << 20)
            #expect(client.canMultiConn)
            #expect(client.structuredRepliesNegotiated)
            let corpus = try Corpus.pages(64)
            try client.write(corpus.bytes, at: 1 << 20)
            #expect(try client.read(count: corpus.bytes.count, at: 1 << 20) == corpus.bytes)
            try client.write(
                [UInt8](repeating: 0xAA, count: 1536), at: (1 << 20) + 512, flags: UInt32(LIBNBD_CMD_FLAG_FUA))
            var expected = corpus.bytes
            expected.replaceSubrange(512..<2048, with: repeatElement(0xAA, count: 1536))
            #expect(try client.read(count: expected.count, at: 1 << 20) == expected)
            try client.trim(count: 16 << 12, at: 1 << 20)
            // NO_HOLE: the zeroed pages stay allocated (zero, not a hole).
            try client.zero(count: 8 << 12, at: (1 << 20) + (16 << 12), flags: UInt32(LIBNBD_CMD_FLAG_NO_HOLE))
            try client.flush()
            try client.cache(count: 4096, at: 0)
            expected.replaceSubrange(0..<(24 << 12), with: repeatElement(0, count: 24 << 12))
            #expect(try client.read(count: expected.count, at: 1 << 20) == expected)
            // base:allocation: hole|zero, then trimmed (hole|zero), zeroed (zero), data, hole|zero.
            let extents = try client.blockStatus(count: 16 << 20, at: 0)
            let holeZero = NBDAllocationFlag.hole | NBDAllocationFlag.zero
            let mebibyte: UInt32 = 1 << 20, page: UInt32 = 4096
            let expectedLengths: [UInt32] = [
                mebibyte + 16 * page, 8 * page, 40 * page, 16 * mebibyte - mebibyte - 64 * page,
            ]
            #expect(extents.map(\.length) == expectedLengths)
            #expect(extents.map(\.flags) == [holeZero, NBDAllocationFlag.zero, 0, holeZero])
            let one = try client.blockStatus(count: 16 << 20, at: 0, flags: UInt32(LIBNBD_CMD_FLAG_REQ_ONE))
            #expect(one.count == 1 && one[0].flags == holeZero)
            // A read of a hole comes back as zeroes (OFFSET_HOLE chunk).
            #expect(try client.read(count: 8192, at: 0) == [UInt8](repeating: 0, count: 8192))
            let stats = device.figures()
            #expect(stats[.discards] == 1 && stats[.zeroes] == 1)
            try device.validate()
        }
    }

    @Test("TCP and a Unix socket at once, from one server")
    func tcpAndUnix() async throws {
        let directory = try makeTemporaryDirectory("znbd-tcp")
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.appendingPathComponent("nbd.sock").path
        let server = NBDServer(
            export: NBDExport(name: "tcp", device: try MemoryBlockDevice(byteCount: 8 << 20)),
            configuration: .init(unixSocketPath: socket, tcpHost: "127.0.0.1", tcpPort: 0, eventLoopThreads: 1))
        do {
            let addresses = try await server.start()
            let port = try #require(addresses.last?.port)
            let overTCP = try LibNBDClient(uri: "nbd://127.0.0.1:\(port)/tcp")
            let overUnix = try LibNBDClient(uri: "nbd+unix:///tcp?socket=\(socket)")
            try overTCP.write([UInt8](repeating: 4, count: 8192), at: 4096)
            #expect(try overUnix.read(count: 8192, at: 4096) == [UInt8](repeating: 4, count: 8192))
            #expect(server.figures()[.connectionsOpen] == 2)
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    @Test("simple replies only (as the kernel's client uses): reads and errors still correct")
    func simpleReplies() async throws {
        try await withServedDevice(mebibytes: 8) { served in
            let client = try served.client(structuredReplies: false)
            #expect(!client.structuredRepliesNegotiated)
            try client.write([UInt8](repeating: 5, count: 65536), at: 4096)
            #expect(try client.read(count: 65536, at: 4096) == [UInt8](repeating: 5, count: 65536))
        }
    }

    @Test("256 requests in flight on one connection, and 4 connections at once, with CAN_MULTI_CONN flushes")
    func concurrency() async throws {
        let device = try CompressedBlockDevice(.init(byteCount: 64 << 20))
        try await withServedDevice(device: device) { served in
            let corpus = try Corpus.pages(4096)
            let client = try served.client()
            let writes = (0..<256).map { index in
                (bytes: Array(corpus.bytes[index * 65536..<(index + 1) * 65536]), offset: index * 65536)
            }
            try client.writeConcurrently(writes)
            #expect(try client.read(count: 16 << 20, at: 0) == Array(corpus.bytes[0..<(16 << 20)]))

            let failures = Locked<[String]>([])
            let uri = served.uri
            runOnThreads(4) { worker in
                do {
                    let own = try LibNBDClient(uri: uri)
                    let other = try LibNBDClient(uri: uri)
                    let base = (16 << 20) + worker * (8 << 20)
                    for round in 0..<32 {
                        let offset = base + round * 65536
                        let data = Array(corpus.bytes[(offset % (16 << 20))..<(offset % (16 << 20)) + 65536])
                        try own.write(data, at: offset)
                        // A flush on another connection covers the completed write.
                        try other.flush()
                        if try other.read(count: 65536, at: offset) != data {
                            failures.withLock { $0.append("worker \(worker) round \(round)") }
                        }
                    }
                } catch {
                    failures.withLock { $0.append("worker \(worker): \(error)") }
                }
            }
            #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
            let stats = served.server.figures()
            #expect(stats.commands["write"]?.requests ?? 0 >= 256 + 128)
            #expect(stats.commands["flush"]?.requests == 128)
            try device.validate()
        }
    }

    @Test("nbdinfo: every --can flag, --list and --map after writes and trims")
    func nbdinfo() async throws {
        try await withServedDevice(mebibytes: 16) { served in
            let can = [
                "connect", "read", "write", "flush", "fua", "trim", "zero", "fast-zero", "cache", "multi-conn", "df",
                "structured-reply",
            ]
            for flag in can {
                let result = try runCommand(["nbdinfo", "--can", flag, served.uri], timeout: 30)
                #expect(result.status == 0, "--can \(flag): \(result.status) \(result.standardError)")
            }
            for flag in ["read-only", "rotational"] {
                let result = try runCommand(["nbdinfo", "--is", flag, served.uri], timeout: 30)
                #expect(result.status == 2, "--is \(flag) should be false: \(result.status) \(result.standardError)")
            }
            let list = try runCommand(["nbdinfo", "--list", served.uri], timeout: 30)
            #expect(list.status == 0)
            #expect(list.standardOutput.contains("export=\"test\""), "\(list.standardOutput)")
            #expect(list.standardOutput.contains("description: a test device"))
            #expect(list.standardOutput.contains("block_size_maximum: 33554432"))

            let client = try served.client()
            try client.write([UInt8](repeating: 1, count: 1 << 20), at: 0)
            // Without NO_HOLE the zeroed range is freed, as zram frees it:
            // a hole, one extent with the trimmed range after it.
            try client.zero(count: 1 << 20, at: 1 << 20)
            try client.write([UInt8](repeating: 2, count: 1 << 20), at: 2 << 20)
            try client.trim(count: 512 << 10, at: 2 << 20)
            let map = try runCommand(["nbdinfo", "--map", served.uri], timeout: 30)
            let rows = map.standardOutput.split(separator: "\n").map {
                $0.split(separator: " ", omittingEmptySubsequences: true).prefix(3).joined(separator: " ")
            }
            #expect(
                rows == [
                    "0 1048576 0", "1048576 1572864 3", "2621440 524288 0", "3145728 13631488 3",
                ], "\(map.standardOutput)")
        }
    }

    @Test("nbdcopy of a 256 MiB file in and out gives equal checksums; qemu-img compare agrees")
    func nbdcopyAndQemu() async throws {
        let directory = try makeTemporaryDirectory("znbd-copy")
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = try Corpus.file(byteCount: 256 << 20)
        let output = directory.appendingPathComponent("out.img").path
        let device = try CompressedBlockDevice(.init(byteCount: 256 << 20))
        try await withServedDevice(device: device) { served in
            let copyIn = try runCommand(["nbdcopy", input.path, served.uri], timeout: 120)
            #expect(copyIn.status == 0, "\(copyIn.standardError)")
            let copyOut = try runCommand(["nbdcopy", served.uri, output], timeout: 120)
            #expect(copyOut.status == 0, "\(copyOut.standardError)")
            let sums = try runCommand(["sha256sum", input.path, output], timeout: 60).standardOutput
                .split(separator: "\n").map { $0.prefix(64) }
            #expect(sums.count == 2 && sums[0] == sums[1], "\(sums)")
            let compare = try runCommand(
                ["qemu-img", "compare", "-f", "raw", "-F", "raw", input.path, served.uri], timeout: 120)
            #expect(compare.status == 0, "\(compare.standardOutput)\(compare.standardError)")
            #expect(device.figures()[.origDataSize] > 0)
            try device.validate()
        }
    }
}
