import BlockDevice
@testable import NBD
import NIOCore
import NIOEmbedded
import Testing
import TestSupport

/// When a stopping server may close a connection, tested on an
/// EmbeddedChannel, whose clock only moves when the test moves it: a quiet
/// check that lands between two steps of the connection is set up exactly,
/// not hoped for under load.
@Suite("NBD: a draining connection closes only after a quiet period")
struct DrainTests {
    /// Passes writes on; between `hold` and `release` keeps their promises:
    /// a socket whose client has not read the replies yet.
    final class HeldWrites: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        private var holding = false
        private var promises: [EventLoopPromise<Void>] = []

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            if holding, let promise {
                promises.append(promise)
                context.write(data, promise: nil)
            } else {
                context.write(data, promise: promise)
            }
        }

        func hold() { holding = true }

        func release() {
            holding = false
            let released = promises
            promises.removeAll()
            for promise in released { promise.succeed() }
        }
    }

    /// A connection past the handshake, with at most one request in progress.
    struct Connection {
        let channel = EmbeddedChannel()
        let heldWrites = HeldWrites()

        init() throws {
            let device = try MemoryBlockDevice(byteCount: 1 << 20)
            let export = NBDExport(name: "", description: "", device: device, readOnly: false)
            let limits = NBDConnectionHandler.Limits(
                maximumInFlightRequests: 1, maximumInFlightBytes: 1 << 20, inlineLimit: .max,
                inlineWorkPerPass: 1 << 20)
            try channel.pipeline.syncOperations.addHandler(heldWrites)
            try channel.pipeline.syncOperations.addHandler(
                NBDConnectionHandler(
                    export: export, limits: limits, workers: nil, counters: ServerCounters(),
                    budget: InFlightBudget(limit: 1 << 20)))
            try channel.connect(to: SocketAddress(unixDomainSocketPath: "/drain")).wait()
            var hello = ByteBuffer()
            hello.writeInteger(UInt32(3))  // FIXED_NEWSTYLE | NO_ZEROES
            hello.writeMultipleIntegers(NBDMagic.option, NBDOption.exportName.rawValue, UInt32(0))
            try send(Array(hello.readableBytesView))
            _ = try received()
        }

        func send(_ bytes: [UInt8]) throws {
            try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
            channel.embeddedEventLoop.run()
        }

        /// Every byte the server has written so far.
        func received() throws -> [UInt8] {
            var bytes: [UInt8] = []
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
            return bytes
        }

        func drain() {
            channel.pipeline.fireUserInboundEventTriggered(NBDServer.Drain())
            channel.embeddedEventLoop.run()
        }

        func wait(_ time: TimeAmount) { channel.embeddedEventLoop.advanceTime(by: time) }

        /// The client reads its replies and sends nothing more: the server
        /// closes after a quiet period, once its last write has left.
        func expectClosedOnceQuiet(sourceLocation: SourceLocation = #_sourceLocation) {
            wait(quietPeriods(2))
            #expect(!channel.isActive, "still open after the client fell quiet", sourceLocation: sourceLocation)
        }
    }

    static func write(cookie: UInt64, byte: UInt8) -> [UInt8] {
        RawClient.request(
            type: NBDCommand.write.rawValue, cookie: cookie, offset: cookie * 4096, length: 4096,
            payload: [UInt8](repeating: byte, count: 4096))
    }

    /// The cookies of the simple replies in `bytes`, each checked for success.
    static func cookies(ofRepliesIn bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> [UInt64] {
        #expect(bytes.count % 16 == 0, "\(bytes.count) bytes are not whole replies", sourceLocation: sourceLocation)
        return stride(from: 0, to: bytes.count - bytes.count % 16, by: 16).map { at in
            #expect(bytes.be32(at) == NBDMagic.simpleReply && bytes.be32(at + 4) == 0, sourceLocation: sourceLocation)
            return bytes.be64(at + 8)
        }
    }

    @Test("a request half received when the server stops is waited for, answered, and then the connection closes")
    func halfReceivedRequest() throws {
        let connection = try Connection()
        let request = Self.write(cookie: 1, byte: 0x5A)
        try connection.send(Array(request[..<2000]))  // the header and part of the payload
        connection.drain()
        connection.wait(quietPeriods(8))
        #expect(connection.channel.isActive, "closed with a request half received")
        try connection.send(Array(request[2000...]))
        #expect(Self.cookies(ofRepliesIn: try connection.received()) == [1])
        connection.expectClosedOnceQuiet()
    }

    @Test("a quiet check that falls just after held reads resume does not count the hold as silence")
    func quietCheckAfterHeldReads() throws {
        let connection = try Connection()
        connection.heldWrites.hold()
        try connection.send(Self.write(cookie: 1, byte: 1))
        #expect(Self.cookies(ofRepliesIn: try connection.received()) == [1])
        // The reply has not reached the client: the one request allowed is
        // still in progress, so the next read is held back.
        connection.channel.read()
        connection.drain()
        // Quiet checks come every period from here; the reads stay held
        // through four of them.
        connection.wait(quietPeriods(4))
        connection.wait(quietPeriods(1) - .milliseconds(1))
        // The reply leaves and reading resumes one millisecond before the
        // next check, which must not close a connection it has not read.
        connection.heldWrites.release()
        connection.wait(.milliseconds(1))
        #expect(connection.channel.isActive, "closed as reading resumed")
        try connection.send(Self.write(cookie: 2, byte: 2))
        #expect(Self.cookies(ofRepliesIn: try connection.received()) == [2])
        connection.expectClosedOnceQuiet()
    }

    @Test(
        "a second Drain starts no second chain of quiet checks: the connection closes a whole period after its last request"
    )
    func secondDrain() throws {
        let connection = try Connection()
        let period = quietPeriods(1)
        connection.drain()  // checks at 1, 2, 3… periods from now
        connection.wait(.nanoseconds(period.nanoseconds * 2 / 5))
        connection.drain()  // a second chain would check at 1.4, 2.4… periods
        connection.wait(.nanoseconds(period.nanoseconds * 2 / 5))
        // A request at 0.8 periods: the check at 1 sees it and clears the
        // mark; a second chain's check at 1.4 would see 0.4 periods of quiet
        // and close.
        try connection.send(Self.write(cookie: 1, byte: 1))
        #expect(Self.cookies(ofRepliesIn: try connection.received()) == [1])
        connection.wait(.nanoseconds(period.nanoseconds * 7 / 10))  // 1.5 periods
        #expect(connection.channel.isActive, "closed less than a quiet period after a request")
        connection.expectClosedOnceQuiet()
    }
}

/// `count` of the connection's quiet periods.
private func quietPeriods(_ count: Int64) -> TimeAmount {
    .nanoseconds(NBDConnectionHandler.quietPeriod.nanoseconds * count)
}
