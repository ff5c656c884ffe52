import BlockDevice
import Foundation
@testable import NBD
import NIOCore
import NIOEmbedded
import Testing
import TestSupport
import ZRAM

/// Byte streams a client could send, valid and mutated, fed to the real
/// connection handler (parser, handshake, processor, back-pressure, close)
/// in two configurations:
/// - loop only (no workers, payloads sliced from the receive buffers), on
///   an EmbeddedChannel: no socket, no thread, every step deterministic for
///   a seed;
/// - the daemon's own (worker threads, payloads in buffers of their own),
///   on a NIOAsyncTestingChannel, whose loop the workers' results reach
///   from their threads: the streams are the seed's, the interleaving of
///   the workers is not.
///
/// The suite runs a bounded number of streams; `tools/fuzz-nbd --seconds N`
/// runs both for as long as asked (ZNBD_FUZZ_SECONDS each). It found a
/// FLUSH whose reserved offset trapped when converted to Int (BadInputTests
/// keeps it).
@Suite("NBD: fuzzed byte streams through the connection handler")
struct FuzzTests {
    /// How many streams a run feeds, and until when.
    struct Run {
        let streams: Int
        let deadline: Date
        var random: SeededRandom
        let seed: UInt64
        var tally = (streams: 0, transmission: 0, closedByServer: 0, replyBytes: 0)

        init(name: String, streamsInSuite: Int) {
            let seconds = ProcessInfo.processInfo.environment["ZNBD_FUZZ_SECONDS"].flatMap(Double.init)
            streams = seconds == nil ? streamsInSuite : Int.max
            deadline = Date().addingTimeInterval(seconds ?? .infinity)
            (random, seed) = SeededRandom.fromEnvironment()
            print("\(name) seed \(seed)")
        }

        /// The next stream, or nil when the run is over: a plausible
        /// session, as generated, mutated, or replaced by noise.
        mutating func nextStream() -> [UInt8]? {
            guard tally.streams < streams, Date() < deadline else { return nil }
            var bytes = FuzzTests.session(&random)
            switch random.next() % 4 {
            case 0: break  // valid as generated
            case 1: bytes = random.bytes(Int(random.next() % 512))  // noise
            default: FuzzTests.mutate(&bytes, &random)
            }
            return bytes
        }

        mutating func record(_ outcome: Outcome, budget: InFlightBudget) {
            #expect(
                budget.bytesInUse == 0,
                "stream \(tally.streams) (seed \(seed)) left \(budget.bytesInUse) bytes held")
            tally.streams += 1
            if outcome.reachedTransmission { tally.transmission += 1 }
            if outcome.closedByServer { tally.closedByServer += 1 }
            tally.replyBytes += outcome.replyBytes
        }

