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

/// A device that hands every call to `inner`; a test subclasses it to
/// change one thing (a gate on writes, a stricter minimum block size).
class ForwardingDevice: BlockDevice, @unchecked Sendable {
    // @unchecked: `inner` is Sendable; subclasses guard their own state.
    let inner: any BlockDevice

    init(inner: any BlockDevice) { self.inner = inner }

    var byteCount: Int { inner.byteCount }
    var minimumBlockSize: Int { inner.minimumBlockSize }
    var preferredBlockSize: Int { inner.preferredBlockSize }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(BlockDeviceError) {
        try inner.read(into: buffer, at: offset)
    }
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(BlockDeviceError) {
        try inner.write(bytes, at: offset)
    }
    func discard(offset: Int, length: Int) throws(BlockDeviceError) {
        try inner.discard(offset: offset, length: length)
    }
    func writeZeroes(offset: Int, length: Int, mayDeallocate: Bool) throws(BlockDeviceError) {
        try inner.writeZeroes(offset: offset, length: length, mayDeallocate: mayDeallocate)
    }
    func flush() throws(BlockDeviceError) { try inner.flush() }
    func allocationExtents(offset: Int, length: Int, maximumExtents: Int) throws(BlockDeviceError) -> [AllocationExtent]
    {
        try inner.allocationExtents(offset: offset, length: length, maximumExtents: maximumExtents)
    }
    func recordInvalidRequest() { inner.recordInvalidRequest() }
}
