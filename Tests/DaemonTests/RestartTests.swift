import Foundation
import NBD
import Testing
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The state directory as an operator meets it: a stopped daemon's disk is
/// there for the next one; a second daemon on it, a state of another size,
/// a directory off a tmpfs or writable by others are refused in one line;
/// `znbd discard-state` removes a state nobody holds.
@Suite("znbd: the disk outlives the daemon (--state-dir)", .serialized)
struct RestartTests {
    static func freshState() -> String { "/dev/shm/znbd-restart-\(UUID().uuidString.prefix(8))" }

    @Test("SIGTERM, start again: the same data, the same figures, and the log says it resumed")
    func gracefulRestart() throws {
        let state = Self.freshState()
        let directory = try makeTemporaryDirectory("znbd-restart")
        defer {
            try? FileManager.default.removeItem(atPath: state)
            try? FileManager.default.removeItem(at: directory)
        }
        let corpus = try Corpus.pages(1024)
        var stats: [String: Any] = [:]
        do {
            let daemon = try DaemonProcess(["--size", "64M", "--state-dir", state], directory: directory)
            defer { daemon.cleanUp() }
            try daemon.waitUntilServing()
            #expect(daemon.log.contains("new state in \(state)"), "\(daemon.log)")
            let client = try LibNBDClient(uri: daemon.uri)
            try client.write(corpus.bytes, at: 8 << 20)
            try client.zero(count: 1 << 20, at: 0, flags: 0x02)
            try client.write([UInt8](repeating: 0xA5, count: 4096), at: 60 << 20)
            stats = try Self.stats(daemon)
            #expect(daemon.signal(SIGTERM).status == 0)
            #expect(daemon.log.contains("the disk stays in \(state)"), "\(daemon.log)")
        }
        let daemon = try DaemonProcess(["--size", "64M", "--state-dir", state], directory: directory)
        defer { daemon.cleanUp() }
        try daemon.waitUntilServing()
        #expect(daemon.log.contains("resumed the state in \(state) (start 2)"), "\(daemon.log)")
        let client = try LibNBDClient(uri: daemon.uri)
        #expect(try client.read(count: corpus.bytes.count, at: 8 << 20) == corpus.bytes)
        #expect(try client.read(count: 4096, at: 60 << 20) == [UInt8](repeating: 0xA5, count: 4096))
        #expect(try client.read(count: 1 << 20, at: 0) == [UInt8](repeating: 0, count: 1 << 20))
        let again = try Self.stats(daemon)
        for key in ["orig_data_size", "compr_data_size", "mem_used_total", "same_pages", "huge_pages"] {
            #expect("\(again[key] ?? "-")" == "\(stats[key] ?? "-")", "\(key)")
        }
        let figures = try #require(again["state"] as? [String: Any])
        #expect(figures["starts"] as? Int == 2, "\(figures)")
        #expect((figures["bytes"] as? Int ?? 0) >= (again["mem_used_total"] as? Int ?? .max), "\(figures)")
        #expect(figures["objects_freed_at_resume"] as? Int == 0, "\(figures)")
        #expect((again["export"] as? [String: Any])?["state_directory"] as? String == state)
        let metrics = try daemon.curl("GET", "/metrics").body
        #expect(metrics.contains("znbd_state_starts 2"), "\(metrics.prefix(300))")
        #expect(daemon.signal(SIGTERM).status == 0)
    }

    static func stats(_ daemon: DaemonProcess) throws -> [String: Any] {
        let text = try daemon.znbdctl(["stats", "--json"]).standardOutput
        return try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
    }

