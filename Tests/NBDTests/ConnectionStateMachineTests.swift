import BlockDevice
@testable import NBD
import NIOCore
import Testing
import TestSupport

/// The connection's state machine on its own: bytes in a buffer, the steps
/// it returns, and what the handler would tell it back. No channel, no
/// event loop, no thread.
@Suite("NBD: the connection state machine")
struct ConnectionStateMachineTests {
    typealias Machine = NBDConnectionStateMachine

    static let export: NBDExport = {
        let device = try! MemoryBlockDevice(byteCount: 1 << 20)
        return NBDExport(name: "disk", device: device)
    }()

    static func limits(requests: Int = 8, bytes: Int = 1 << 20, inlinePerPass: Int = 1 << 20) -> Machine.Limits {
        Machine.Limits(
            maximumInFlightRequests: requests, maximumInFlightBytes: bytes, inlineLimit: 256 << 10,
            inlineWorkPerPass: inlinePerPass)
    }

    /// Client flags and NBD_OPT_EXPORT_NAME "disk": the shortest way into transmission.
    static let hello: [UInt8] = {
        var bytes = ByteBuffer()
        bytes.writeInteger(UInt32(3))  // FIXED_NEWSTYLE | NO_ZEROES
        bytes.writeMultipleIntegers(NBDMagic.option, NBDOption.exportName.rawValue, UInt32(4))
        bytes.writeString("disk")
        return Array(bytes.readableBytesView)
    }()

    static func write(cookie: UInt64, length: Int = 4096) -> [UInt8] {
        RawClient.request(
            type: NBDCommand.write.rawValue, cookie: cookie, offset: 0, length: UInt32(length),
            payload: [UInt8](repeating: 7, count: length))
    }

    static func read(cookie: UInt64, length: UInt32 = 4096) -> [UInt8] {
        RawClient.request(type: NBDCommand.read.rawValue, cookie: cookie, offset: 0, length: length)
    }

    /// A machine past the handshake, and the buffer it parses from (empty:
    /// the tests append requests to it).
    static func inTransmission(
        limits: Machine.Limits = limits(), hasWorkers: Bool = false
    ) -> (machine: Machine, buffer: ByteBuffer) {
        var machine = Machine(export: export, limits: limits, hasWorkers: hasWorkers)
        var buffer = ByteBuffer(bytes: hello)
        let began = machine.beginPass()
        #expect(began)
        var reachedTransmission = false
        while true {
            let step = machine.nextStep(&buffer, allocator: .init())
            if case .handshake(_, .transmission) = step { reachedTransmission = true }
            if case .endOfPass = step { break }
        }
        #expect(reachedTransmission)
        let closeAtEnd = machine.endPass()
        #expect(closeAtEnd == nil)
        let flushed = machine.flush()
        #expect(flushed == Machine.Flush(unflushed: nil), "the export's size and flags wait for a flush")
        return (machine, buffer)
    }

    /// Runs one pass the way the handler does, granting or refusing the
    /// server's budget with `grant`: the requests it ran inline or handed
    /// to the workers, and how the pass ended.
    struct Pass {
        var inline: [UInt64] = []
        var onWorkers: [UInt64] = []
        var yielded = false
        var waitedForBudget = false
        var disconnected = false
        var close: Machine.Close?
    }

    static func pass(_ machine: inout Machine, _ buffer: inout ByteBuffer, grant: Bool = true) -> Pass {
        var result = Pass()
        guard machine.beginPass() else { return result }
        steps: while true {
            switch machine.nextStep(&buffer, allocator: .init()) {
            case .endOfPass: break steps
            case .yieldToOtherConnections:
                result.yielded = true
                break steps
            case .handshake: Issue.record("a handshake step in transmission")
            case .reserve(let request, let cost, _):
                switch machine.reserved(request, cost: cost, granted: grant) {
                case .runInline:
                    result.inline.append(request.cookie)
                    machine.replyWritten(cost: cost)
                    machine.ranInline(bytes: Int(request.length))
                case .runOnWorker:
                    result.onWorkers.append(request.cookie)
                case .wait:
                    result.waitedForBudget = true
                    break steps
                }
            case .disconnect:
                result.disconnected = true
            case .protocolError(let close):
                result.close = close
                return result
            }
        }
        result.close = machine.endPass()
        return result
    }

    @Test("the handshake answers each option and moves to transmission; the parser follows")
    func handshakeToTransmission() {
        var (machine, buffer) = Self.inTransmission()
        guard case .transmission = machine.phase else {
            Issue.record("not in transmission: \(machine.phase)")
            return
        }
        buffer.writeBytes(Self.read(cookie: 1))
        let pass = Self.pass(&machine, &buffer)
        #expect(pass.inline == [1])
        #expect(machine.flow.requests == 1)
        let flushed = machine.flush()
        #expect(flushed == Machine.Flush(unflushed: .init(requests: 1, cost: 32 + 4096)))
    }

