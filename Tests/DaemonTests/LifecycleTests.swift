import Foundation
import NBD
import Synchronization
import Testing
import TestSupport

@Suite("znbd: start, stop on SIGTERM, and refuse bad arguments", .serialized)
struct DaemonLifecycleTests {
    @Test("SIGTERM while requests are in flight: each gets its reply, exit 0 within 2 s, socket files gone")
    func sigtermAnswersInFlightRequests() async throws {
        // One worker thread runs the writes, so the event loop reads ahead
        // of it up to the in-flight limit: at the signal, requests wait in
        // the worker's queue, in the server's buffer and in the socket.
        try await withDaemon(["--size", "256M", "--workers", "1"]) { daemon in
            let idle = try RawClient(socketPath: daemon.socketPath)  // attached, sends nothing
            try idle.handshake()
            let client = try RawClient(socketPath: daemon.socketPath)
            try client.handshake()
            var generator = SeededRandom(seed: 11)
            let chunk = 128 << 10
            let payloads = (0..<8).map { _ in generator.bytes(chunk) }
            // What the reads will ask for is written first and answered:
            // requests in flight together may run in any order (reads stay
            // on the event loop while writes queue for the worker), so a
            // read's expected data must not depend on a write beside it.
            let readRegion = 128 << 20
            for (index, payload) in payloads.enumerated() {
                try client.sendRequest(
                    type: NBDCommand.write.rawValue, cookie: UInt64(1_000 + index),
                    offset: UInt64(readRegion + index * chunk), length: UInt32(chunk), payload: payload)
                #expect(try client.receiveSimpleReply().error == 0)
            }
            // 192 writes of 128 KiB (24 MiB to compress) and a read after every
            // fourth: the server is still busy with them when the signal comes.
            var expectedReads: [UInt64: [UInt8]] = [:]
            var batch: [UInt8] = []
            var cookie: UInt64 = 0
            for index in 0..<192 {
                let payload = payloads[index % payloads.count]
                batch += RawClient.request(
                    type: NBDCommand.write.rawValue, cookie: cookie, offset: UInt64(index * chunk),
                    length: UInt32(chunk), payload: payload)
                cookie += 1
                if index % 4 == 3 {
                    let target = (index / 4) % payloads.count
                    batch += RawClient.request(
                        type: NBDCommand.read.rawValue, cookie: cookie,
                        offset: UInt64(readRegion + target * chunk), length: UInt32(chunk))
                    expectedReads[cookie] = payloads[target]
                    cookie += 1
                }
            }
            let requests = Int(cookie)
            // Replies are read on another thread while the requests go out,
            // as a real client does; the signal follows the last byte sent.
            let collector = ReplyCollector(client: client, expectedReads: expectedReads, count: requests)
            let reader = Thread { collector.run() }
            reader.start()
            try client.send(batch)
            let answeredBeforeSignal = collector.repliesSoFar
            let stop = daemon.signal(SIGTERM)
            print("sigterm: \(answeredBeforeSignal) of \(requests) requests answered when the signal was sent")
            collector.finished.wait()
            #expect(collector.failure == nil, "\(collector.failure ?? "")")
            #expect(collector.replies == requests, "\(collector.replies) of \(requests) requests answered")
            #expect(collector.errors == 0)
            #expect(collector.wrongData == 0)
            #expect(client.isClosedByServer())
            #expect(idle.isClosedByServer())
            #expect(stop.status == 0, "exit status \(String(describing: stop.status)): \(daemon.log)")
            #expect(stop.seconds < 2, "took \(stop.seconds) s to stop")
            #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
            #expect(!FileManager.default.fileExists(atPath: daemon.controlPath))
            #expect(daemon.log.contains("stopped"))
            // Both connections were open at the signal, and the log says so.
            #expect(daemon.log.contains("znbd warning: stopping with 2 client connections open"), "\(daemon.log)")
        }
    }

