import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// ProcessProtection as the daemon applies it: what a process with the
/// capabilities gets, and what one without them is told. The capabilities
/// are taken away with setpriv (a smaller bounding set for the exec'd
/// daemon), so both halves run wherever the tests run as root.
@Suite("znbd protects itself as a swap device: I/O flusher, memory lock, OOM score", .serialized)
struct ProtectionTests {
    static let capIPCLock = 14
    static let capSysResource = 24

    /// /proc/PID/status's field `name` (e.g. "CapEff", "VmLck"), as text.
    static func statusField(_ name: String, pid: Int32) -> String? {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix(name + ":") {
            return line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    static func hasCapability(_ capability: Int, pid: Int32 = getpid()) -> Bool {
        guard let hex = statusField("CapEff", pid: pid), let mask = UInt64(hex, radix: 16) else { return false }
        return mask & (1 << UInt64(capability)) != 0
    }

    static func lockedKiB(pid: Int32) -> Int {
        Int(statusField("VmLck", pid: pid)?.split(separator: " ").first ?? "") ?? -1
    }

    static func oomScoreAdjustment(pid: Int32) -> Int? {
        (try? String(contentsOfFile: "/proc/\(pid)/oom_score_adj", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// "I/O flusher threads: F of T" from the log.
    static func flusherThreads(_ log: String) -> (flushers: Int, threads: Int)? {
        guard let range = log.range(of: "I/O flusher threads: ") else { return nil }
        let words = log[range.upperBound...].prefix(while: { $0 != "\n" }).split(separator: " ")
        guard words.count == 3, let flushers = Int(words[0]), let threads = Int(words[2]) else { return nil }
        return (flushers, threads)
    }

    @Test(
        "with the defaults: each measure is applied where this process may, and logged; the rest is a notice, not a warning",
        .enabled(if: getuid() == 0, "the capabilities under test are root's; uid \(getuid())"))
    func defaults() async throws {
        try await withDaemon(["--size", "64M"]) { daemon in
            let pid = daemon.processIdentifier
            let log = daemon.log
            let threads = try #require(Self.flusherThreads(log), "no thread count in: \(log)")
            #expect(threads.threads >= 3, "\(log)")
            if Self.hasCapability(Self.capSysResource) {
                // Every thread, made after the flag was set, inherited it.
                #expect(log.contains("I/O flusher: on"))
                #expect(threads.flushers == threads.threads, "\(log)")
                #expect(Self.oomScoreAdjustment(pid: pid) == -1000)
            } else {
                print("defaults: no CAP_SYS_RESOURCE here: the I/O flusher and the OOM score are notices")
                #expect(log.contains("znbd notice: not an I/O flusher"), "\(log)")
                #expect(threads.flushers == 0)
                #expect(log.contains("oom_score_adj not set to -1000"), "\(log)")
                #expect(Self.oomScoreAdjustment(pid: pid) == Self.oomScoreAdjustment(pid: getpid()))
            }
            // Root has CAP_IPC_LOCK unless a container took it away.
            if Self.hasCapability(Self.capIPCLock) {
                #expect(log.contains("memory lock: on"))
                if let sanitizer = ProcessInfo.processInfo.environment["ZNBD_SANITIZER"] {
                    // The sanitizers' runtime replaces mlockall with a no-op
                    // that returns 0: the call succeeds, nothing is locked.
                    print("defaults: under the \(sanitizer) sanitizer mlockall locks nothing; VmLck not checked")
                } else {
                    #expect(Self.lockedKiB(pid: pid) > 0)
                }
            } else {
                #expect(log.contains("memory not locked"))
            }
        }
    }

    @Test(
        "without CAP_IPC_LOCK and CAP_SYS_RESOURCE: auto serves unlocked and says why; on exits 77 with one line",
        .enabled(if: getuid() == 0, "dropping capabilities needs a process that has them (root); uid \(getuid())"))
    func withoutCapabilities() async throws {
        let dropped = ["setpriv", "--bounding-set", "-ipc_lock,-sys_resource", "prlimit", "--memlock=8388608", "--"]
        let daemon = try DaemonProcess(["--size", "64M"], launcher: dropped)
        defer { daemon.cleanUp() }
        try daemon.waitUntilServing()
        let log = daemon.log
        #expect(log.contains("memory not locked: RLIMIT_MEMLOCK is 8192 KiB and there is no CAP_IPC_LOCK"), "\(log)")
        #expect(log.contains("not an I/O flusher") && log.contains("needs CAP_SYS_RESOURCE"), "\(log)")
        // A plain RAM disk needs none of the three: notices, not warnings.
        #expect(!log.contains(" warning: "), "\(log)")
        #expect(log.contains("znbd notice: memory not locked"), "\(log)")
        #expect(Self.lockedKiB(pid: daemon.processIdentifier) == 0)
        #expect(!Self.hasCapability(Self.capIPCLock, pid: daemon.processIdentifier))
        #expect(daemon.signal(SIGTERM).status == 0)

        for (option, message) in [
            ("--lock-memory", "memory not locked"), ("--io-flusher", "not an I/O flusher"),
        ] {
            let directory = try makeTemporaryDirectory("znbd-protection")
            defer { try? FileManager.default.removeItem(at: directory) }
            let result = try runCommand(
                dropped + [
                    try DaemonProcess.executable("znbd"), "--socket", directory.path + "/nbd.sock", option, "on",
                ],
                timeout: 20)
            #expect(result.status == 77, "\(option) on: exit \(result.status): \(result.standardError)")
            #expect(result.standardError.split(separator: "\n").count == 1, "\(result.standardError)")
            #expect(
                result.standardError.hasPrefix("znbd: ") && result.standardError.contains(message),
                "\(result.standardError)")
            #expect(!FileManager.default.fileExists(atPath: directory.path + "/nbd.sock"))
        }
        // An OOM score asked for explicitly is required too: raising it is
        // always allowed, lowering it below the current value is not.
        let directory = try makeTemporaryDirectory("znbd-protection")
        defer { try? FileManager.default.removeItem(at: directory) }
        let lowered = try runCommand(
            dropped + [
                try DaemonProcess.executable("znbd"), "--socket", directory.path + "/nbd.sock",
                "--oom-score-adj", "-500",
            ],
            timeout: 20)
        #expect(
            lowered.status == 77 && lowered.standardError.contains("oom_score_adj not set to -500"),
            "exit \(lowered.status): \(lowered.standardError)")
    }

    @Test("--oom-score-adj N is set, keep leaves it, and off switches the other two off")
    func explicitChoices() async throws {
        try await withDaemon(["--size", "64M", "--oom-score-adj", "300", "--lock-memory", "off", "--io-flusher", "off"])
        {
            daemon in
            let pid = daemon.processIdentifier
            #expect(Self.oomScoreAdjustment(pid: pid) == 300)
            #expect(Self.lockedKiB(pid: pid) == 0)
            #expect(daemon.log.contains("memory lock: off") && daemon.log.contains("I/O flusher: off"))
            #expect(Self.flusherThreads(daemon.log) == nil)
        }
        try await withDaemon(["--size", "64M", "--oom-score-adj", "keep"]) { daemon in
            #expect(Self.oomScoreAdjustment(pid: daemon.processIdentifier) == Self.oomScoreAdjustment(pid: getpid()))
            #expect(!daemon.log.contains("oom_score_adj"))
        }
    }
}
