import ArgumentParser
import Logging
import SystemPackage
import ZNBDSystem

/// What keeps the daemon serving when it is the swap device of the machine
/// it runs on (docs/OPERATIONS.md, "As swap", measured in a VM).
///
/// zram stores a page inside the kernel's reclaim path; znbd is a process,
/// and a process that needs a page under memory pressure can end up waiting
/// on itself: a daemon thread faults, direct reclaim writes a page to swap,
/// swap is znbd's device, and the write waits for the thread that faulted
/// (seen in the VM: `wbt_wait` ← `__swap_writepage` ← `try_to_free_pages`).
/// Three measures, each applied where the process is allowed to:
///
/// - **I/O flusher** (`prctl(PR_SET_IO_FLUSHER)`, Linux 5.6+,
///   CAP_SYS_RESOURCE): the calling thread and every thread it creates
///   afterwards allocate with GFP_NOIO, so reclaim from a daemon thread never
///   starts swap I/O. The flag is per thread and inherited only at creation:
///   `apply` must run before the process starts any thread.
/// - **Memory lock** (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`):
///   no daemon page is swapped out to the daemon itself. ON_FAULT, so the
///   pool's large reserved arena is not faulted in at once. Only with
///   CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK: under a finite limit
///   MCL_FUTURE would make the next large mapping (the arena, a thread's
///   stack) fail. Locked pages refuse MADV_DONTNEED, which
///   `AnonymousMapping.discard` handles; glibc's `malloc_trim` cannot give
///   locked heap pages back, only whole mappings and the heap's top.
/// - **OOM score** (`/proc/self/oom_score_adj`, -1000 by default): the OOM
///   killer does not pick the process that holds every other process's
///   swapped-out memory. Lowering it needs CAP_SYS_RESOURCE.
enum ProcessProtection {
    /// How hard to try a measure: `auto` applies it where permitted and
    /// warns where not, `on` makes not being permitted an error, `off`
    /// leaves the process as it is.
    enum Choice: String, Sendable, CaseIterable, ExpressibleByArgument {
        case auto, on, off
    }

    /// What to apply.
    struct Request: Sendable {
        var ioFlusher: Choice
        var lockMemory: Choice
        /// The value for oom_score_adj (-1000...1000), nil to leave it.
        var oomScoreAdjustment: Int?
        /// Whether failing to set oom_score_adj is an error rather than a
        /// warning (it was asked for explicitly).
        var oomScoreRequired: Bool

        init(
            ioFlusher: Choice = .auto, lockMemory: Choice = .auto,
            oomScoreAdjustment: Int? = -1000, oomScoreRequired: Bool = false
        ) {
            self.ioFlusher = ioFlusher
            self.lockMemory = lockMemory
            self.oomScoreAdjustment = oomScoreAdjustment
            self.oomScoreRequired = oomScoreRequired
        }
    }

    /// What `apply` did: one line per measure for the log, at info when it
    /// was applied, at notice when `auto` found it not permitted (a plain
    /// RAM disk needs none of them, so that is no warning; `on` makes it an
    /// error instead).
    struct Outcome: Sendable {
        struct Line: Sendable, Equatable {
            var level: Logger.Level
            var text: String
        }
        var lines: [Line] = []
        /// Measures required (`on`, an explicit OOM score) that could not be
        /// applied; empty when all that was required holds.
        var failures: [String] = []

        /// Nothing applied, nothing to say.
        init() {}
    }

    /// Applies the measures to the whole process (ZNBDSystem's
    /// ProcessControls makes the calls). Call before anything starts a
    /// thread (threads created earlier are not I/O flushers).
    static func apply(_ request: Request) -> Outcome {
        var outcome = Outcome()
        func note(_ text: String) { outcome.lines.append(.init(level: .info, text: text)) }
        func refuse(_ text: String, required: Bool) {
            outcome.lines.append(.init(level: required ? .error : .notice, text: text))
            if required { outcome.failures.append(text) }
        }

        switch request.ioFlusher {
        case .off:
            note("I/O flusher: off (--io-flusher off)")
        case .auto, .on:
            do throws(Errno) {
                try ProcessControls.becomeIOFlusher()
                note("I/O flusher: on (the daemon's allocations never start swap I/O)")
            } catch {
                let why =
                    error == .notPermitted
                    ? "needs CAP_SYS_RESOURCE" : error == .invalidArgument ? "needs Linux 5.6" : "\(error)"
                refuse(
                    "not an I/O flusher (prctl PR_SET_IO_FLUSHER: \(why)): as the swap device of this machine znbd could deadlock under memory pressure",
                    required: request.ioFlusher == .on)
            }
        }

        switch request.lockMemory {
        case .off:
            note("memory lock: off (--lock-memory off)")
        case .auto, .on:
            let limit = ProcessControls.memoryLockLimit
            if !(ProcessControls.hasEffectiveCapability(.ipcLock) || limit == nil) {
                refuse(
                    "memory not locked: RLIMIT_MEMLOCK is \((limit ?? 0) >> 10) KiB and there is no CAP_IPC_LOCK "
                        + "(LimitMEMLOCK=infinity in the unit, ulimit -l unlimited, or AmbientCapabilities=CAP_IPC_LOCK)",
                    required: request.lockMemory == .on)
            } else {
                do throws(Errno) {
                    try ProcessControls.lockAllMemoryOnFault()
                    note("memory lock: on (pages are locked as they are touched)")
                } catch {
                    refuse(
                        "memory not locked (mlockall: \(error)): the daemon's pages can be swapped out",
                        required: request.lockMemory == .on)
                }
            }
        }

        if let adjustment = request.oomScoreAdjustment {
            do throws(Errno) {
                try ProcessControls.setOOMScoreAdjustment(adjustment)
                note("oom_score_adj: \(adjustment)")
            } catch {
                let why =
                    error == .permissionDenied || error == .notPermitted
                    ? "lowering it needs CAP_SYS_RESOURCE" : "\(error)"
                refuse(
                    "oom_score_adj not set to \(adjustment) (\(why)): OOMScoreAdjust=\(adjustment) in the unit does it",
                    required: request.oomScoreRequired)
            }
        }
        return outcome
    }
}