    @Test(
        "bad arguments: exit 64 and one line on stderr",
        arguments: [
            (["--size", "0"], "at least one 4 KiB page"),
            (["--size", "1000"], "not a multiple of 4 KiB"),
            (["--size", "12X"], "unknown unit"),
            (["--size", "lots"], "not a size"),
            (["--size", "-1G"], "--size -1G: a size cannot be negative"),
            (["--mem-limit", "-5M"], "a size cannot be negative"),
            (["--workers", "-1"], "--workers -1: must be 0 to 256"),
            (["--max-chain", "-3"], "--max-chain -3: must be 1 to 16"),
            (["--socket", "/nonexistent-znbd-test/dir/nbd.sock"], "its parent /nonexistent-znbd-test does not exist"),
            (["--mem-limit", "1Q"], "unknown unit"),
            (["--max-chain", "99"], "must be 1 to 16"),
            (["--compaction", "sometimes"], "Please provide one of 'auto' and 'off'"),
            (["--migration", "no"], "Please provide one of 'auto' and 'off'"),
            (["--lock-memory", "maybe"], "Please provide one of 'auto', 'on' or 'off'"),
            (["--io-flusher", "yes"], "Please provide one of 'auto', 'on' or 'off'"),
            (["--oom-score-adj", "-2000"], "must be -1000 to 1000, or keep"),
            (["--listen", "localhost"], "expected HOST:PORT"),
            (["--log-level", "loud"], "one of the following: trace, debug, info, notice, warning, error, critical"),
            (["--algorithm", "zlib"], "Please provide one of 'lzo', 'lz4' or 'zstd'"),
            (["--algorithm", "zstd", "--algorithm-params", "level=99"], "zstd level must be in"),
            (["--algorithm-params", "level=3"], "lzo takes no parameters"),
            (["--recompress-algorithm", "zstd:x"], "is not a whole number"),
            (["--recompress-idle-age", "1h"], "needs --recompress-algorithm"),
            (
                ["--recompress-algorithm", "zstd", "--recompress-idle-age", "soon"],
                "seconds, or a number with s, m, h or d"
            ),
            (
                ["--recompress-algorithm", "zstd", "--recompress-idle-age", "60", "--compaction", "off"],
                "needs --compaction auto"
            ),
            (["--recompress-rate", "0"], "must be 1 to 1000000"),
            (["--no-such-option"], "Unknown option"),
        ])
    func badArguments(arguments: [String], message: String) throws {
        let directory = try makeTemporaryDirectory("znbd-args")
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try runCommand(
            [try DaemonProcess.executable("znbd"), "--socket", directory.path + "/nbd.sock"] + arguments, timeout: 20)
        Self.expectUsageError(result, contains: message)
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/nbd.sock"))
        // A mistyped socket path makes no directory tree.
        #expect(!FileManager.default.fileExists(atPath: "/nonexistent-znbd-test"))
    }

