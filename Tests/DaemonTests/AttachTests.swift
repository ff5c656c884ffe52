import Foundation
import NBD
import NBDAttach
import Testing
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// `znbdctl attach`'s parts that run without the kernel's nbd module (the
/// whole of it runs in the VM: Tests/VM/restart.sh): its NBD handshake
/// against the daemon, and its refusals.
@Suite("znbdctl attach: the handshake it hands the kernel, and its refusals")
struct AttachTests {
    @Test("NBD_OPT_GO against znbd: the export's size and flags, and a socket in transmission")
    func negotiates() async throws {
        try await withDaemon(["--size", "48M", "--name", "disk", "--state-dir", "none"]) { daemon in
            let socket = try Negotiation.connect(socketPath: daemon.socketPath, export: "disk")
            defer { close(socket.descriptor) }
            #expect(socket.size == 48 << 20)
            #expect(socket.transmissionFlags & NBDTransmissionFlag.canMultiConn != 0)
            #expect(socket.transmissionFlags & NBDTransmissionFlag.sendTrim != 0)
            // The socket is in transmission: a read of the first 512 bytes is answered.
            let request = RawClient.request(
                type: NBDCommand.read.rawValue, cookie: 7, offset: 0, length: 512)
            #expect(request.withUnsafeBytes { send(socket.descriptor, $0.baseAddress, $0.count, 0) } == request.count)
            var reply = [UInt8](repeating: 0, count: 16 + 512)
            var received = 0
            while received < reply.count {
                let count = reply[received...].withUnsafeMutableBytes {
                    recv(socket.descriptor, $0.baseAddress, $0.count, 0)
                }
                guard count > 0 else { break }
                received += count
            }
            #expect(received == reply.count && reply.be32(0) == NBDMagic.simpleReply && reply.be32(4) == 0)
            #expect(reply.be64(8) == 7)

            #expect {
                _ = try Negotiation.connect(socketPath: daemon.socketPath, export: "other")
            } throws: { error in
                "\(error)".contains("the server refused export 'other'")
            }
        }
    }

    @Test("no daemon: exit 69; not an nbd device, bad counts: exit 64; one line each")
    func refusals() throws {
        let znbdctl = try DaemonProcess.executable("znbdctl")
        let missing = try runCommand(
            [znbdctl, "attach", "/dev/nbd0", "--socket", "/nonexistent/nbd.sock"], timeout: 20)
        #expect(missing.status == 69 && missing.standardError.contains("/nonexistent/nbd.sock"), "\(missing)")
        #expect(missing.standardError.split(separator: "\n").count == 1, "\(missing)")
        for (arguments, message) in [
            (["/dev/sda"], "/dev/sda: not an NBD device"),
            (["/dev/nbd0", "--connections", "0"], "--connections must be 1 to 16"),
            (["/dev/nbd0", "--dead-timeout", "0"], "--dead-timeout must be 1 to 86400"),
            (["/dev/nbd0", "--socket", "a", "--device", "b"], "--socket and --device: give one"),
        ] {
            let result = try runCommand([znbdctl, "attach"] + arguments, timeout: 20)
            #expect(result.status == 64 && result.standardError.contains(message), "\(arguments): \(result)")
        }
    }
}
