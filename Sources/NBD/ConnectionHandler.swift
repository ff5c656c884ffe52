import NIOCore
import NIOPosix

/// One client connection: cuts the stream into frames (NBDFrameParser),
/// runs the handshake (NBDHandshake), then hands each request to the
/// processor and writes each reply when it is ready. Replies may leave in a
/// different order than requests came; every request gets exactly one.
///
/// Where a request runs: writes, and reads, trims, zeroings and block-status
/// queries over `inlineLimit` bytes, run on the worker pool; everything else
/// on this event loop, in passes of at most `inlineWorkPerPass` bytes, after
/// which the loop serves other connections before the pass goes on. So no
/// request makes another connection on this loop wait for more than about
/// one pass (a 32 MiB read or a 4 GiB trim runs on a worker).
///
/// Back-pressure: a request counts from the moment it is parsed until its
/// reply has been handed to the socket (its write promise), not merely
/// queued, with the bytes it may hold (NBDRequestProcessor.replyBudget: a
/// write's payload, a read's data). At most `maximumInFlightRequests`
/// requests and `maximumInFlightBytes` bytes per connection, and the
/// server-wide InFlightBudget; past them the handler stops parsing and holds
/// the channel's reads. A client that sends reads and never reads the
/// replies therefore costs at most this connection's budget, and one that
/// floods writes fills its own socket buffer, not the server's memory.
///
/// Everything here runs on the connection's event loop.
final class NBDConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct Limits: Sendable {
        /// Requests in progress at once.
        var maximumInFlightRequests: Int
        /// Bytes those requests may hold: this connection's budget.
        var maximumInFlightBytes: Int
        /// Larger requests run on the workers, not on the event loop.
        var inlineLimit: Int
        /// Bytes of requests one pass on the loop may run before it lets the
        /// loop's other connections in.
        var inlineWorkPerPass: Int
    }

    private let export: NBDExport
    private let limits: Limits
    private let workers: NIOThreadPool?
    private let counters: ServerCounters
    private let budget: InFlightBudget

    private var buffer = ByteBuffer()
    private var parser: NBDFrameParser
    private var handshake: NBDHandshake
    private var processor: NBDRequestProcessor?

    private var inFlightRequests = 0
    private var inFlightBytes = 0
    /// A parsed request waiting for room in this connection's budget or the
    /// server's.
    private var waitingRequest: NBDRequest?
    /// A read the pipeline asked for while the handler could take nothing.
    private var readHeld = false
    /// A pass ran out of its inline budget; the rest of it is scheduled.
    private var passScheduled = false
    /// Replies were written but not flushed yet.
    private var unflushed = false
    /// After NBD_CMD_DISC or a fatal error: parse nothing more.
    private var stopParsing = false
    /// DISC, or the end of the client's input: close once nothing is in
    /// progress.
    private var closeWhenIdle = false
    /// Bytes arrived since the last quiet check (the server is draining).
    private var readSinceQuietCheck = false
    /// The last parse pass ended for want of bytes (no whole frame waits).
    private var parserStarved = true
    private var parsing = false
    private var closed = false
    /// Called by the server-wide budget, from any thread, once it has room.
    private var wake: (@Sendable () -> Void)?

    init(export: NBDExport, limits: Limits, workers: NIOThreadPool?, counters: ServerCounters, budget: InFlightBudget) {
        self.export = export
        self.limits = limits
        self.workers = workers
        self.counters = counters
        self.budget = budget
        parser = NBDFrameParser(maximumPayload: export.maximumPayload)
        handshake = NBDHandshake(export: export)
    }

    /// Reads stay held while a request waits for room, the request count is
    /// at its limit, a pass is still to finish, or nothing more will be parsed.
    private var mustHoldReads: Bool {
        waitingRequest != nil || passScheduled || stopParsing || inFlightRequests >= limits.maximumInFlightRequests
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        counters.connectionsOpen.add(1, ordering: .relaxed)
        counters.connectionsTotal.add(1, ordering: .relaxed)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        wake = { eventLoop.execute { handler.value.resume(context: boundContext.value) } }
        var greeting = context.channel.allocator.buffer(capacity: 18)
        NBDHandshake.greeting(into: &greeting)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        budget.cancelWait(ObjectIdentifier(self))
        wake = nil
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
        flushIfNeeded(context: context)
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if mustHoldReads {
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
            if !readHeld { context.read() }
            scheduleQuietCheck(context: context)
        case ChannelEvent.inputClosed:
            // The client will send nothing more: answer every whole request it
            // sent (some may still wait in the buffer behind the limits),
            // then close.
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

    /// Parses and starts requests until the buffer runs dry, a limit is
    /// reached, or the pass has done its share of inline work.
    private func processFrames(context: ChannelHandlerContext) {
        guard !parsing, !closed else { return }
        parsing = true
        defer { parsing = false }
        var inlineWork = 0
        frames: while !stopParsing, !closed {
            if inlineWork >= limits.inlineWorkPerPass {
                schedulePass(context: context)
                break
            }
            if let waiting = waitingRequest {
                guard admit(waiting) else { break }
                waitingRequest = nil
                inlineWork += start(waiting, context: context)
                continue
            }
            guard inFlightRequests < limits.maximumInFlightRequests else { break }
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
                if output.readableBytes > 0 {
                    context.write(wrapOutboundOut(output), promise: nil)
                    unflushed = true
                }
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
                } else if admit(request) {
                    inlineWork += start(request, context: context)
                } else {
                    waitingRequest = request
                    break frames
                }
            }
        }
        if buffer.readableBytes == 0 {
            // An emptied large buffer (a burst of big writes grows it to a
            // few MiB) goes; an idle connection keeps no more than 64 KiB.
            if buffer.capacity > Self.idleBufferCapacity {
                buffer = ByteBuffer()
            } else {
                buffer.clear()
            }
        } else if buffer.readerIndex >= 1 << 20 {
            buffer.discardReadBytes()
        }
        closeIfIdle(context: context)
    }

    /// Takes room for `request` in this connection's budget and the
    /// server's. A connection with nothing in progress always has room in
    /// its own (a request may be larger than the budget); the server's may
    /// refuse and wake this connection later.
    private func admit(_ request: NBDRequest) -> Bool {
        let cost = NBDRequestProcessor.replyBudget(for: request)
        guard inFlightRequests == 0 || inFlightBytes + cost <= limits.maximumInFlightBytes else { return false }
        guard let wake,
            budget.acquire(cost, holdsNothing: inFlightRequests == 0, owner: ObjectIdentifier(self), wake: wake)
        else { return false }
        inFlightRequests += 1
        inFlightBytes += cost
        return true
    }

    /// Runs an admitted request, here or on a worker; returns the bytes of
    /// inline work it did.
    private func start(_ request: NBDRequest, context: ChannelHandlerContext) -> Int {
        let cost = NBDRequestProcessor.replyBudget(for: request)
        guard let processor else {
            finished(cost: cost, context: context)
            return 0
        }
        let allocator = context.channel.allocator
        guard let workers, runsOnWorkers(request) else {
            send(.success(processor.process(request, allocator: allocator)), cost: cost, context: context)
            return Int(request.length)
        }
        var owned = request
        if let payload = request.payload {
            // The payload is a slice of the cumulation buffer, which this
            // loop appends to and reuses once it is the only owner. A worker
            // thread that dropped the last other reference would then have
            // read storage this thread reallocates: Swift's uniqueness check
            // gives ThreadSanitizer no happens-before edge for that, so the
            // worker gets a copy of its own (a memcpy beside a compression).
            owned.payload = allocator.buffer(buffer: payload)
        }
        let job = owned
        let channel = context.channel
        workers.runIfActive(eventLoop: context.eventLoop) { () -> (reply: NBDReply, outcome: NBDRequestProcessor.Outcome)? in
            // A client that is gone gets no answer, so queued work for it is
            // skipped (an unanswered write may or may not have happened).
            guard channel.isActive else { return nil }
            return processor.process(job, allocator: allocator)
        }.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let processed?): self.send(.success(processed), cost: cost, context: context)
            case .success(nil): self.finished(cost: cost, context: context)
            case .failure(let error): self.send(.failure(error), cost: cost, context: context)
            }
            self.flushIfNeeded(context: context)
        }
        return 0
    }

    /// Writes go to the workers (compressing a page costs far more than the
    /// hop to another thread); so does any other request over the inline
    /// limit. Small reads, trims, zeroings, flushes and block status cost
    /// less than the hop itself and stay here.
    private func runsOnWorkers(_ request: NBDRequest) -> Bool {
        switch NBDCommand(rawValue: request.type) {
        case .write: true
        case .read, .trim, .writeZeroes, .blockStatus: Int(request.length) > limits.inlineLimit
        default: false
        }
    }

    /// Writes a finished request's reply; the request stops counting once
    /// the reply has been handed to the socket (or the connection is gone).
    private func send(
        _ result: Result<(reply: NBDReply, outcome: NBDRequestProcessor.Outcome), any Error>, cost: Int,
        context: ChannelHandlerContext
    ) {
        switch result {
        case .failure:
            // The worker pool is shutting down: nothing more can be answered.
            finished(cost: cost, context: context)
            close(context: context)
        case .success(let (reply, outcome)):
            counters.record(outcome)
            guard !closed else {
                finished(cost: cost, context: context)
                return
            }
            let written = context.eventLoop.makePromise(of: Void.self)
            if let data = reply.data {
                context.write(wrapOutboundOut(reply.head), promise: nil)
                context.write(wrapOutboundOut(data), promise: written)
            } else {
                context.write(wrapOutboundOut(reply.head), promise: written)
            }
            unflushed = true
            written.futureResult.assumeIsolated().whenComplete { _ in
                self.finished(cost: cost, context: context)
            }
        }
    }

    /// A request's reply has left (or never will): give back its room and
    /// take up what waited for it.
    private func finished(cost: Int, context: ChannelHandlerContext) {
        inFlightRequests -= 1
        inFlightBytes -= cost
        budget.release(cost)
        resume(context: context)
    }

    /// Room again, or the rest of a pass: parse what is buffered, send what
    /// that answered, and let reads go on.
    private func resume(context: ChannelHandlerContext) {
        guard !closed else { return }
        processFrames(context: context)
        flushIfNeeded(context: context)
        if readHeld, !mustHoldReads {
            readHeld = false
            context.read()
        }
    }

    private func schedulePass(context: ChannelHandlerContext) {
        passScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.passScheduled = false
            self.resume(context: context)
        }
    }

    private func flushIfNeeded(context: ChannelHandlerContext) {
        guard unflushed, !closed else { return }
        unflushed = false
        context.flush()
    }

    private var isIdle: Bool {
        inFlightRequests == 0 && waitingRequest == nil && (stopParsing || parserStarved)
    }

    private func closeIfIdle(context: ChannelHandlerContext) {
        guard closeWhenIdle, !closed, isIdle else { return }
        close(context: context)
    }

    /// The most receive buffer a connection keeps while it has nothing to
    /// parse.
    static let idleBufferCapacity = 64 << 10

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
        budget.cancelWait(ObjectIdentifier(self))
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
