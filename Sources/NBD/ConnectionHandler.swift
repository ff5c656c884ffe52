import NIOCore
import NIOPosix
import ZNBDSystem

/// One client connection on SwiftNIO: the channel's events go to the
/// connection's state machine (NBDConnectionStateMachine, which decides
/// everything: handshake, admission, back-pressure, draining, closing), and
/// this handler performs what it returns: writes and flushes, requests run
/// here or handed to the workers, reads held or let go, timers, the close.
/// Replies may leave in a different order than requests came; every request
/// gets exactly one.
///
/// Its stored state is the machine and what NIO needs beside it:
/// - `machine`: the connection's state (NBDConnectionStateMachine);
/// - `buffer`: the client's bytes not parsed yet, the parser's input. In
///   transmission the parser takes all it is given, so this holds the
///   current socket read, and more only while requests wait for room;
/// - `jobsToSubmit`: the pending batch of requests for the workers, handed
///   over together at the end of a pass (one acquisition of their queue);
/// - `work`: the connection's share of the workers, from transmission on
///   (nil without workers), through which their results come back; dropped
///   once the connection is closed with nothing in flight
///   (`releaseWorkIfDone`);
/// - `workerResults`: the batch of results being answered, kept to reuse
///   its storage;
/// - `wake`: how the server-wide budget, on any thread, wakes this
///   connection once it has room (nil once the channel is gone).
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
/// A request counts against the budgets from parsing until its reply has
/// been handed to the socket: the write promise of its batch, one promise
/// per batch on an empty write after it (NIO completes writes in order).
///
/// Everything here runs on the connection's event loop.
final class NBDConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias Limits = NBDConnectionStateMachine.Limits

    private let workers: WorkerThreads<WorkerJob>?
    private let counters: ServerCounters
    private let budget: InFlightBudget
    /// What `buffer` is set to once parsed: holding no socket read lets the
    /// channel reuse its receive buffers instead of allocating new ones.
    private let emptyBuffer = ByteBuffer()

    private var machine: NBDConnectionStateMachine
    private var buffer: ByteBuffer
    private var jobsToSubmit: [WorkerJob] = []
    private var work: ConnectionWork?
    private var workerResults: [WorkerResult] = []
    private var wake: (@Sendable () -> Void)?

    init(
        export: NBDExport, limits: Limits, workers: WorkerThreads<WorkerJob>?, counters: ServerCounters,
        budget: InFlightBudget
    ) {
        self.workers = workers
        self.counters = counters
        self.budget = budget
        machine = NBDConnectionStateMachine(export: export, limits: limits, hasWorkers: workers != nil)
        buffer = emptyBuffer
    }

    /// How long a draining connection must stay quiet before it closes:
    /// far longer than the event loop takes to read what already waits in
    /// the socket.
    static let quietPeriod = TimeAmount.milliseconds(25)

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
        let unflushed = machine.channelInactive()
        work?.close()
        handOver(unflushed, context: context)
        budget.cancelWait(ObjectIdentifier(self))
        wake = nil
        releaseWorkIfDone()
        counters.connectionsOpen.subtract(1, ordering: .relaxed)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        machine.bytesReceived()
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
        if machine.readRequested() { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is NBDServer.Drain:
            guard case .startQuietChecks(let readNow) = machine.drainRequested() else { return }
            if readNow { context.read() }
            scheduleQuietCheck(context: context)
        case ChannelEvent.inputClosed:
            if let close = machine.inputEnded() { perform(close, context: context) }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset or a broken pipe costs this connection only.
        if let close = machine.close() { perform(close, context: context) }
    }

    // MARK: Parse passes

    /// Parses and starts requests until the machine ends the pass: the
    /// bytes ran out, a limit was reached, or the pass did its share of
    /// inline work.
    private func processFrames(context: ChannelHandlerContext) {
        guard machine.beginPass() else { return }
        defer { submitJobs() }
        pass: while true {
            switch machine.nextStep(&buffer, allocator: context.channel.allocator) {
            case .endOfPass:
                break pass
            case .yieldToOtherConnections:
                context.eventLoop.assumeIsolated().execute {
                    self.machine.passResumes()
                    self.resume(context: context)
                }
                break pass
            case .handshake(let reply, let next):
                if let reply { context.write(wrapOutboundOut(reply), promise: nil) }
                switch next {
                case .proceed:
                    break
                case .transmission(let processor):
                    work = workers == nil ? nil : makeWork(processor: processor, context: context)
                case .close(let close):
                    perform(close, context: context)
                    _ = machine.endPass()
                    return
                }
            case .reserve(let request, let cost, let holdsNothing):
                // `if let`, not `wake.map`: passed through map's generic
                // closure, `wake` is re-thunked into two heap boxes per request.
                var granted = false
                if let wake {
                    granted = budget.acquire(
                        cost, holdsNothing: holdsNothing, owner: ObjectIdentifier(self), wake: wake)
                }
                switch machine.reserved(request, cost: cost, granted: granted) {
                case .runInline(let processor):
                    let (reply, outcome) = processor.process(request, allocator: context.channel.allocator)
                    send(reply, outcome, cost: cost, context: context)
                    machine.ranInline(bytes: Int(request.length))
                case .runOnWorker:
                    // A write's payload is a buffer of its own (the parser's
                    // ownPayloads), not a slice of a receive buffer the
                    // channel will write into again: the worker may read it
                    // and drop it. The machine hands requests to workers
                    // only when there are some, and `work` is made as
                    // transmission begins and kept while requests are in
                    // flight.
                    jobsToSubmit.append(WorkerJob(connection: work!, request: request, cost: cost))
                case .wait:
                    break pass
                }
            case .disconnect:
                counters.record(.init(command: .disconnect, error: nil, bytes: 0))
            case .protocolError(let close):
                counters.protocolErrors.add(1, ordering: .relaxed)
                perform(close, context: context)
                _ = machine.endPass()
                return
            }
        }
        if buffer.readableBytes == 0 {
            buffer = emptyBuffer
        } else if buffer.readerIndex >= 1 << 20 {
            buffer.discardReadBytes()
        }
        if let close = machine.endPass() { perform(close, context: context) }
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
            case .skipped(let cost): repliesLeft(.init(requests: 1, cost: cost), context: context)
            }
        }
        workerResults.removeAll(keepingCapacity: true)
        flushIfNeeded(context: context)
    }

    // MARK: Replies

    /// Writes a finished request's reply, to leave with the next flush.
    private func send(
        _ reply: NBDReply, _ outcome: NBDRequestProcessor.Outcome, cost: Int, context: ChannelHandlerContext
    ) {
        counters.record(outcome)
        guard machine.isOpen else {
            repliesLeft(.init(requests: 1, cost: cost), context: context)
            return
        }
        context.write(wrapOutboundOut(reply.head), promise: nil)
        if let data = reply.data { context.write(wrapOutboundOut(data), promise: nil) }
        machine.replyWritten(cost: cost)
    }

    private func flushIfNeeded(context: ChannelHandlerContext) {
        guard let flush = machine.flush() else { return }
        handOver(flush.unflushed, context: context)
        context.flush()
    }

    /// Replies written and not yet flushed stop counting once they reach
    /// the socket, or fail to: one promise, on an empty write after them
    /// (NIO completes writes in order), covers them all.
    private func handOver(_ replies: NBDConnectionStateMachine.ReplyBatch?, context: ChannelHandlerContext) {
        guard let replies else { return }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(emptyBuffer), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in
            self.repliesLeft(replies, context: context)
        }
    }

    /// Requests' replies have left (or never will): give back their room and
    /// take up what waited for it.
    private func repliesLeft(_ replies: NBDConnectionStateMachine.ReplyBatch, context: ChannelHandlerContext) {
        machine.repliesLeft(replies)
        budget.release(replies.cost)
        releaseWorkIfDone()
        resume(context: context)
    }

    /// `work`'s drain closure holds this handler and its context, and the
    /// handler holds `work`: a cycle, kept while workers may still hand back
    /// results (each releases its room in the budgets). Once the connection
    /// is closing or closed and nothing of it is in flight, no worker holds
    /// a job of it and none will be given one (nothing is parsed or started
    /// once it is not open): drop it, or the connection, its channel and the
    /// device behind it are never freed.
    private func releaseWorkIfDone() {
        if !machine.isOpen && machine.flow.requests == 0 { work = nil }
    }

    /// Room again, or the rest of a pass: parse what is buffered, send what
    /// that answered, and let reads go on.
    private func resume(context: ChannelHandlerContext) {
        guard machine.isOpen else { return }
        processFrames(context: context)
        flushIfNeeded(context: context)
        if machine.releaseHeldRead() { context.read() }
    }

    // MARK: Draining and closing

    private func scheduleQuietCheck(context: ChannelHandlerContext) {
        machine.quietCheckScheduled()
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.quietPeriod) {
            switch self.machine.quietCheckDue(bufferedBytes: self.buffer.readableBytes) {
            case .stop: break
            case .checkAgain: self.scheduleQuietCheck(context: context)
            case .close(let close): self.perform(close, context: context)
            }
        }
    }

    /// Closes once every reply written so far has reached the socket.
    private func perform(_ close: NBDConnectionStateMachine.Close, context: ChannelHandlerContext) {
        work?.close()
        handOver(close.unflushed, context: context)
        budget.cancelWait(ObjectIdentifier(self))
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
