import NIOCore
import ZNBDSystem

/// A request that runs on a worker thread, and the connection that awaits
/// its reply.
struct WorkerJob: Sendable {
    let connection: ConnectionWork
    let request: NBDRequest
    /// The room the request holds in its connection's budget and the
    /// server's (NBDRequestProcessor.replyBudget).
    let cost: Int
}

/// What a worker hands back to a connection's event loop.
enum WorkerResult: Sendable {
    /// The request ran: send this reply.
    case answered(NBDReply, NBDRequestProcessor.Outcome, cost: Int)
    /// The connection had closed before a worker took the request, which was
    /// not run (an unanswered write may or may not have happened).
    case skipped(cost: Int)
}

/// One connection's share of the workers. Workers run its requests and
/// leave the results here; the connection's event loop takes them in
/// batches. A worker schedules the loop only when it finds no batch already
/// scheduled, so under load one wake-up of the loop, and one flush to the
/// socket, answers many requests.
final class ConnectionWork: Sendable {
    let processor: NBDRequestProcessor
    let allocator: ByteBufferAllocator
    /// Schedules `takeResults` on the connection's event loop.
    private let scheduleDrain: @Sendable () -> Void
    private let state = Locked(State())

    private struct State {
        var results: [WorkerResult] = []
        var drainScheduled = false
        var open = true
    }

    init(processor: NBDRequestProcessor, allocator: ByteBufferAllocator, scheduleDrain: @escaping @Sendable () -> Void)
    {
        self.processor = processor
        self.allocator = allocator
        self.scheduleDrain = scheduleDrain
    }

    /// On a worker: runs the request unless the connection has closed, and
    /// leaves the result for the loop.
    func run(_ job: WorkerJob) {
        let open = state.withLock { $0.open }
        let result: WorkerResult
        if open {
            let (reply, outcome) = processor.process(job.request, allocator: allocator)
            result = .answered(reply, outcome, cost: job.cost)
        } else {
            result = .skipped(cost: job.cost)
        }
        let mustSchedule = state.withLock { state in
            state.results.append(result)
            defer { state.drainScheduled = true }
            return !state.drainScheduled
        }
        if mustSchedule { scheduleDrain() }
    }

    /// On the loop: swaps the finished results into `batch` (which must be
    /// empty; its storage is kept for the next batch, so steady state
    /// allocates nothing).
    func takeResults(into batch: inout [WorkerResult]) {
        state.withLock { state in
            swap(&state.results, &batch)
            state.drainScheduled = false
        }
    }

    /// The connection is gone: requests not yet started are skipped.
    func close() {
        state.withLock { $0.open = false }
    }
}
