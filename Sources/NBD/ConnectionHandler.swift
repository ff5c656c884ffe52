import NIOCore
import NIOPosix
import ZNBDSystem

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
/// Replies are flushed in batches: once per socket read for the requests it
/// brought that ran here, once per batch of worker results (ConnectionWork),
/// so a queue of small writes costs a few writev calls, not one per reply.
///
/// Back-pressure: a request counts from the moment it is parsed until its
/// reply has been handed to the socket (the write promise of its batch), not
/// merely queued, with the bytes it may hold (NBDRequestProcessor.replyBudget: a
/// write's payload, a read's data). At most `maximumInFlightRequests`
/// requests and `maximumInFlightBytes` bytes per connection, and the
/// server-wide InFlightBudget; past them the handler stops parsing and holds
/// the channel's reads. A client that sends reads and never reads the
/// replies therefore costs at most this connection's budget, and one that
/// floods writes fills its own socket buffer, not the server's memory.
///
/// Draining (the server stops): the connection goes on reading and answering
/// until it has been quiet for `quietPeriod` while free to read, with nothing
/// in progress and no request half received; then it closes.
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
    private let workers: WorkerThreads<WorkerJob>?
    private let counters: ServerCounters
    private let budget: InFlightBudget

    /// Bytes read and not parsed yet. In transmission the parser takes all
    /// it is given (FrameParser), so this holds the current socket read, and
    /// more only while requests wait for room.
    private var buffer: ByteBuffer
    /// What `buffer` is set to once parsed: holding no socket read lets the
    /// channel reuse its receive buffers instead of allocating new ones.
    private let emptyBuffer: ByteBuffer
    private var parser: NBDFrameParser
    private var handshake: NBDHandshake
    private var processor: NBDRequestProcessor?
    /// The connection's share of the workers, from transmission on (nil
    /// without workers: everything runs on the loop).
    private var work: ConnectionWork?
    /// Worker results being answered; kept to reuse its storage.
    private var workerResults: [WorkerResult] = []
    /// Requests for the workers, handed over together at the end of a pass.
    private var jobsToSubmit: [WorkerJob] = []

    private var inFlightRequests = 0
    private var inFlightBytes = 0
    /// A parsed request waiting for room in this connection's budget or the
    /// server's.
    private var waitingRequest: NBDRequest?
    /// A read the pipeline asked for while the handler could take nothing.
    private var readHeld = false
    /// A pass ran out of its inline budget; the rest of it is scheduled.
    private var passScheduled = false
    /// Handshake replies were written but not flushed yet.
    private var unflushed = false
    /// Request replies written since the last flush, and the room they hold:
    /// they stop counting once the flush has handed them to the socket.
    private var unflushedReplies = 0
    private var unflushedCost = 0
    /// After NBD_CMD_DISC or a fatal error: parse nothing more.
    private var stopParsing = false
    /// DISC, or the end of the client's input: close once nothing is in
    /// progress.
    private var closeWhenIdle = false
    /// Bytes arrived, or held reads were let go, since the last quiet check
    /// (the server is draining): the client has not been quiet for a whole
    /// period while the server was reading.
    private var activeSinceQuietCheck = false
    /// The server is stopping and a chain of quiet checks runs: one chain
    /// only, since each check clears `activeSinceQuietCheck` for the next.
    private var draining = false
    /// The last parse pass ended for want of bytes (no whole frame waits).
    private var parserStarved = true
    private var parsing = false
    private var closed = false
    /// Called by the server-wide budget, from any thread, once it has room.
    private var wake: (@Sendable () -> Void)?

    init(
        export: NBDExport, limits: Limits, workers: WorkerThreads<WorkerJob>?, counters: ServerCounters,
        budget: InFlightBudget
    ) {
        self.export = export
        self.limits = limits
        self.workers = workers
        self.counters = counters
        self.budget = budget
        parser = NBDFrameParser(maximumPayload: export.maximumPayload, ownPayloads: workers != nil)
        emptyBuffer = ByteBuffer()
        buffer = emptyBuffer
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
        work?.close()
        handOverUnflushedReplies(context: context)
        budget.cancelWait(ObjectIdentifier(self))
        wake = nil
        releaseWorkIfDone()
        counters.connectionsOpen.subtract(1, ordering: .relaxed)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        activeSinceQuietCheck = true
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
            // in progress, no read held back by the limits and no request
            // half received (isQuietWhileDraining).
            guard !draining else { return }
            draining = true
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
        defer {
            parsing = false
            submitJobs()
        }
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
                    let processor = NBDRequestProcessor(export: export, session: session)
                    self.processor = processor
                    work = workers == nil ? nil : makeWork(processor: processor, context: context)
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
            buffer = emptyBuffer
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
            finished(requests: 1, cost: cost, context: context)
            return 0
        }
        guard let work, runsOnWorkers(request) else {
            let (reply, outcome) = processor.process(request, allocator: context.channel.allocator)
            send(reply, outcome, cost: cost, context: context)
            return Int(request.length)
        }
        // With workers, a write's payload is a buffer of its own
        // (FrameParser's ownPayloads), not a slice of a receive buffer the
        // channel will write into again: the worker may read it and drop it.
        jobsToSubmit.append(WorkerJob(connection: work, request: request, cost: cost))
        return 0
    }

    /// One acquisition of the workers' queue for all a pass started.
    private func submitJobs() {
        guard let workers, !jobsToSubmit.isEmpty else { return }
        workers.submit(contentsOf: jobsToSubmit)
        jobsToSubmit.removeAll(keepingCapacity: true)
    }

    /// The connection's share of the workers; its results come back to this
    /// loop through `takeWorkerResults`.
    private func makeWork(processor: NBDRequestProcessor, context: ChannelHandlerContext) -> ConnectionWork {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        return ConnectionWork(processor: processor, allocator: context.channel.allocator) {
            eventLoop.execute { handler.value.takeWorkerResults(context: boundContext.value) }
        }
    }

    /// Answers every request the workers have finished, with one flush.
    private func takeWorkerResults(context: ChannelHandlerContext) {
        guard let work else { return }
        work.takeResults(into: &workerResults)
        for result in workerResults {
            switch result {
            case .answered(let reply, let outcome, let cost): send(reply, outcome, cost: cost, context: context)
            case .skipped(let cost): finished(requests: 1, cost: cost, context: context)
            }
        }
        workerResults.removeAll(keepingCapacity: true)
        flushIfNeeded(context: context)
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

    /// Writes a finished request's reply, to leave with the next flush.
    private func send(
        _ reply: NBDReply, _ outcome: NBDRequestProcessor.Outcome, cost: Int, context: ChannelHandlerContext
    ) {
        counters.record(outcome)
        guard !closed else {
            finished(requests: 1, cost: cost, context: context)
            return
        }
        context.write(wrapOutboundOut(reply.head), promise: nil)
        if let data = reply.data { context.write(wrapOutboundOut(data), promise: nil) }
        unflushedReplies += 1
        unflushedCost += cost
    }

    /// Requests whose replies have been written stop counting once those
    /// replies reach the socket, or fail to: one promise, on an empty write
    /// after them (NIO completes writes in order), covers them all.
    private func handOverUnflushedReplies(context: ChannelHandlerContext) {
        guard unflushedReplies > 0 else { return }
        let (requests, cost) = (unflushedReplies, unflushedCost)
        unflushedReplies = 0
        unflushedCost = 0
        let written = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(emptyBuffer), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in
            self.finished(requests: requests, cost: cost, context: context)
        }
    }

    /// Requests' replies have left (or never will): give back their room and
    /// take up what waited for it.
    private func finished(requests: Int, cost: Int, context: ChannelHandlerContext) {
        inFlightRequests -= requests
        inFlightBytes -= cost
        budget.release(cost)
        releaseWorkIfDone()
        resume(context: context)
    }

    /// `work`'s drain closure holds this handler and its context, and the
    /// handler holds `work`: a cycle, kept while workers may still hand back
    /// results (each releases its room in the budgets). Once the connection
    /// is closed and nothing of it is in flight, no worker holds a job of it
    /// and none will be given one (nothing starts after `closed`): drop it,
    /// or the connection, its channel and the device behind it are never
    /// freed.
    private func releaseWorkIfDone() {
        if closed && inFlightRequests == 0 { work = nil }
    }

    /// Room again, or the rest of a pass: parse what is buffered, send what
    /// that answered, and let reads go on.
    private func resume(context: ChannelHandlerContext) {
        guard !closed else { return }
        processFrames(context: context)
        flushIfNeeded(context: context)
        if readHeld, !mustHoldReads {
            readHeld = false
            // The socket is read at the loop's next turn, but an expired
            // quiet check may run before it: it must not take the time the
            // reads were held for silence.
            activeSinceQuietCheck = true
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
        guard unflushed || unflushedReplies > 0, !closed else { return }
        unflushed = false
        handOverUnflushedReplies(context: context)
        context.flush()
    }

    private var isIdle: Bool {
        inFlightRequests == 0 && waitingRequest == nil && (stopParsing || parserStarved)
    }

    /// The client has sent part of a frame: it is still sending, and a
    /// draining server waits for the rest (up to the drain timeout).
    private var clientIsMidFrame: Bool {
        buffer.readableBytes > 0 || !parser.isBetweenFrames
    }

    /// A whole quiet period passed with nothing in progress, no read held
    /// back, nothing read and no frame half-received.
    private var isQuietWhileDraining: Bool {
        isIdle && !readHeld && !activeSinceQuietCheck && (stopParsing || !clientIsMidFrame)
    }

    private func closeIfIdle(context: ChannelHandlerContext) {
        guard closeWhenIdle, !closed, isIdle else { return }
        close(context: context)
    }

    /// How long a draining connection must stay quiet before it closes:
    /// far longer than the event loop takes to read what already waits in
    /// the socket.
    static let quietPeriod = TimeAmount.milliseconds(25)

    private func scheduleQuietCheck(context: ChannelHandlerContext) {
        activeSinceQuietCheck = false
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.quietPeriod) {
            guard !self.closed else { return }
            if self.isQuietWhileDraining {
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
        work?.close()
        handOverUnflushedReplies(context: context)
        budget.cancelWait(ObjectIdentifier(self))
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
