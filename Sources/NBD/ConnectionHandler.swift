import NIOCore
import NIOPosix

/// One client connection: cuts the stream into frames (NBDFrameParser),
/// runs the handshake (NBDHandshake), then hands each request to the
/// processor (writes on the worker pool when there is one, everything else
/// on this event loop) and writes each reply when it is ready: replies may
/// leave in a different order than requests came, and every request gets
/// exactly one.
///
/// Back-pressure: at most `maximumInFlightRequests` requests, or
/// `maximumInFlightBytes` bytes of payload and read data, are in progress at
/// once. Past either, the handler stops parsing and holds the channel's
/// reads, so a client that floods writes fills its own socket buffer, not
/// the server's memory.
///
/// Everything here runs on the connection's event loop.
final class NBDConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct Limits: Sendable {
        var maximumInFlightRequests: Int
        var maximumInFlightBytes: Int
    }

    private let export: NBDExport
    private let limits: Limits
    private let workers: NIOThreadPool?
    private let counters: ServerCounters

    private var buffer = ByteBuffer()
    private var parser: NBDFrameParser
    private var handshake: NBDHandshake
    private var processor: NBDRequestProcessor?

    private var inFlightRequests = 0
    private var inFlightBytes = 0
    /// A read the pipeline asked for while we were over a limit.
    private var readHeld = false
    /// After NBD_CMD_DISC or a fatal error: parse nothing more.
    private var stopParsing = false
    /// DISC, or the end of the client's input: close once nothing is in
    /// progress.
    private var closeWhenIdle = false
    /// The server is stopping: answer what the client has sent, then close
    /// once the connection has been quiet for one `quietPeriod`.
    private var draining = false
    /// Bytes arrived since the last quiet check.
    private var readSinceQuietCheck = false
    /// The last parse pass ended for want of bytes (no whole frame waits).
    private var parserStarved = true
    private var parsing = false
    private var closed = false

    init(export: NBDExport, limits: Limits, workers: NIOThreadPool?, counters: ServerCounters) {
        self.export = export
        self.limits = limits
        self.workers = workers
        self.counters = counters
        parser = NBDFrameParser(maximumPayload: export.maximumPayload)
        handshake = NBDHandshake(export: export)
    }

    private var overLimit: Bool {
        inFlightRequests >= limits.maximumInFlightRequests || inFlightBytes >= limits.maximumInFlightBytes
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        counters.connectionsOpen.add(1, ordering: .relaxed)
        counters.connectionsTotal.add(1, ordering: .relaxed)
        var greeting = context.channel.allocator.buffer(capacity: 18)
        NBDHandshake.greeting(into: &greeting)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        counters.connectionsOpen.subtract(1, ordering: .relaxed)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        readSinceQuietCheck = true
        var incoming = unwrapInboundIn(data)
        if buffer.readableBytes == 0 {
            buffer = incoming
        } else {
            buffer.writeBuffer(&incoming)
        }
        processFrames(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if overLimit || stopParsing {
            readHeld = true
        } else {
            context.read()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is NBDServer.Drain:
            // Requests the client sent before the server began to stop may
            // still sit in the socket, unread: keep reading and answering
            // until a whole quiet period passes with nothing read, nothing
            // in progress and no read held back by the limits.
            draining = true
            if !readHeld { context.read() }
            scheduleQuietCheck(context: context)
        case ChannelEvent.inputClosed:
            // The client will send nothing more: answer every whole request it
            // sent (some may still wait in the buffer behind the in-flight
            // limit), then close.
            closeWhenIdle = true
            closeIfIdle(context: context)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset or a broken pipe costs this connection only.
        close(context: context)
    }

    // MARK: Frames

    private func processFrames(context: ChannelHandlerContext) {
        guard !parsing else { return }
        parsing = true
        defer { parsing = false }
        while !stopParsing, !overLimit, !closed {
            guard let frame = parser.next(&buffer) else {
                parserStarved = true
                break
            }
            parserStarved = false
            switch frame {
            case .protocolError:
                counters.protocolErrors.add(1, ordering: .relaxed)
                close(context: context)
                return
            case .handshake(let message):
                var output = context.channel.allocator.buffer(capacity: 64)
                let outcome = handshake.receive(message, into: &output)
                if output.readableBytes > 0 { context.write(wrapOutboundOut(output), promise: nil) }
                switch outcome {
                case .proceed:
                    break
                case .transmission(let session):
                    parser.phase = .transmission
                    processor = NBDRequestProcessor(export: export, session: session)
                case .close:
                    close(context: context)
                    return
                }
            case .request(let request):
                if request.type == NBDCommand.disconnect.rawValue {
                    counters.record(.init(command: .disconnect, error: nil, bytes: 0))
                    stopParsing = true
                    closeWhenIdle = true
                } else {
                    dispatch(request, context: context)
                }
            }
        }
        if buffer.readableBytes == 0 {
            buffer.clear()
        } else if buffer.readerIndex >= 1 << 20 {
            buffer.discardReadBytes()
        }
        closeIfIdle(context: context)
    }

    private func dispatch(_ request: NBDRequest, context: ChannelHandlerContext) {
        guard let processor else { return }
        // Only writes go to the workers: compressing a page costs far more
        // than the hop to another thread, while reads (a decompression or a
        // memcpy), trims, zeroes and flushes cost less than the hop itself.
        let workers = request.type == NBDCommand.write.rawValue ? self.workers : nil
        var owned = request
        if workers != nil, let payload = request.payload {
            // The payload is a slice of the cumulation buffer, which this
            // loop appends to and reuses once it is the only owner. A worker
            // thread that dropped the last other reference would then have
            // read storage this thread reallocates: Swift's uniqueness check
            // gives ThreadSanitizer no happens-before edge for that, so the
            // worker gets a copy of its own (a memcpy beside a compression).
            owned.payload = context.channel.allocator.buffer(buffer: payload)
        }
        let request = owned
        let cost = Int(request.length)
        inFlightRequests += 1
        inFlightBytes += cost
        let allocator = context.channel.allocator
        guard let workers else {
            let result = processor.process(request, allocator: allocator)
            complete(.success(result), cost: cost, flush: false, context: context)
            return
        }
        workers.runIfActive(eventLoop: context.eventLoop) {
            processor.process(request, allocator: allocator)
        }.assumeIsolated().whenComplete { result in
            self.complete(result, cost: cost, flush: true, context: context)
        }
    }

    private func complete(
        _ result: Result<(reply: ByteBuffer, outcome: NBDRequestProcessor.Outcome), any Error>, cost: Int,
        flush: Bool, context: ChannelHandlerContext
    ) {
        inFlightRequests -= 1
        inFlightBytes -= cost
        switch result {
        case .success(let (reply, outcome)):
            counters.record(outcome)
            guard !closed else { return }
            if flush {
                context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            } else {
                context.write(wrapOutboundOut(reply), promise: nil)
            }
        case .failure:
            // The worker pool is shutting down: nothing more can be answered.
            close(context: context)
            return
        }
        guard !closed else { return }
        // Room again: parse what is buffered, then let reads resume.
        if !parsing {
            processFrames(context: context)
            if readHeld, !overLimit, !stopParsing {
                readHeld = false
                context.read()
            }
        }
    }

    private var isIdle: Bool { inFlightRequests == 0 && (stopParsing || parserStarved) }

    private func closeIfIdle(context: ChannelHandlerContext) {
        guard closeWhenIdle, !closed, isIdle else { return }
        close(context: context)
    }

    /// How long a draining connection must stay quiet before it closes:
    /// far longer than the event loop takes to read what already waits in
    /// the socket.
    static let quietPeriod = TimeAmount.milliseconds(25)

    private func scheduleQuietCheck(context: ChannelHandlerContext) {
        readSinceQuietCheck = false
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.quietPeriod) {
            guard !self.closed else { return }
            if self.isIdle, !self.readHeld, !self.readSinceQuietCheck {
                self.close(context: context)
            } else {
                self.scheduleQuietCheck(context: context)
            }
        }
    }

    /// Closes once every reply written so far has reached the socket:
    /// closing at once would drop replies still queued behind a client that
    /// reads slowly.
    private func close(context: ChannelHandlerContext) {
        guard !closed else { return }
        closed = true
        stopParsing = true
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
