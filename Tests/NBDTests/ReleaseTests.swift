import BlockDevice
import Foundation
import Testing
import TestSupport

/// A connection's handler, its share of the workers and its channel point
/// at one another while requests are in flight; once the server has
/// stopped, none of it may keep the device (or anything else) alive. A
/// cycle left behind costs the daemon its whole device and, under
/// AddressSanitizer, a leak report at every exit.
@Suite("NBD: a stopped server keeps nothing alive")
struct ReleaseTests {
    @Test("once the server has stopped, its connections free the device, with workers and without", arguments: [2, 0])
    func deviceFreed(workerThreads: Int) async throws {
        weak var weakDevice: MemoryBlockDevice?
        try await {
            let device = try MemoryBlockDevice(byteCount: 1 << 20)
            weakDevice = device
            try await withServedDevice(device: device, workerThreads: workerThreads) { served in
                // Transmission: a write (on the workers, when there are
                // some), a read, then the client disconnects.
                let client = try served.client()
                let page = [UInt8](repeating: 0x5A, count: 4096)
                try client.write(page, at: 8192)
                #expect(try client.read(count: 4096, at: 8192) == page)
                // And a client that leaves during the handshake.
                _ = try RawClient(socketPath: served.socketPath)
            }
        }()
        // The last references go as the event loops finish their last tasks.
        let deadline = Date().addingTimeInterval(5)
        while weakDevice != nil && Date() < deadline { usleep(10_000) }
        #expect(weakDevice == nil, "the device outlived the server: a connection's objects were never freed")
    }
}
