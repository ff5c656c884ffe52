import BlockDevice
import Foundation
import NBD
import TestSupport

/// An NBDServer on a Unix socket in a temporary directory, for one test.
struct ServedDevice {
    let server: NBDServer
    let device: any BlockDevice
    let directory: URL
    var socketPath: String { directory.appendingPathComponent("nbd.sock").path }
    var uri: String { "nbd+unix:///?socket=\(socketPath)" }

    func client(strict: Bool = true, structuredReplies: Bool = true, blockSizes: Bool = true) throws -> LibNBDClient {
        try LibNBDClient(uri: uri, strict: strict, structuredReplies: structuredReplies, blockSizes: blockSizes)
    }
}

/// Runs `body` against a served device and always stops the server and
/// removes its directory afterwards, even when `body` throws.
func withServedDevice<Result>(
    mebibytes: Int = 64, readOnly: Bool = false, device: (any BlockDevice)? = nil, workerThreads: Int = 2,
    eventLoopThreads: Int = 2, maximumPayload: Int = NBDExport.defaultMaximumPayload,
    maximumInFlightBytesTotal: Int = NBDServer.Configuration().maximumInFlightBytesTotal,
    _ body: (ServedDevice) async throws -> Result
) async throws -> Result {
    let directory = try makeTemporaryDirectory("znbd-nbd-test")
    defer { try? FileManager.default.removeItem(at: directory) }
    let device = try device ?? MemoryBlockDevice(byteCount: mebibytes << 20)
    let server = NBDServer(
        export: NBDExport(
            name: "test", description: "a test device", device: device, readOnly: readOnly,
            maximumPayload: maximumPayload),
        configuration: .init(
            unixSocketPath: directory.appendingPathComponent("nbd.sock").path, eventLoopThreads: eventLoopThreads,
            workerThreads: workerThreads, maximumInFlightBytesTotal: maximumInFlightBytesTotal))
    do {
        _ = try await server.start()
        let result = try await body(ServedDevice(server: server, device: device, directory: directory))
        await server.shutdown()
        return result
    } catch {
        await server.shutdown()
        throw error
    }
}
