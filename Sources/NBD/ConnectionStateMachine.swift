import NIOCore

/// One connection's life as a value: what it may do next, decided from what
/// happened, with no channel, no thread and no clock. NBDConnectionHandler
/// feeds it the channel's events and performs the actions it returns; the
/// tests drive it directly (ConnectionStateMachineTests).
///
/// THE STATES, four parts of one value:
///
/// - `phase`: handshake (options, in NBDHandshake's own machine), then
///   transmission (requests, run by an NBDRequestProcessor), then closing
///   (the replies already written are on their way; nothing more is read,
///   parsed or started), then closed (the channel is gone). STARTTLS will
///   add its states to the handshake's side of this.
/// - `input`: open; ended (the client shut its side: what is buffered is
///   still parsed and answered); or disconnected (NBD_CMD_DISC: nothing
///   more is parsed). Once input is not open the connection closes as soon
///   as it is idle.
/// - `drain`: a stopping server asked this connection to finish. It goes on
///   reading and answering until a whole quiet period passes with nothing
///   read, nothing in progress, no read held back and no frame half
///   received, then closes (`quietCheckDue`).
/// - `flow`, the back-pressure: requests in progress and the bytes they
///   hold (from parsing until their replies have been handed to the
///   socket), a request waiting for room, a read held back, and a parse
///   pass that gave way to the loop's other connections.
///
/// A request counts against this connection's budget (`Limits`) here, and
/// against the server's (InFlightBudget) through the handler: the machine
/// asks (`PassStep.reserve`) and is told (`reserved`). Where a request runs,
/// on the loop or on a worker, is decided here too (`Admission`).
struct NBDConnectionStateMachine {
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

    enum Phase {
        case handshake(NBDHandshake)
        case transmission(NBDRequestProcessor)
        case closing
        case closed
    }

    enum Input: Equatable {
        case open
        /// The client shut its side of the connection.
        case ended
        /// NBD_CMD_DISC arrived: nothing more is parsed.
        case disconnected
    }

    struct Drain {
        /// Bytes arrived, or held reads were let go, since the last quiet
        /// check: the client has not been quiet for a whole period while
        /// the server was reading.
        var activeSinceLastCheck: Bool
    }

    struct Flow {
        var requests = 0
        var bytes = 0
        /// A parsed request waiting for room in this connection's budget or
        /// the server's.
        var waiting: NBDRequest?
        /// A read the pipeline asked for while nothing more could be taken.
        var readHeld = false
        /// A pass ran out of its inline budget; the rest of it is scheduled.
        var passScheduled = false
    }

    /// Requests whose replies have been written to the channel and not yet
    /// flushed, with the room they hold: they stop counting once the flush
    /// that carries them has handed them to the socket (`repliesLeft`).
    struct ReplyBatch: Equatable {
        var requests: Int
        var cost: Int
    }

    /// What a close hands over: the replies written and not yet flushed.
    /// The handler writes them out with the close's own flush, and closes
    /// the channel once that write completes, so every reply written so far
    /// reaches the socket first (closing at once would drop replies still
    /// queued behind a client that reads slowly).
    struct Close: Equatable {
        var unflushed: ReplyBatch?
    }

    /// What a flush hands over: the replies it carries, if any (handshake
    /// replies need no accounting).
    struct Flush: Equatable {
        var unflushed: ReplyBatch?
    }

    private(set) var phase: Phase
    private(set) var input = Input.open
    private(set) var drain: Drain?
    private(set) var flow = Flow()
    private let limits: Limits
    private let hasWorkers: Bool
    /// The export's largest request payload: what a read may be charged.
    private let maximumPayload: Int
    private var parser: NBDFrameParser
    /// Replies written since the last flush.
    private var unflushedReplies = ReplyBatch(requests: 0, cost: 0)
    /// Handshake replies written since the last flush.
    private var unflushedHandshake = false
    /// The last pass ended for want of bytes: no whole frame waits.
    private var parserStarved = true
    /// A parse pass is under way (a reply's completion may call back into
    /// the handler while one runs), and the inline work it has done.
    private var passInProgress = false
    private var passInlineWork = 0