    static func expectUsageError(
        _ result: CommandResult, contains message: String, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(result.status == 64, "exit \(result.status): \(result.standardError)", sourceLocation: sourceLocation)
        let lines = result.standardError.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(result.standardError)", sourceLocation: sourceLocation)
        #expect(
            result.standardError.hasPrefix("znbd: ") && result.standardError.contains(message),
            "stderr: \(result.standardError)", sourceLocation: sourceLocation)
        #expect(!result.timedOut, sourceLocation: sourceLocation)
    }

    @Test("--version and the shell completion scripts, for both executables")
    func versionAndCompletions() throws {
        for name in ["znbd", "znbdctl"] {
            let executable = try DaemonProcess.executable(name)
            let version = try runCommand([executable, "--version"], timeout: 20)
            #expect(version.status == 0, "\(version.standardError)")
            #expect(version.standardOutput.hasPrefix("\(name) ") && version.standardOutput.contains("."))
            for shell in ["bash", "zsh", "fish"] {
                let script = try runCommand([executable, "--generate-completion-script", shell], timeout: 20)
                #expect(script.status == 0 && script.standardOutput.contains(name), "\(name) \(shell)")
            }
        }
    }

    @Test("a live socket, an address in use, a path that is no socket: exit 64; a stale socket is replaced")
    func socketsAndAddresses() async throws {
        let znbd = try DaemonProcess.executable("znbd")
        try await withDaemon(["--size", "16M", "--listen", "127.0.0.1:0"]) { live in
            // The socket a running daemon answers on.
            let clash = try runCommand(
                [znbd, "--socket", live.socketPath, "--control", live.directory.path + "/b.sock"],
                timeout: 20)
            Self.expectUsageError(clash, contains: "in use by a running server")
            #expect(!FileManager.default.fileExists(atPath: live.directory.path + "/b.sock"))

            // The TCP address it listens on.
            let stats =
                try JSONSerialization.jsonObject(
                    with: Data(try live.znbdctl(["stats", "--json"]).standardOutput.utf8)) as? [String: Any]
            let address = try #require((stats?["export"] as? [String: Any])?["tcp_address"] as? String)
            let other = try makeTemporaryDirectory("znbd-args")
            defer { try? FileManager.default.removeItem(at: other) }
            let taken = try runCommand([znbd, "--socket", other.path + "/nbd.sock", "--listen", address], timeout: 20)
            Self.expectUsageError(taken, contains: "cannot listen on \(address)")
            #expect(taken.standardError.contains("in use"))
            #expect(!FileManager.default.fileExists(atPath: other.path + "/nbd.sock"))
            #expect(!FileManager.default.fileExists(atPath: other.path + "/nbd-control.sock"))

            // The first daemon never noticed.
            let client = try LibNBDClient(uri: live.uri)
            try client.write([UInt8](repeating: 5, count: 4096), at: 0)
            #expect(try client.read(count: 4096, at: 0) == [UInt8](repeating: 5, count: 4096))

            // A regular file where the socket should go.
            let file = other.path + "/file.sock"
            _ = FileManager.default.createFile(atPath: file, contents: Data("keep me".utf8))
            let notSocket = try runCommand([znbd, "--socket", file], timeout: 20)
            Self.expectUsageError(notSocket, contains: "is not a socket")
            #expect((try? String(contentsOfFile: file, encoding: .utf8)) == "keep me")
        }

        // Socket files left by a daemon that was killed: the next one replaces them.
        let killed = try DaemonProcess(["--size", "16M"])
        defer { killed.cleanUp() }
        try killed.waitUntilServing()
        _ = killed.signal(SIGKILL)
        #expect(FileManager.default.fileExists(atPath: killed.socketPath))
        let successor = try DaemonProcess(["--size", "16M"], directory: killed.directory)
        defer { successor.cleanUp() }
        try successor.waitUntilServing()
        let client = try LibNBDClient(uri: successor.uri)
        #expect(client.size == 16 << 20)
        #expect(successor.signal(SIGTERM).status == 0)
        #expect(successor.log.contains("stopping with 1 client connection open"), "\(successor.log)")

        // A missing socket directory whose parent exists is made, and removed
        // again at exit.
        let parent = try makeTemporaryDirectory("znbd-args")
        defer { try? FileManager.default.removeItem(at: parent) }
        let made = parent.path + "/made"
        let maker = try DaemonProcess(
            ["--size", "16M"], directory: parent, socketPath: made + "/nbd.sock", controlPath: made + "/c.sock")
        defer { maker.cleanUp() }
        try maker.waitUntilServing()
        #expect(FileManager.default.fileExists(atPath: made + "/nbd.sock"))
        #expect(maker.signal(SIGTERM).status == 0)
        #expect(maker.log.contains("stopping: no client connected"), "\(maker.log)")
        #expect(!FileManager.default.fileExists(atPath: made), "\(made) is left behind")

        // A bare socket name is in the working directory, which exists.
        let relative = try runCommand(
            [
                "sh", "-c",
                "cd '\(parent.path)' && timeout -s TERM 3 '\(znbd)' serve --size 16M --socket rel.sock --state-dir none 2>&1; true",
            ], timeout: 30)
        #expect(relative.standardOutput.contains("serving a 16M"), "\(relative.standardOutput)")
        #expect(relative.standardOutput.contains("stopped"), "\(relative.standardOutput)")
        #expect(!FileManager.default.fileExists(atPath: parent.path + "/rel.sock"))

        // Under systemd stderr is the journal's stream, named by
        // JOURNAL_STREAM (device:inode): lines carry a syslog priority and
        // no time. Here the "journal" is a file the test names the same way.
        let journal = parent.path + "/journal.log"
        _ = FileManager.default.createFile(atPath: journal, contents: nil)
        _ = try runCommand(
            [
                "sh", "-c",
                "JOURNAL_STREAM=$(stat -c %d:%i '\(journal)') timeout -s TERM 3 '\(znbd)' serve --size 16M --socket '\(parent.path)/j.sock' --state-dir none 2>>'\(journal)'; true",
            ], timeout: 30)
        let lines = try String(contentsOfFile: journal, encoding: .utf8).split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("<6>serving a 16M") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("<6>stopped") }, "\(lines)")
        #expect(lines.allSatisfy { $0.hasPrefix("<") }, "\(lines)")
    }
}

/// Reads replies on its own thread: each request's cookie once, with the
/// payload a read should return.
final class ReplyCollector: @unchecked Sendable {
    // @unchecked: the fields are written by the reader thread only, and read
    // by the test after `finished` is signalled.
    let client: RawClient
    let expectedReads: [UInt64: [UInt8]]
    let count: Int
    let finished = DispatchSemaphore(value: 0)
    var replies = 0
    private let progress = Atomic<Int>(0)
    /// Replies received so far, readable while the reader runs.
    var repliesSoFar: Int { progress.load(ordering: .relaxed) }
    var errors = 0
    var wrongData = 0
    var failure: String?

    init(client: RawClient, expectedReads: [UInt64: [UInt8]], count: Int) {
        self.client = client
        self.expectedReads = expectedReads
        self.count = count
    }

    func run() {
        defer { finished.signal() }
        var seen = Set<UInt64>()
        do {
            while replies < count {
                let header = try client.receive(16)
                guard header.be32(0) == NBDMagic.simpleReply else {
                    throw RawClient.Failure(description: "bad reply magic")
                }
                let cookie = header.be64(8)
                guard seen.insert(cookie).inserted else {
                    throw RawClient.Failure(description: "cookie \(cookie) answered twice")
                }
                replies += 1
                progress.store(replies, ordering: .relaxed)
                if header.be32(4) != 0 {
                    errors += 1
                } else if let expected = expectedReads[cookie], try client.receive(expected.count) != expected {
                    wrongData += 1
                }
            }
        } catch {
            failure = "after \(replies) replies: \(error)"
        }
    }
}