    @Test("at the request limit the pass stops, reads are held, and a reply's leaving resumes both")
    func requestLimit() {
        var (machine, buffer) = Self.inTransmission(limits: Self.limits(requests: 2))
        for cookie in 1...3 { buffer.writeBytes(Self.read(cookie: UInt64(cookie))) }
        #expect(Self.pass(&machine, &buffer).inline == [1, 2])
        let readPasses = machine.readRequested()
        #expect(!readPasses, "two in progress: reads are held")
        let flushed = machine.flush()!.unflushed!
        machine.repliesLeft(flushed)
        #expect(Self.pass(&machine, &buffer).inline == [3])
        let released = machine.releaseHeldRead()
        #expect(released, "room again: the held read goes on")
        let releasedAgain = machine.releaseHeldRead()
        #expect(!releasedAgain, "once")
    }

    @Test("over this connection's byte budget a request waits; alone it is always admitted")
    func byteBudget() {
        var (machine, buffer) = Self.inTransmission(limits: Self.limits(bytes: 6000))
        buffer.writeBytes(Self.read(cookie: 1))
        buffer.writeBytes(Self.read(cookie: 2))
        #expect(Self.pass(&machine, &buffer).inline == [1], "two 4 KiB reads are over 6000 bytes")
        #expect(machine.flow.waiting?.cookie == 2)
        let readPasses = machine.readRequested()
        #expect(!readPasses)
        machine.repliesLeft(machine.flush()!.unflushed!)
        #expect(Self.pass(&machine, &buffer).inline == [2])

        // A request larger than the whole budget still runs once nothing else is in progress.
        machine.repliesLeft(machine.flush()!.unflushed!)
        buffer.writeBytes(Self.read(cookie: 3, length: 8192))
        #expect(Self.pass(&machine, &buffer).inline == [3])
    }

    @Test("a refusal by the server's budget parks the request until room comes")
    func serverBudgetRefuses() {
        var (machine, buffer) = Self.inTransmission()
        buffer.writeBytes(Self.read(cookie: 1))
        let refused = Self.pass(&machine, &buffer, grant: false)
        #expect(refused.waitedForBudget && refused.inline.isEmpty)
        #expect(machine.flow.waiting?.cookie == 1 && machine.flow.requests == 0)
        let readPasses = machine.readRequested()
        #expect(!readPasses)
        #expect(Self.pass(&machine, &buffer).inline == [1], "woken: the parked request goes first")
    }

    @Test("with workers, writes and large reads go to them; small reads stay inline")
    func workerHandOff() {
        var (machine, buffer) = Self.inTransmission(hasWorkers: true)
        buffer.writeBytes(Self.write(cookie: 1))
        buffer.writeBytes(Self.read(cookie: 2))
        buffer.writeBytes(Self.read(cookie: 3, length: 512 << 10))
        let pass = Self.pass(&machine, &buffer)
        #expect(pass.onWorkers == [1, 3] && pass.inline == [2])
    }

    @Test("a pass yields after its share of inline work, holding reads until the rest of it runs")
    func inlineShare() {
        var (machine, buffer) = Self.inTransmission(limits: Self.limits(inlinePerPass: 8192))
        for cookie in 1...3 { buffer.writeBytes(Self.read(cookie: UInt64(cookie))) }
        let first = Self.pass(&machine, &buffer)
        #expect(first.inline == [1, 2] && first.yielded)
        let readPasses = machine.readRequested()
        #expect(!readPasses, "the rest of the pass is scheduled")
        machine.passResumes()
        #expect(Self.pass(&machine, &buffer).inline == [3])
    }

    @Test("NBD_CMD_DISC: nothing more is parsed, and the connection closes once idle")
    func disconnect() {
        var (machine, buffer) = Self.inTransmission()
        buffer.writeBytes(Self.read(cookie: 1))
        buffer.writeBytes(RawClient.request(type: NBDCommand.disconnect.rawValue, cookie: 2, offset: 0, length: 0))
        buffer.writeBytes(Self.read(cookie: 3))
        let pass = Self.pass(&machine, &buffer)
        #expect(pass.inline == [1] && pass.disconnected && pass.close == nil, "a read still in progress")
        let readPasses = machine.readRequested()
        #expect(!readPasses)
        let replies = machine.flush()!.unflushed!
        machine.repliesLeft(replies)
        #expect(Self.pass(&machine, &buffer).close == Machine.Close(unflushed: nil))
        #expect(!machine.isOpen)
    }

    @Test("end of input: what is buffered is still answered, then the connection closes")
    func inputEnded() {
        var (machine, buffer) = Self.inTransmission(limits: Self.limits(requests: 1))
        buffer.writeBytes(Self.read(cookie: 1))
        buffer.writeBytes(Self.read(cookie: 2))
        #expect(Self.pass(&machine, &buffer).inline == [1])
        let closeNow = machine.inputEnded()
        #expect(closeNow == nil, "request 2 still waits in the buffer")
        machine.repliesLeft(machine.flush()!.unflushed!)
        let second = Self.pass(&machine, &buffer)
        #expect(second.inline == [2] && second.close == nil)
        machine.repliesLeft(machine.flush()!.unflushed!)
        #expect(Self.pass(&machine, &buffer).close == Machine.Close(unflushed: nil))
    }