    @Test("a second daemon on a held state, another size, a disk directory, a shared one: refused in one line")
    func refusals() throws {
        let state = Self.freshState()
        let directory = try makeTemporaryDirectory("znbd-restart")
        defer {
            try? FileManager.default.removeItem(atPath: state)
            try? FileManager.default.removeItem(at: directory)
        }
        let znbd = try DaemonProcess.executable("znbd")
        let serve = [znbd, "serve", "--socket", directory.path + "/b.sock", "--state-dir"]
        do {
            let daemon = try DaemonProcess(["--size", "32M", "--state-dir", state], directory: directory)
            defer { daemon.cleanUp() }
            try daemon.waitUntilServing()
            let second = try runCommand(serve + [state, "--size", "32M"], timeout: 30)
            DaemonLifecycleTests.expectUsageError(
                second, contains: "--state-dir \(state): in use by another znbd (pid \(daemon.processIdentifier))")
            let discard = try runCommand([znbd, "discard-state", "--state-dir", state], timeout: 30)
            #expect(discard.status == 64 && discard.standardError.contains("in use by another znbd"), "\(discard)")
            #expect(daemon.signal(SIGTERM).status == 0)
        }
        let otherSize = try runCommand(serve + [state, "--size", "64M"], timeout: 30)
        DaemonLifecycleTests.expectUsageError(
            otherSize,
            contains:
                "the state in \(state) cannot be resumed: it holds a device of 33554432 bytes, not 67108864; start with the options it was made with, or remove it (znbd discard-state --state-dir \(state))"
        )
        #expect(FileManager.default.fileExists(atPath: state + "/arena"), "a refused state is left as it was")

        let onDisk = try runCommand(serve + [directory.path + "/state", "--size", "32M"], timeout: 30)
        DaemonLifecycleTests.expectUsageError(onDisk, contains: "not on a tmpfs")
        let shared = Self.freshState()
        defer { try? FileManager.default.removeItem(atPath: shared) }
        #expect(mkdir(shared, 0o777) == 0 && chmod(shared, 0o777) == 0)
        let open = try runCommand(serve + [shared, "--size", "32M"], timeout: 30)
        DaemonLifecycleTests.expectUsageError(open, contains: "writable by nobody else")
        let relative = try runCommand(serve + ["state", "--size", "32M"], timeout: 30)
        DaemonLifecycleTests.expectUsageError(relative, contains: "--state-dir state: must be an absolute path")

        let discard = try runCommand([znbd, "discard-state", "--state-dir", state], timeout: 30)
        #expect(discard.status == 0 && discard.standardOutput.contains("removed the state in \(state)"), "\(discard)")
        #expect(!FileManager.default.fileExists(atPath: state))
        let none = try runCommand([znbd, "discard-state", "--state-dir", state], timeout: 30)
        DaemonLifecycleTests.expectUsageError(none, contains: "No such file or directory")
    }

    @Test("--state-dir none: nothing is kept, as before")
    func noState() throws {
        let directory = try makeTemporaryDirectory("znbd-restart")
        defer { try? FileManager.default.removeItem(at: directory) }
        let daemon = try DaemonProcess(["--size", "16M", "--state-dir", "none"], directory: directory)
        defer { daemon.cleanUp() }
        try daemon.waitUntilServing()
        #expect(!daemon.log.contains("state in"), "\(daemon.log)")
        let client = try LibNBDClient(uri: daemon.uri)
        try client.write([UInt8](repeating: 1, count: 4096), at: 0)
        #expect(daemon.signal(SIGTERM).status == 0)
        #expect(
            daemon.log.contains("what is attached (a mounted filesystem, swap) loses this disk's data"), "\(daemon.log)"
        )
        withExtendedLifetime(client) {}
    }

    static let socketActivateMissing: String? =
        FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-socket-activate")
        ? nil : "no /usr/bin/systemd-socket-activate (systemd); not run"

    @Test(
        "socket activation: a listening socket passed for --socket is served as it is, not bound again",
        .enabled(if: socketActivateMissing == nil, "\(socketActivateMissing ?? "")"))
    func socketActivation() throws {
        let directory = try makeTemporaryDirectory("znbd-activation")
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.path + "/nbd.sock"
        // systemd-socket-activate binds and listens, and on the first
        // connection runs znbd with LISTEN_FDS=1 and LISTEN_PID, as a socket
        // unit does: that connection, made while no daemon ran, waits in
        // the backlog and is answered by the daemon that starts.
        let daemon = try DaemonProcess(
            ["--size", "16M", "--state-dir", "none"], directory: directory,
            launcher: ["systemd-socket-activate", "-l", socket], socketPath: socket)
        defer { daemon.cleanUp() }
        var early: RawClient?
        for _ in 0..<200 where early == nil {
            early = try? RawClient(socketPath: socket)
            if early == nil { usleep(20_000) }
        }
        let waiting = try #require(early, "nothing listened on \(socket)")
        try daemon.waitUntilServing()
        let greeting = try waiting.receive(16)
        #expect(greeting.be64(0) == NBDMagic.nbd && greeting.be64(8) == NBDMagic.option)
        #expect(
            daemon.log.contains("the NBD socket \(socket) is systemd's (socket activation)"), "\(daemon.log)")
        let client = try LibNBDClient(uri: daemon.uri)
        #expect(client.size == 16 << 20)
        try client.write([UInt8](repeating: 9, count: 4096), at: 4096)
        #expect(try client.read(count: 4096, at: 4096) == [UInt8](repeating: 9, count: 4096))
    }
}
