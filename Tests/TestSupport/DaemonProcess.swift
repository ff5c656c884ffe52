public import Foundation

/// The built `znbd` binary running as a real process on sockets in a
/// temporary directory, for tests that meet the daemon as users do.
///
/// `withDaemon` always kills the process (SIGKILL if SIGTERM was not
/// enough) and removes the directory, even when the test fails.
public final class DaemonProcess: @unchecked Sendable {
    // @unchecked: every field is set in init and never changes; Process is
    // only asked for its pid and status after the termination semaphore.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String

        public init(description: String) { self.description = description }
    }

    public let directory: URL
    public let socketPath: String
    public let controlPath: String
    private let process = Process()
    private let finished = DispatchSemaphore(value: 0)
    private let standardErrorURL: URL
    private let ownsDirectory: Bool
    /// The state directory this object gave the daemon (on /dev/shm, made
    /// by the daemon as its own user, removed at clean-up), nil when the
    /// test's arguments name one (or none) themselves.
    public let stateDirectory: String?

    /// The directory the test binary was built into, where `swift build`
    /// also put znbd and znbdctl (ZNBD_BIN_DIR overrides).
    public static func executable(_ name: String) throws -> String {
        let directory =
            ProcessInfo.processInfo.environment["ZNBD_BIN_DIR"]
            ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path
        let path = directory + "/" + name
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw Failure(
                description: "\(path) is not built (swift build --build-tests builds it; or set ZNBD_BIN_DIR)")
        }
        return path
    }

    /// Starts `znbd serve --socket DIR/nbd.sock --control DIR/nbd-control.sock ARGUMENTS`
    /// (or the socket paths given), with a fresh `--state-dir` on /dev/shm
    /// unless ARGUMENTS give one, through `launcher` when given (a command
    /// that execs the rest, such as setpriv or prlimit: the process is still
    /// znbd's). The log is DIR/znbd.log, or DIR/znbd-NAME.log for a socket
    /// NAME.sock given.
    public init(
        _ arguments: [String], directory: URL? = nil, launcher: [String] = [], socketPath: String? = nil,
        controlPath: String? = nil
    ) throws {
        ownsDirectory = directory == nil
        self.directory = try directory ?? makeTemporaryDirectory("znbd-daemon")
        self.socketPath = socketPath ?? self.directory.appendingPathComponent("nbd.sock").path
        self.controlPath = controlPath ?? self.directory.appendingPathComponent("nbd-control.sock").path
        // Two daemons may share a directory: each logs to a file of its own.
        let socketName = socketPath.map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }
        standardErrorURL = self.directory.appendingPathComponent(socketName.map { "znbd-\($0).log" } ?? "znbd.log")
        _ = FileManager.default.createFile(atPath: standardErrorURL.path, contents: nil)
        let ownState =
            arguments.contains { $0 == "--state-dir" || $0.hasPrefix("--state-dir=") }
            ? nil : "/dev/shm/znbd-test-\(UUID().uuidString.prefix(8))"
        stateDirectory = ownState
        let command =
            launcher + [
                try Self.executable("znbd"), "serve", "--socket", self.socketPath, "--control", self.controlPath,
            ]
            + arguments + (ownState.map { ["--state-dir", $0] } ?? [])
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: standardErrorURL)
        process.standardError = try FileHandle(forWritingTo: standardErrorURL)
        let finished = self.finished
        process.terminationHandler = { _ in finished.signal() }
        try process.run()
    }

    public var processIdentifier: Int32 { process.processIdentifier }
    /// The daemon's resident set now, in bytes.
    public var residentBytes: Int { TestSupport.residentBytes(of: process.processIdentifier) }
    public var uri: String { "nbd+unix:///?socket=\(socketPath)" }
    /// What the daemon logged (stdout and stderr).
    public var log: String { readTextFile(standardErrorURL.path) }

    /// The part of the log a failure shows: from the first sanitizer report
    /// on when there is one (its first lines say what went wrong and
    /// where; a leak report runs to thousands of lines), else the last 4000
    /// characters.
    public var logForFailure: String {
        let log = self.log
        let reports = ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer"]
        guard let first = reports.compactMap({ log.range(of: $0)?.lowerBound }).min() else {
            return String(log.suffix(4000))
        }
        let lineStart = log[..<first].lastIndex(of: "\n").map { log.index(after: $0) } ?? log.startIndex
        return String(log[lineStart...])
    }

    /// Waits until both sockets accept connections; throws, with the
    /// daemon's log, if it exits or takes longer than `timeout` seconds.
    public func waitUntilServing(timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if !process.isRunning {
                throw Failure(description: "znbd exited with \(process.terminationStatus): \(log)")
            }
            // The line that says how to attach comes last, once both servers
            // listen. The NBD socket is not probed with a connection: one
            // whose close the daemon has not seen yet would count as a
            // client still attached when a test stops it at once.
            if log.contains("attach with:"), (try? RawClient(socketPath: controlPath)) != nil {
                return
            }
            usleep(20_000)
        }
        throw Failure(description: "znbd did not serve within \(timeout) s: \(log)")
    }

    /// Sends `signal` (unless the process has exited) and waits up to
    /// `timeout` seconds for the exit.
    public func signal(_ signal: Int32, timeout: Double = 10) -> (status: Int32?, seconds: Double) {
        let start = Date()
        if process.isRunning { kill(process.processIdentifier, signal) }
        guard finished.wait(timeout: .now() + timeout) == .success else { return (nil, timeout) }
        finished.signal()  // later waiters see it too
        process.waitUntilExit()
        return (process.terminationStatus, Date().timeIntervalSince(start))
    }

    /// Kills what is left and removes the directory.
    public func cleanUp() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            _ = finished.wait(timeout: .now() + 10)
        }
        if ownsDirectory { try? FileManager.default.removeItem(at: directory) }
        if let stateDirectory { try? FileManager.default.removeItem(atPath: stateDirectory) }
    }

    /// znbdctl against this daemon's control socket.
    public func znbdctl(_ arguments: [String], timeout: Double = 60) throws -> CommandResult {
        try runCommand([try Self.executable("znbdctl"), "--control", controlPath] + arguments, timeout: timeout)
    }

    /// curl on the control socket: the answer's body and HTTP status.
    public func curl(_ method: String, _ path: String, body: String? = nil) throws -> (status: Int, body: String) {
        var arguments = [
            "curl", "-s", "--max-time", "30", "--unix-socket", controlPath, "-X", method,
            "-w", "\n%{http_code}", "http://localhost\(path)",
        ]
        if let body { arguments += ["--data-binary", body] }
        let result = try runCommand(arguments)
        guard result.status == 0, let newline = result.standardOutput.lastIndex(of: "\n"),
            let status = Int(result.standardOutput[result.standardOutput.index(after: newline)...])
        else {
            throw Failure(description: "curl \(method) \(path) failed (\(result.status)): \(result.standardError)")
        }
        return (status, String(result.standardOutput[..<newline]))
    }
}

/// Runs `body` against a started daemon, then stops it with SIGTERM, which
/// must end it with status 0 (a sanitizer's report makes it non-zero);
/// always kills what is left and cleans up.
public func withDaemon<Result>(
    _ arguments: [String] = ["--size", "64M"], _ body: (DaemonProcess) async throws -> Result
) async throws -> Result {
    let daemon = try DaemonProcess(arguments)
    defer { daemon.cleanUp() }
    try daemon.waitUntilServing()
    let result = try await body(daemon)
    let stop = daemon.signal(SIGTERM)
    guard stop.status == 0 else {
        throw DaemonProcess.Failure(
            description:
                "znbd ended with status \(stop.status.map(String.init) ?? "none") at SIGTERM: \(daemon.logForFailure)"
        )
    }
    return result
}
