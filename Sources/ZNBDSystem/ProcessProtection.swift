#if canImport(Glibc)
    import Glibc
#endif
internal import CLinux

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
public enum ProcessProtection {
    /// How hard to try a measure: `auto` applies it where permitted and
    /// warns where not, `on` makes not being permitted an error, `off`
    /// leaves the process as it is.
    public enum Choice: String, Sendable, CaseIterable {
        case auto, on, off
    }

    /// What to apply.
    public struct Request: Sendable {
        public var ioFlusher: Choice
        public var lockMemory: Choice
        /// The value for oom_score_adj (-1000...1000), nil to leave it.
        public var oomScoreAdjustment: Int?
        /// Whether failing to set oom_score_adj is an error rather than a
        /// warning (it was asked for explicitly).
        public var oomScoreRequired: Bool

        public init(
            ioFlusher: Choice = .auto, lockMemory: Choice = .auto,
            oomScoreAdjustment: Int? = -1000, oomScoreRequired: Bool = false
        ) {
            self.ioFlusher = ioFlusher
            self.lockMemory = lockMemory
            self.oomScoreAdjustment = oomScoreAdjustment
            self.oomScoreRequired = oomScoreRequired
        }
    }

    /// What `apply` did: one line per measure for the log, and whether it
    /// is a warning (a measure the process was not permitted).
    public struct Outcome: Sendable {
        public struct Line: Sendable, Equatable {
            public var isWarning: Bool
            public var text: String
        }
        public var lines: [Line] = []
        /// Measures required (`on`, an explicit OOM score) that could not be
        /// applied; empty when all that was required holds.
        public var failures: [String] = []

        /// Nothing applied, nothing to say.
        public init() {}
    }

    /// Applies the measures to the whole process. Call before anything
    /// starts a thread (threads created earlier are not I/O flushers).
    public static func apply(_ request: Request) -> Outcome {
        var outcome = Outcome()
        func note(_ text: String) { outcome.lines.append(.init(isWarning: false, text: text)) }
        func refuse(_ text: String, required: Bool) {
            outcome.lines.append(.init(isWarning: true, text: text))
            if required { outcome.failures.append(text) }
        }

        switch request.ioFlusher {
        case .off:
            note("I/O flusher: off (--io-flusher off)")
        case .auto, .on:
            if clinux_set_io_flusher() == 0 {
                note("I/O flusher: on (the daemon's allocations never start swap I/O)")
            } else {
                let error = errno
                let why =
                    error == EPERM ? "needs CAP_SYS_RESOURCE" : error == EINVAL ? "needs Linux 5.6" : describe(error)
                refuse(
                    "not an I/O flusher (prctl PR_SET_IO_FLUSHER: \(why)): as the swap device of this machine znbd could deadlock under memory pressure",
                    required: request.ioFlusher == .on)
            }
        }

        switch request.lockMemory {
        case .off:
            note("memory lock: off (--lock-memory off)")
        case .auto, .on:
            var limit: UInt64 = 0
            let unlimited = clinux_memlock_limit(&limit) == 0 && limit == UInt64.max
            if !(hasEffectiveCapability(14 /* CAP_IPC_LOCK */) || unlimited) {
                refuse(
                    "memory not locked: RLIMIT_MEMLOCK is \(limit >> 10) KiB and there is no CAP_IPC_LOCK "
                        + "(LimitMEMLOCK=infinity in the unit, ulimit -l unlimited, or AmbientCapabilities=CAP_IPC_LOCK)",
                    required: request.lockMemory == .on)
            } else if clinux_lock_all_on_fault() == 0 {
                note("memory lock: on (pages are locked as they are touched)")
            } else {
                refuse(
                    "memory not locked (mlockall: \(describe(errno))): the daemon's pages can be swapped out",
                    required: request.lockMemory == .on)
            }
        }

        if let adjustment = request.oomScoreAdjustment {
            if writeSmallFile("/proc/self/oom_score_adj", "\(adjustment)\n") {
                note("oom_score_adj: \(adjustment)")
            } else {
                let error = errno
                let why = error == EACCES || error == EPERM ? "lowering it needs CAP_SYS_RESOURCE" : describe(error)
                refuse(
                    "oom_score_adj not set to \(adjustment) (\(why)): OOMScoreAdjust=\(adjustment) in the unit does it",
                    required: request.oomScoreRequired)
            }
        }
        return outcome
    }

    /// How many of the process's threads are I/O flushers (the task flag
    /// PF_MEMALLOC_NOIO, 0x80000, in /proc/self/task/TID/stat), of how many:
    /// the check that `apply` ran before the threads were made.
    public static func ioFlusherThreads() -> (flushers: Int, threads: Int) {
        guard let directory = opendir("/proc/self/task") else { return (0, 0) }
        defer { closedir(directory) }
        var flushers = 0
        var threads = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            // The command name, in parentheses, may hold spaces: fields are
            // counted from the last ')'. The flags are the 9th field, the
            // 7th after it.
            guard name.first?.isNumber == true, let stat = readSmallFile("/proc/self/task/\(name)/stat"),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 6, let flags = UInt(fields[6]) else { continue }
            threads += 1
            if flags & 0x80000 != 0 { flushers += 1 }
        }
        return (flushers, threads)
    }

    private static func hasEffectiveCapability(_ capability: Int) -> Bool {
        guard let status = readSmallFile("/proc/self/status") else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst("CapEff:".count).drop(while: { $0 == " " || $0 == "\t" })
            return (UInt64(hex, radix: 16) ?? 0) & (1 << UInt64(capability)) != 0
        }
        return false
    }

    private static func describe(_ error: Int32) -> String { String(cString: strerror(error)) }
}

/// Writes `text` to an existing file in one write(2); false with errno set
/// when it could not (for /proc and /sys, where one write is one setting).
func writeSmallFile(_ path: String, _ text: String) -> Bool {
    let descriptor = open(path, O_WRONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    var text = text
    return text.withUTF8 { write(descriptor, $0.baseAddress, $0.count) == $0.count }
}