        func report(_ name: String) {
            print(
                "\(name): \(tally.streams) streams, \(tally.transmission) reached transmission, "
                    + "\(tally.closedByServer) closed by the server, \(tally.replyBytes) bytes answered")
            #expect(tally.transmission > tally.streams / 10, "the generator should reach transmission often")
        }
    }

    static func makeExport() throws -> (CompressedBlockDevice, NBDExport) {
        let device = try CompressedBlockDevice(.init(byteCount: 2 << 20))
        return (device, NBDExport(name: "fuzz", description: "fuzz target", device: device, maximumPayload: 256 << 10))
    }

    static let limits = NBDConnectionHandler.Limits(
        maximumInFlightRequests: 8, maximumInFlightBytes: 1 << 20, inlineLimit: 64 << 10, inlineWorkPerPass: 64 << 10)

    @Test(
        "loop only: random and mutated sessions, no trap, each connection proceeds or closes, nothing held afterwards")
    func fuzzedSessions() throws {
        var run = Run(name: "fuzzedSessions", streamsInSuite: 20_000)
        let (device, export) = try Self.makeExport()
        let budget = InFlightBudget(limit: 4 << 20)
        while let bytes = run.nextStream() {
            run.record(try Self.run(bytes, export: export, budget: budget, random: &run.random), budget: budget)
        }
        run.report("fuzzedSessions")
        try device.validate()
    }

    @Test("with worker threads and owned payloads, as the daemon runs: the same guarantees")
    func fuzzedSessionsWithWorkers() async throws {
        var run = Run(name: "fuzzedSessionsWithWorkers", streamsInSuite: 10_000)
        let (device, export) = try Self.makeExport()
        let budget = InFlightBudget(limit: 4 << 20)
        let workers = WorkerThreads<WorkerJob>(count: 2, name: "fuzz-worker") { job in job.connection.run(job) }
        let loop = NIOAsyncTestingEventLoop()
        do {
            while let bytes = run.nextStream() {
                let outcome = try await Self.runWithWorkers(
                    bytes, export: export, budget: budget, workers: workers, loop: loop, random: &run.random)
                run.record(outcome, budget: budget)
            }
        } catch {
            Issue.record("stream \(run.tally.streams) (seed \(run.seed)): \(error)")
        }
        await workers.shutdown()
        await loop.shutdownGracefully()
        run.report("fuzzedSessionsWithWorkers")
        try device.validate()
    }

    struct Outcome {
        var reachedTransmission = false
        var closedByServer = false
        var replyBytes = 0

        /// Counts a reply's bytes; a transmission reply begins with a 4-byte
        /// reply magic.
        mutating func read(_ reply: inout ByteBuffer) {
            replyBytes += reply.readableBytes
            if let magic = reply.getInteger(at: reply.readerIndex, as: UInt32.self),
                magic == NBDMagic.simpleReply || magic == NBDMagic.structuredReply
            {
                reachedTransmission = true
            }
            reply.moveReaderIndex(to: reply.writerIndex)
        }
    }

    /// Feeds `bytes` in random pieces, reading every reply as a client that
    /// keeps up would, then ends the input and lets the handler finish.
    static func run(
        _ bytes: [UInt8], export: NBDExport, budget: InFlightBudget, random: inout SeededRandom
    )
        throws -> Outcome
    {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            NBDConnectionHandler(
                export: export, limits: limits, workers: nil, counters: ServerCounters(), budget: budget))
        try channel.connect(to: SocketAddress(unixDomainSocketPath: "/fuzz")).wait()
        var outcome = Outcome()
        func drain() throws {
            channel.embeddedEventLoop.run()
            while var reply = try channel.readOutbound(as: ByteBuffer.self) { outcome.read(&reply) }
        }
        try drain()
        var offset = 0
        while offset < bytes.count, channel.isActive {
            let piece = min(bytes.count - offset, 1 + Int(random.next() % 700))
            var buffer = channel.allocator.buffer(capacity: piece)
            buffer.writeBytes(bytes[offset..<offset + piece])
            offset += piece
            do {
                try channel.writeInbound(buffer)
            } catch {
                break  // closed by the server meanwhile
            }
            try drain()
        }
        outcome.closedByServer = !channel.isActive
        if channel.isActive {
            channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            try drain()
            channel.embeddedEventLoop.advanceTime(by: .seconds(1))
            try drain()
            // Every whole request answered, the client's input over: the
            // server closes (a frame half sent is no request).
            #expect(!channel.isActive, "still open after the end of the client's input")
        }
        _ = try channel.finish(acceptAlreadyClosed: true)
        return outcome
    }

    /// As `run`, with the daemon's configuration: requests go to `workers`,
    /// whose results reach the channel's loop from their threads. After each
    /// piece the loop runs until nothing is in progress (the server's budget
    /// holds nothing once every admitted request's reply has left).
    static func runWithWorkers(
        _ bytes: [UInt8], export: NBDExport, budget: InFlightBudget, workers: WorkerThreads<WorkerJob>,
        loop: NIOAsyncTestingEventLoop, random: inout SeededRandom
    ) async throws -> Outcome {
        let channel = NIOAsyncTestingChannel(loop: loop)
        let limits = self.limits
        try await loop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(
                NBDConnectionHandler(
                    export: export, limits: limits, workers: workers, counters: ServerCounters(), budget: budget))
        }
        try await channel.connect(to: SocketAddress(unixDomainSocketPath: "/fuzz")).get()
        var outcome = Outcome()
        func settle() async throws {
            let deadline = ContinuousClock.now + .seconds(30)
            while true {
                await loop.run()
                while var reply = try await channel.readOutbound(as: ByteBuffer.self) { outcome.read(&reply) }
                if budget.bytesInUse == 0 { return }
                guard ContinuousClock.now < deadline else {
                    Issue.record("requests still in progress after 30 s: \(budget.bytesInUse) bytes held")
                    return
                }
                try await Task.sleep(for: .microseconds(100))
            }
        }
        try await settle()
        var offset = 0
        while offset < bytes.count, channel.isActive {
            let piece = min(bytes.count - offset, 1 + Int(random.next() % 700))
            var buffer = channel.allocator.buffer(capacity: piece)
            buffer.writeBytes(bytes[offset..<offset + piece])
            offset += piece
            do {
                try await channel.writeInbound(buffer)
            } catch {
                break  // closed by the server meanwhile
            }
            try await settle()
        }
        outcome.closedByServer = !channel.isActive
        if channel.isActive {
            try await loop.executeInContext { channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
            try await settle()
            await loop.advanceTime(by: .seconds(1))
            try await settle()
            #expect(!channel.isActive, "still open after the end of the client's input")
        }
        _ = try await channel.finish(acceptAlreadyClosed: true)
        // Jobs the workers had not started when the channel closed are
        // skipped; their room comes back through the loop.
        try await settle()
        return outcome
    }

    // MARK: Streams

    /// A plausible session: client flags, some options, GO or EXPORT_NAME,
    /// then requests of every kind with mostly sensible fields.
    static func session(_ random: inout SeededRandom) -> [UInt8] {
        var out = ByteBuffer()
        out.writeInteger(UInt32(random.next() % 8 == 0 ? random.next() % 4 : 3))  // FIXED_NEWSTYLE | NO_ZEROES
        func option(_ code: UInt32, _ data: ByteBuffer) {
            out.writeMultipleIntegers(NBDMagic.option, code, UInt32(data.readableBytes))
            out.writeImmutableBuffer(data)
        }
        func exportData(infos: [UInt16]) -> ByteBuffer {
            var data = ByteBuffer()
            let name = random.next() % 4 == 0 ? "other" : "fuzz"
            data.writeInteger(UInt32(name.utf8.count))
            data.writeString(name)
            data.writeInteger(UInt16(infos.count))
            for info in infos { data.writeInteger(info) }
            return data
        }
        for _ in 0..<Int(random.next() % 4) {
            switch random.next() % 6 {
            case 0: option(NBDOption.structuredReply.rawValue, ByteBuffer())
            case 1:
                var data = ByteBuffer()
                data.writeInteger(UInt32(4))
                data.writeString("fuzz")
                data.writeInteger(UInt32(1))
                data.writeInteger(UInt32(15))
                data.writeString("base:allocation")
                option(NBDOption.setMetaContext.rawValue, data)
            case 2: option(NBDOption.list.rawValue, ByteBuffer())
            case 3: option(NBDOption.info.rawValue, exportData(infos: [0, 1, 2, 3]))
            case 4: option(UInt32(random.next() % 16), ByteBuffer(bytes: random.bytes(Int(random.next() % 32))))
            default:
                option(NBDOption.listMetaContext.rawValue, ByteBuffer(bytes: random.bytes(Int(random.next() % 24))))
            }
        }
        if random.next() % 5 == 0 {
            option(NBDOption.exportName.rawValue, ByteBuffer(string: "fuzz"))
        } else {
            option(NBDOption.go.rawValue, exportData(infos: random.next() % 2 == 0 ? [3] : []))
        }
        let size = UInt64(2 << 20)
        for cookie in 0..<UInt64(random.next() % 24) {
            let type = UInt16(random.next() % 9)
            let unit: UInt64 = random.next() % 3 == 0 ? 1 : 512
            var length = UInt32(truncatingIfNeeded: (random.next() % 130) * unit)
            if random.next() % 16 == 0 { length = UInt32(truncatingIfNeeded: random.next()) }
            let offset = random.next() % 8 == 0 ? random.next() : (random.next() % size) / unit * unit
            let flags = UInt16(random.next() % 8 == 0 ? random.next() % 32 : 0)
            out.writeMultipleIntegers(NBDMagic.request, flags, type, cookie, offset, length)
            if type == NBDCommand.write.rawValue, length <= 300 << 10 {
                out.writeBytes(random.bytes(Int(length)))
            }
        }
        return Array(out.readableBytesView)
    }

    /// Flips bits, overwrites with magic or edge values, inserts, deletes,
    /// duplicates or truncates.
    static func mutate(_ bytes: inout [UInt8], _ random: inout SeededRandom) {
        let interesting: [[UInt8]] = [
            [0], [0xff], [0x80], [0xff, 0xff, 0xff, 0xff], [0, 0, 0, 0], [0x7f, 0xff, 0xff, 0xff],
            NBDMagic.request.bigEndianBytes, NBDMagic.option.bigEndianBytes, [0x00, 0x00, 0x01, 0x00],
        ]
        for _ in 0..<(1 + Int(random.next() % 8)) where !bytes.isEmpty {
            let at = Int(random.next() % UInt64(bytes.count))
            switch random.next() % 6 {
            case 0: bytes[at] ^= UInt8(1) << (random.next() % 8)
            case 1:
                let value = interesting[Int(random.next() % UInt64(interesting.count))]
                for (index, byte) in value.enumerated() where at + index < bytes.count { bytes[at + index] = byte }
            case 2: bytes.insert(contentsOf: random.bytes(1 + Int(random.next() % 16)), at: at)
            case 3: bytes.removeSubrange(at..<min(bytes.count, at + 1 + Int(random.next() % 16)))
            case 4:
                let end = min(bytes.count, at + 1 + Int(random.next() % 64))
                bytes.insert(contentsOf: bytes[at..<end], at: end)
            default: bytes.removeSubrange(at...)
            }
        }
    }
}