    /// `hasWorkers`: writes and large requests run on worker threads, so
    /// every write payload gets a buffer of its own (NBDFrameParser's
    /// `ownPayloads`).
    init(export: NBDExport, limits: Limits, hasWorkers: Bool) {
        self.limits = limits
        self.hasWorkers = hasWorkers
        maximumPayload = export.maximumPayload
        parser = NBDFrameParser(maximumPayload: export.maximumPayload, ownPayloads: hasWorkers)
        phase = .handshake(NBDHandshake(export: export))
    }

    // MARK: What the connection is doing

    /// Neither closing nor closed: reads, parses and answers.
    var isOpen: Bool {
        switch phase {
        case .handshake, .transmission: true
        case .closing, .closed: false
        }
    }

    /// Nothing more will be parsed.
    private var parsingStopped: Bool { input == .disconnected || !isOpen }

    /// Reads stay held while a request waits for room, the request count is
    /// at its limit, a pass is still to finish, or nothing more will be parsed.
    private var mustHoldReads: Bool {
        flow.waiting != nil || flow.passScheduled || parsingStopped
            || flow.requests >= limits.maximumInFlightRequests
    }

    /// Nothing in progress, nothing waiting, and no whole frame unparsed.
    var isIdle: Bool {
        flow.requests == 0 && flow.waiting == nil && (parsingStopped || parserStarved)
    }

    // MARK: Channel events

    /// The channel went away: nothing more happens but the accounting of
    /// what was in progress. Returns the replies written and not flushed,
    /// which the handler hands over (their write fails, and they stop
    /// counting).
    mutating func channelInactive() -> ReplyBatch? {
        phase = .closed
        return takeUnflushedReplies()
    }

    /// Bytes arrived from the client.
    mutating func bytesReceived() {
        drain?.activeSinceLastCheck = true
    }

    /// The pipeline asks for a read: true to pass it on, false to hold it
    /// until there is room again (`releaseHeldRead`).
    mutating func readRequested() -> Bool {
        guard mustHoldReads else { return true }
        flow.readHeld = true
        return false
    }

    /// After room came back: true when a held read may now go on. The
    /// socket is read at the loop's next turn, and a quiet check due before
    /// it must not take the time the reads were held for silence, so this
    /// counts as activity.
    mutating func releaseHeldRead() -> Bool {
        guard flow.readHeld, !mustHoldReads, isOpen else { return false }
        flow.readHeld = false
        drain?.activeSinceLastCheck = true
        return true
    }

    enum DrainAction: Equatable {
        /// Already draining: one chain of quiet checks is enough.
        case none
        /// Start the quiet checks (`quietCheckScheduled`, then
        /// `quietCheckDue` a quiet period later); with `readNow`, ask the
        /// channel for a read first (requests sent before the server began
        /// to stop may still sit unread in the socket).
        case startQuietChecks(readNow: Bool)
    }

    /// The server is stopping.
    mutating func drainRequested() -> DrainAction {
        guard drain == nil else { return .none }
        drain = Drain(activeSinceLastCheck: false)
        return .startQuietChecks(readNow: !flow.readHeld)
    }

    /// A quiet check has been scheduled: activity counts from now.
    mutating func quietCheckScheduled() {
        drain?.activeSinceLastCheck = false
    }

    enum QuietCheckAction: Equatable {
        /// The connection is closing or closed: stop checking.
        case stop
        /// Not quiet yet: check again a quiet period later.
        case checkAgain
        /// Quiet: close.
        case close(Close)
    }

    /// A quiet period has passed since the last check. `bufferedBytes`:
    /// the client's bytes the handler holds unparsed (part of a frame).
    mutating func quietCheckDue(bufferedBytes: Int) -> QuietCheckAction {
        guard isOpen, let drain else { return .stop }
        let clientIsMidFrame = bufferedBytes > 0 || !parser.isBetweenFrames
        let quiet =
            isIdle && !flow.readHeld && !drain.activeSinceLastCheck && (parsingStopped || !clientIsMidFrame)
        guard quiet else { return .checkAgain }
        return .close(close()!)
    }