    @Test("a close hands over the replies not yet flushed, once; nothing runs after it")
    func closeHandsOver() {
        var (machine, buffer) = Self.inTransmission()
        buffer.writeBytes(Self.read(cookie: 1))
        _ = Self.pass(&machine, &buffer)
        let close = machine.close()
        #expect(close == Machine.Close(unflushed: .init(requests: 1, cost: 32 + 4096)))
        let secondClose = machine.close()
        #expect(secondClose == nil, "already closing")
        let flush = machine.flush()
        #expect(flush == nil)
        buffer.writeBytes(Self.read(cookie: 2))
        #expect(Self.pass(&machine, &buffer).inline.isEmpty, "nothing is parsed or started once closing")
        let unflushed = machine.channelInactive()
        #expect(unflushed == nil)
        guard case .closed = machine.phase else {
            Issue.record("not closed: \(machine.phase)")
            return
        }
    }

    @Test("the channel gone: the replies written and not flushed are handed over, and nothing runs after")
    func channelGone() {
        var (machine, buffer) = Self.inTransmission()
        buffer.writeBytes(Self.read(cookie: 1))
        buffer.writeBytes(Self.read(cookie: 2))
        _ = Self.pass(&machine, &buffer)
        let unflushed = machine.channelInactive()
        #expect(unflushed == .init(requests: 2, cost: 2 * (32 + 4096)))
        #expect(!machine.isOpen)
        let close = machine.close()
        #expect(close == nil, "already closed")
        machine.repliesLeft(unflushed!)
        #expect(machine.flow.requests == 0 && machine.flow.bytes == 0)
    }

    @Test("bad magic in transmission: a protocol error that closes")
    func protocolError() {
        var (machine, buffer) = Self.inTransmission()
        buffer.writeBytes([UInt8](repeating: 0xEE, count: 28))
        #expect(Self.pass(&machine, &buffer).close == Machine.Close(unflushed: nil))
        #expect(!machine.isOpen)
    }

    @Test("draining: quiet checks close only after a whole quiet period with nothing in progress or half received")
    func draining() {
        var (machine, buffer) = Self.inTransmission()
        let drain = machine.drainRequested()
        #expect(drain == .startQuietChecks(readNow: true))
        let secondDrain = machine.drainRequested()
        #expect(secondDrain == Machine.DrainAction.none, "one chain of checks")
        machine.quietCheckScheduled()

        // Bytes arrived during the period: not quiet.
        machine.bytesReceived()
        let afterBytes = machine.quietCheckDue(bufferedBytes: 0)
        #expect(afterBytes == .checkAgain)
        machine.quietCheckScheduled()

        // Half a request received: the client is still sending.
        let read = Self.read(cookie: 1)
        buffer.writeBytes(read[..<10])
        _ = Self.pass(&machine, &buffer)
        let midFrame = machine.quietCheckDue(bufferedBytes: buffer.readableBytes)
        #expect(midFrame == .checkAgain)
        machine.quietCheckScheduled()
        buffer.writeBytes(read[10...])
        #expect(Self.pass(&machine, &buffer).inline == [1])

        // A request in progress: not idle.
        let inProgress = machine.quietCheckDue(bufferedBytes: 0)
        #expect(inProgress == .checkAgain)
        machine.quietCheckScheduled()
        let replies = machine.flush()!.unflushed!
        machine.repliesLeft(replies)

        // Nothing arrived, nothing in progress, nothing half received: close.
        let quiet = machine.quietCheckDue(bufferedBytes: 0)
        #expect(quiet == .close(Machine.Close(unflushed: nil)))
        let afterClose = machine.quietCheckDue(bufferedBytes: 0)
        #expect(afterClose == .stop)
    }

    @Test("a read held back and then let go counts as activity for the quiet check")
    func heldReadIsActivity() {
        var (machine, buffer) = Self.inTransmission(limits: Self.limits(requests: 1))
        _ = machine.drainRequested()
        buffer.writeBytes(Self.read(cookie: 1))
        #expect(Self.pass(&machine, &buffer).inline == [1])
        let readPasses = machine.readRequested()
        #expect(!readPasses)
        machine.quietCheckScheduled()
        machine.repliesLeft(machine.flush()!.unflushed!)
        let released = machine.releaseHeldRead()
        #expect(released)
        let afterHeldRead = machine.quietCheckDue(bufferedBytes: 0)
        #expect(afterHeldRead == .checkAgain)
    }
}

extension NBDConnectionStateMachine.DrainAction: CustomStringConvertible {
    public var description: String {
        switch self {
        case .none: "none"
        case .startQuietChecks(let readNow): "startQuietChecks(readNow: \(readNow))"
        }
    }
}
