import Foundation
import Testing
import TestSupport

@Suite("znbdctl without a daemon, or at the wrong socket", .serialized)
struct ControlClientTests {
    func znbdctl(_ control: String, _ arguments: [String] = ["stats"]) throws -> CommandResult {
        try runCommand([try DaemonProcess.executable("znbdctl"), "--control", control] + arguments, timeout: 30)
    }

    static func expectOneLine(
        _ result: CommandResult, status: Int32, contains message: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(
            result.status == status, "exit \(result.status): \(result.standardError)", sourceLocation: sourceLocation)
        #expect(
            result.standardError.split(separator: "\n").count == 1, "\(result.standardError)",
            sourceLocation: sourceLocation)
        #expect(
            result.standardError.hasPrefix("znbdctl: ") && result.standardError.contains(message),
            "\(result.standardError)", sourceLocation: sourceLocation)
        #expect(result.standardOutput.isEmpty, sourceLocation: sourceLocation)
    }

    @Test("no daemon, a stale socket, a file, the NBD socket, a bad argument: one line and a non-zero exit")
    func unreachable() async throws {
        let directory = try makeTemporaryDirectory("znbdctl")
        defer { try? FileManager.default.removeItem(at: directory) }
        Self.expectOneLine(try znbdctl(directory.path + "/none.sock"), status: 69, contains: "no znbd control socket")

        let stale = directory.path + "/stale.sock"
        let bind = try runCommand(["python3", "-c", "import socket; socket.socket(socket.AF_UNIX).bind('\(stale)')"])
        #expect(bind.status == 0, "\(bind.standardError)")
        Self.expectOneLine(try znbdctl(stale), status: 69, contains: "nothing answers")

        let file = directory.path + "/plain"
        _ = FileManager.default.createFile(atPath: file, contents: Data())
        Self.expectOneLine(try znbdctl(file), status: 69, contains: "is not a socket")

        Self.expectOneLine(try znbdctl(file, ["mem-limit", "12Q"]), status: 64, contains: "unknown unit")
        Self.expectOneLine(try znbdctl(file, ["stats", "--json", "--raw"]), status: 64, contains: "choose one")
        Self.expectOneLine(try znbdctl(file, ["stats", "--watch", "0"]), status: 64, contains: "--watch 0: must be")
        Self.expectOneLine(try znbdctl(file, ["stats", "--watch", "-1"]), status: 64, contains: "--watch -1: must be")
        Self.expectOneLine(
            try znbdctl(file, ["recompress", "--max-pages", "-2"]), status: 64, contains: "--max-pages -2")

        try await withDaemon(["--size", "16M"]) { daemon in
            let nbd = try znbdctl(daemon.socketPath)
            Self.expectOneLine(
                nbd, status: 76, contains: "did not answer as znbd's control endpoint (its answer is not HTTP)")
            #expect(!nbd.standardError.contains("invalid constant"), "\(nbd.standardError)")
        }
    }

    @Test(
        "permission denied on the control socket: one line, exit 77",
        .enabled(if: getuid() == 0, "running znbdctl as another user needs root; uid \(getuid())"))
    func permissionDenied() async throws {
        try await withDaemon(["--size", "16M"]) { daemon in
            // The daemon's directory is root's (0700 from mktemp's parent
            // rules aside: set it here); nobody may not reach the socket.
            chmod(daemon.directory.path, 0o700)
            // A copy of znbdctl that nobody may run, outside root's tree.
            let bin = try makeTemporaryDirectory("znbdctl-bin")
            defer { try? FileManager.default.removeItem(at: bin) }
            chmod(bin.path, 0o755)
            let copy = bin.path + "/znbdctl"
            try FileManager.default.copyItem(atPath: try DaemonProcess.executable("znbdctl"), toPath: copy)
            chmod(copy, 0o755)
            let result = try runCommand(
                [
                    "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", copy, "--control",
                    daemon.controlPath, "stats",
                ],
                timeout: 30)
            Self.expectOneLine(result, status: 77, contains: "permission denied")
        }
    }
}