    /// The client shut its side: answer every whole request it sent (some
    /// may still wait behind the limits), then close. Returns the close to
    /// perform when that is now.
    mutating func inputEnded() -> Close? {
        if input == .open { input = .ended }
        return closeIfIdle()
    }

    /// Closes (a fatal error, the client gone): nothing more is read,
    /// parsed or started. Nil when already closing or closed.
    mutating func close() -> Close? {
        guard isOpen else { return nil }
        phase = .closing
        return Close(unflushed: takeUnflushedReplies())
    }

    /// Closes when input has ended and nothing is left to do.
    private mutating func closeIfIdle() -> Close? {
        guard input != .open, isOpen, isIdle else { return nil }
        return close()
    }

    // MARK: Parse passes

    /// What the handler does next in a parse pass.
    enum PassStep {
        /// Nothing more now: the bytes ran out, a limit was reached, or the
        /// connection stopped parsing.
        case endOfPass
        /// The pass ran its share of inline work: schedule the rest
        /// (`passResumes`) so the loop's other connections get a turn.
        case yieldToOtherConnections
        /// A handshake message was answered: write `reply` (it leaves with
        /// the next flush), then do what `next` says.
        case handshake(reply: ByteBuffer?, next: HandshakeNext)
        /// Ask the server-wide budget for `cost` bytes, and say what it
        /// answered with `reserved(_:cost:granted:)`.
        case reserve(NBDRequest, cost: Int, holdsNothing: Bool)
        /// NBD_CMD_DISC: count it; nothing more is parsed.
        case disconnect
        /// The stream cannot be understood any more: count it and close.
        case protocolError(Close)
    }

    enum HandshakeNext {
        case proceed
        /// Transmission begins: set up what requests need (the workers'
        /// share of this connection) for this processor.
        case transmission(NBDRequestProcessor)
        /// The handshake ended the connection: close.
        case close(Close)
    }

    /// Starts a parse pass; false when one is under way or the connection
    /// is not open.
    mutating func beginPass() -> Bool {
        guard !passInProgress, isOpen else { return false }
        passInProgress = true
        passInlineWork = 0
        return true
    }

    /// The next step of the pass, parsing from `buffer` (the client's bytes
    /// not yet parsed, which the handler keeps).
    mutating func nextStep(_ buffer: inout ByteBuffer, allocator: ByteBufferAllocator) -> PassStep {
        guard !parsingStopped else { return .endOfPass }
        if passInlineWork >= limits.inlineWorkPerPass {
            flow.passScheduled = true
            return .yieldToOtherConnections
        }
        if let waiting = flow.waiting {
            return reserveStep(for: waiting) ?? .endOfPass
        }
        guard flow.requests < limits.maximumInFlightRequests else { return .endOfPass }
        guard let frame = parser.next(&buffer) else {
            parserStarved = true
            return .endOfPass
        }
        parserStarved = false
        switch frame {
        case .protocolError:
            return .protocolError(close()!)
        case .handshake(let message):
            return handshakeStep(message, allocator: allocator)
        case .request(let request):
            if request.type == .disconnect {
                input = .disconnected
                return .disconnect
            }
            guard let step = reserveStep(for: request) else {
                flow.waiting = request
                return .endOfPass
            }
            return step
        }
    }

    /// A `reserve` step when this connection's own budget has room for the
    /// request. A connection with nothing in progress always has room in its
    /// own (a request may be larger than the budget).
    private mutating func reserveStep(for request: NBDRequest) -> PassStep? {
        let cost = NBDRequestProcessor.replyBudget(for: request, maximumPayload: maximumPayload)
        guard flow.requests == 0 || flow.bytes + cost <= limits.maximumInFlightBytes else { return nil }
        flow.waiting = nil
        return .reserve(request, cost: cost, holdsNothing: flow.requests == 0)
    }

