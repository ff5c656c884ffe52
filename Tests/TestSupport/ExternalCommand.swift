public import Foundation

/// What a finished command printed and returned.
public struct CommandResult: Sendable {
    public var status: Int32
    public var standardOutput: String
    public var standardError: String
    public var timedOut: Bool
}

/// Runs a program with a time limit (killed with SIGKILL past it), its
/// output collected in temporary files so a chatty program cannot block on a
/// full pipe. PATH puts /usr/bin first, so Debian's python3 (which has the
/// libnbd module nbdsh needs) wins over any other on the machine.
public func runCommand(
    _ arguments: [String], timeout: Double = 60, environment: [String: String] = [:]
) throws
    -> CommandResult
{
    let directory = FileManager.default.temporaryDirectory
    let outURL = directory.appendingPathComponent("znbd-cmd-\(UUID().uuidString).out")
    let errURL = directory.appendingPathComponent("znbd-cmd-\(UUID().uuidString).err")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer {
        try? FileManager.default.removeItem(at: outURL)
        try? FileManager.default.removeItem(at: errURL)
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + (env["PATH"] ?? "")
    env.merge(environment) { $1 }
    process.environment = env
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    // The handler is set before the process starts, so a quick exit is not missed.
    let finished = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in finished.signal() }
    try process.run()
    var timedOut = false
    if finished.wait(timeout: .now() + timeout) == .timedOut {
        timedOut = true
        kill(process.processIdentifier, SIGKILL)
    }
    process.waitUntilExit()
    return CommandResult(
        status: process.terminationStatus,
        standardOutput: readTextFile(outURL.path),
        standardError: readTextFile(errURL.path),
        timedOut: timedOut)
}

/// A file's text, read with stdio: Foundation's String(contentsOf:) leaks
/// its read buffer (LeakSanitizer, Swift 6.3.1) for the empty files most
/// commands leave on one of their streams.
func readTextFile(_ path: String) -> String {
    guard let file = fopen(path, "rb") else { return "" }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        if count <= 0 { break }
        bytes += chunk[..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// A fresh temporary directory, removed by the caller.
public func makeTemporaryDirectory(_ prefix: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Open file descriptors of this process (entries of /proc/self/fd).
public func openFileDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}
