#if canImport(Glibc)
    import Glibc
#endif
import BlockDevice
import Dispatch
import NBD
import ZRAM

/// `znbd-bench serve KIND SOCKET MIB [WORKERS]`: serves a plain RAM device
/// (KIND memory) or a compressed one (KIND zram) on a Unix socket until
/// killed, for fio and the NBD tools to run against. WORKERS 0 runs requests
/// on the event loop.
func runServe(kind: String, socketPath: String, mebibytes: Int, workers: Int) {
    let device: any BlockDevice
    do {
        switch kind {
        case "memory": device = try MemoryBlockDevice(byteCount: mebibytes << 20)
        case "zram": device = try CompressedBlockDevice(.init(byteCount: mebibytes << 20))
        default: fail("serve: KIND is memory or zram, got \(kind)", exitCode: 64)
        }
    } catch {
        fail("\(error)")
    }
    let server = NBDServer(
        export: NBDExport(name: "", description: "znbd-bench \(kind) device", device: device),
        configuration: .init(unixSocketPath: socketPath, workerThreads: workers))
    let started = DispatchSemaphore(value: 0)
    Task {
        do {
            _ = try await server.start()
        } catch {
            fail("serve: \(error)")
        }
        started.signal()
    }
    started.wait()
    print("serving \(mebibytes) MiB \(kind) on \(socketPath)")
    while true { pause() }
}