    private mutating func handshakeStep(_ message: NBDHandshakeMessage, allocator: ByteBufferAllocator) -> PassStep {
        guard case .handshake(var handshake) = phase else {
            // The parser cuts handshake messages only before transmission.
            preconditionFailure("a handshake message in transmission")
        }
        var output = allocator.buffer(capacity: 64)
        let outcome = handshake.receive(message, into: &output)
        phase = .handshake(handshake)
        let reply = output.readableBytes > 0 ? output : nil
        if reply != nil { unflushedHandshake = true }
        switch outcome {
        case .proceed:
            return .handshake(reply: reply, next: .proceed)
        case .transmission(let session):
            parser.phase = .transmission
            let processor = NBDRequestProcessor(export: handshake.export, session: session)
            phase = .transmission(processor)
            return .handshake(reply: reply, next: .transmission(processor))
        case .close:
            return .handshake(reply: reply, next: .close(close()!))
        }
    }

    enum Admission {
        /// Run it here, now, with this processor; then `ranInline`.
        case runInline(NBDRequestProcessor)
        /// Hand it to the workers (only with workers, in transmission: the
        /// handler's share of them exists).
        case runOnWorker
        /// No room in the server's budget: the request waits, the pass
        /// ends, and the budget wakes the connection when room frees up.
        case wait
    }

    /// What the server-wide budget answered to a `reserve` step.
    mutating func reserved(_ request: NBDRequest, cost: Int, granted: Bool) -> Admission {
        guard granted else {
            flow.waiting = request
            return .wait
        }
        flow.requests += 1
        flow.bytes += cost
        guard case .transmission(let processor) = phase else {
            // Requests are parsed only in transmission, and a pass stops at
            // the first step after the connection closes.
            preconditionFailure("a request admitted outside transmission")
        }
        return runsOnWorkers(request) ? .runOnWorker : .runInline(processor)
    }

    /// Writes go to the workers (compressing a page costs far more than the
    /// hop to another thread); so does any other request over the inline
    /// limit. Small reads, trims, zeroings, flushes and block status cost
    /// less than the hop itself and stay on the loop.
    private func runsOnWorkers(_ request: NBDRequest) -> Bool {
        guard hasWorkers else { return false }
        switch request.type {
        case .write: return true
        case .read, .trim, .writeZeroes, .blockStatus: return Int(request.length) > limits.inlineLimit
        default: return false
        }
    }

    /// An inline request ran and its reply was written; `bytes`: the
    /// request's length, counted against the pass's inline budget.
    mutating func ranInline(bytes: Int) {
        passInlineWork += bytes
    }

    /// Ends the pass. Returns the close to perform when input has ended and
    /// nothing is left to do.
    mutating func endPass() -> Close? {
        passInProgress = false
        return closeIfIdle()
    }

    /// The rest of a pass that gave way may now run.
    mutating func passResumes() {
        flow.passScheduled = false
    }

    // MARK: Replies

    /// A request's reply was written to the channel (it leaves with the next
    /// flush). Only while open: the handler counts a reply for a closed
    /// connection as left at once (`repliesLeft`); counted here, it would
    /// wait for a flush that never comes, and its room with it.
    mutating func replyWritten(cost: Int) {
        precondition(isOpen, "a reply written to a connection that is not open")
        unflushedReplies.requests += 1
        unflushedReplies.cost += cost
    }

    /// What the next flush carries, or nil when there is nothing to flush
    /// (or the connection is not open). The handler hands the replies over
    /// with the flush (`repliesLeft` once its write completes).
    mutating func flush() -> Flush? {
        guard isOpen, unflushedHandshake || unflushedReplies.requests > 0 else { return nil }
        unflushedHandshake = false
        return Flush(unflushed: takeUnflushedReplies())
    }

    private mutating func takeUnflushedReplies() -> ReplyBatch? {
        guard unflushedReplies.requests > 0 else { return nil }
        defer { unflushedReplies = ReplyBatch(requests: 0, cost: 0) }
        return unflushedReplies
    }

    /// Requests' replies have left for the socket (or never will): their
    /// room is free again. The handler releases `cost` from the server's
    /// budget and resumes.
    mutating func repliesLeft(_ batch: ReplyBatch) {
        flow.requests -= batch.requests
        flow.bytes -= batch.cost
        assert(flow.requests >= 0 && flow.bytes >= 0, "more replies left than requests were admitted")
    }
}
