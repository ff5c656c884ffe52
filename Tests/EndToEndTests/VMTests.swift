import Foundation
import Testing
import TestSupport

/// What the VM test needs from the machine, or the one line that says what
/// is missing (the test is then skipped, never passed).
enum VirtualMachine {
    /// The checkout: tools/vm and Tests/VM are read from here.
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func path(_ relative: String) -> String { repository.appendingPathComponent(relative).path }

    /// Where tools/vm remembers that qemu could not boot a guest here.
    static var bootFailureFile: String { path("tools/out/vm/boot.fail") }

    static let missing: String? = {
        if getuid() != 0 { return "vm: needs root (qemu, and root in the guest for nbd-client and mount); not run" }
        if Machine.executable("qemu-system-x86_64") == nil {
            return "vm: qemu-system-x86_64 is not installed (tools/setup installs qemu-system-x86); not run"
        }
        if !FileManager.default.isExecutableFile(atPath: path("tools/out/venv/bin/vng")) {
            return "vm: virtme-ng is not installed in tools/out/venv (tools/setup installs it); not run"
        }
        let kernels = ((try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? [])
            .filter { $0.hasPrefix("vmlinuz-") }
            .filter {
                FileManager.default.fileExists(atPath: "/lib/modules/\($0.dropFirst(8))/kernel/drivers/block/nbd.ko")
            }
        if kernels.isEmpty {
            return "vm: no kernel with nbd.ko in /boot (tools/setup installs linux-image-amd64); not run"
        }
        if let failure = try? String(contentsOfFile: bootFailureFile, encoding: .utf8) {
            return "vm: qemu could not boot a guest here before (\(failure.split(separator: "\n").first ?? "")); "
                + "remove \(bootFailureFile) to try again; not run"
        }
        return nil
    }()
}

@Suite("VM: the kernel's own NBD client against znbd, in a qemu guest (tools/vm)", .serialized)
struct VMTests {
    /// Guest test 1 (Tests/VM/nbd-client.sh): nbd-client on nbd0 and with
    /// -C 2 on nbd1, the kernel's view of the export, ext4 with real files,
    /// fstrim, e2fsck through both devices, detach, SIGTERM. About 90-100 s
    /// under TCG on a two-core machine, boot included (25-30 s of it).
    /// The swap run (tools/vm --memory 512M swap, 5-8 min under TCG) is not
    /// part of the suite.
    @Test(
        "nbd-client: attach twice (-C 2), ext4, copy, verify, fstrim, fsck, detach",
        .enabled(if: VirtualMachine.missing == nil, "\(VirtualMachine.missing ?? "")"))
    func nbdClient() throws {
        let result = try runVM(["nbd"], memory: "1G", timeout: 420)
        let lines = result.output.split(separator: "\n")
        print(lines.filter { $0.hasPrefix("nbd-client: ") || $0.hasPrefix("vm: ") }.joined(separator: "\n"))
        #expect(result.status == 0, "tools/vm nbd exited \(result.status):\n\(result.output.suffix(6000))")
        #expect(lines.contains { $0.hasSuffix("] PASS") }, "the guest script did not reach PASS")
    }

    /// Tests/VM/systemd.sh under `tools/vm --systemd`: systemd is the
    /// guest's PID 1; the files of tools/package's .deb are laid out where
    /// it installs them; znbd.conf declares an ext4 device, a swap device
    /// and a served-only one; daemon-reload runs the installed generator
    /// and starting multi-user.target brings all seven units up, as a boot
    /// does. About 100 s under TCG, boot included, after the package build
    /// (seconds when PackageTests built it already, minutes from nothing).
    @Test(
        "systemd: the package's generator and znbd@.service bring up znbd.conf's devices: mount, swap, stop in order",
        .enabled(if: VirtualMachine.missing == nil, "\(VirtualMachine.missing ?? "")"))
    func systemdUnits() throws {
        let package = try runCommand([VirtualMachine.path("tools/package")], timeout: 1500)
        let built = package.standardOutput.split(separator: "\n").first { $0.hasPrefix("package: built ") }
        let deb = built.flatMap { $0.dropFirst("package: built ".count).split(separator: " ").first }.map(String.init)
        #expect(package.status == 0 && deb != nil, "tools/package: \(package.standardOutput)\n\(package.standardError)")
        guard let deb else { return }
        let result = try runVM(["systemd"], memory: "1G", timeout: 420, environment: ["ZNBD_DEB": deb])
        let lines = result.output.split(separator: "\n")
        print(lines.filter { $0.hasPrefix("systemd: ") || $0.hasPrefix("vm: ") }.joined(separator: "\n"))
        #expect(result.status == 0, "tools/vm systemd exited \(result.status):\n\(result.output.suffix(6000))")
        #expect(
            lines.contains { $0.hasPrefix("systemd: ") && $0.hasSuffix("] PASS") },
            "the guest script did not reach PASS")
        #expect(lines.contains { $0.contains("installed znbd_") }, "the guest did not use the package's files")
    }

    /// Tests/VM/restart.sh (issue 24): `znbdctl attach` keeps /dev/nbd0
    /// (two connections, ext4, a writer copying files in) attached while
    /// znbd is SIGKILLed and started again on its state directory, then
    /// stopped with SIGTERM and started as another build: the package's
    /// static-runtime binary (tools/package builds it, in seconds when
    /// PackageTests or the systemd test built it already). Every file
    /// verifies, e2fsck -fn is clean, no I/O error. About 90 s under TCG.
    @Test(
        "restart: the kernel's client keeps ext4 through a SIGKILL and an upgrade of znbd (znbdctl attach)",
        .enabled(if: VirtualMachine.missing == nil, "\(VirtualMachine.missing ?? "")"))
    func restartUnderTheKernelsClient() throws {
        let package = try runCommand([VirtualMachine.path("tools/package")], timeout: 1500)
        #expect(package.status == 0, "tools/package: \(package.standardOutput)\n\(package.standardError)")
        let other = VirtualMachine.path(".build-static/release")
        let result = try runVM(["restart"], memory: "1G", timeout: 420, environment: ["ZNBD_OTHER_BIN": other])
        let lines = result.output.split(separator: "\n")
        print(lines.filter { $0.hasPrefix("restart: ") || $0.hasPrefix("vm: ") }.joined(separator: "\n"))
        #expect(result.status == 0, "tools/vm restart exited \(result.status):\n\(result.output.suffix(6000))")
        #expect(lines.contains { $0.hasPrefix("restart: ") && $0.hasSuffix("] PASS") }, "the guest did not reach PASS")
        #expect(
            lines.contains { $0.contains("e2fsck -fn clean after SIGTERM and another build") },
            "the restart to another build did not run")
    }

    /// Runs `tools/vm ARGUMENTS`: qemu and everything under it is killed
    /// when this returns, whatever happened. A VM that never started the
    /// guest's command (tools/vm's exit 125) cancels the test: reported as
    /// cancelled, never as passed.
    func runVM(
        _ arguments: [String], memory: String, timeout: Double, environment extra: [String: String] = [:]
    ) throws -> (status: Int32, output: String) {
        let directory = try makeTemporaryDirectory("znbd-vm")
        defer { try? FileManager.default.removeItem(at: directory) }
        let outputURL = directory.appendingPathComponent("output.log")
        let pidFile = directory.appendingPathComponent("qemu.pid").path
        _ = FileManager.default.createFile(atPath: outputURL.path, contents: nil)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: VirtualMachine.path("tools/vm"))
        process.arguments = ["--memory", memory, "--timeout", String(Int(timeout)), "--pidfile", pidFile] + arguments
        var environment = ProcessInfo.processInfo.environment
        // The guest runs the binaries this test was built with.
        environment["ZNBD_BIN"] = try (DaemonProcess.executable("znbd") as NSString).deletingLastPathComponent
        _ = try DaemonProcess.executable("znbdctl")
        environment.merge(extra) { $1 }
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        let output = try FileHandle(forWritingTo: outputURL)
        process.standardOutput = output
        process.standardError = output
        let finished = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in finished.signal() }
        try process.run()
        defer {
            // tools/vm ends its VM on SIGTERM; qemu's own pid is the last resort.
            if process.isRunning {
                kill(process.processIdentifier, SIGTERM)
                if finished.wait(timeout: .now() + 20) == .timedOut { kill(process.processIdentifier, SIGKILL) }
            }
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
                let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)),
                (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.hasPrefix("qemu") == true
            {
                kill(pid, SIGKILL)
            }
            process.waitUntilExit()
            try? output.close()
        }
        // tools/vm has its own limit; this one only covers tools/vm itself hanging.
        if finished.wait(timeout: .now() + timeout + 60) == .timedOut {
            let text = (try? String(contentsOf: outputURL, encoding: .utf8)) ?? ""
            throw DaemonProcess.Failure(
                description: "tools/vm did not finish within \(Int(timeout) + 60) s:\n\(text.suffix(4000))")
        }
        // Under --systemd the guest writes to a serial tty, which ends its
        // lines with "\r\n".
        let raw = (try? String(contentsOf: outputURL, encoding: .utf8)) ?? ""
        let text = String(String.UnicodeScalarView(raw.unicodeScalars.filter { $0 != "\r" }))
        if process.terminationStatus == 125 {
            // The VM never ran the guest's command: nothing was tested. A
            // boot that failed (not a missing piece) is remembered, so later
            // runs skip at once instead of booting again.
            let reason = text.split(separator: "\n").last { $0.hasPrefix("vm: ") } ?? "tools/vm exited 125"
            if text.contains("the guest never started the command") {
                try? FileManager.default.createDirectory(
                    atPath: (VirtualMachine.bootFailureFile as NSString).deletingLastPathComponent,
                    withIntermediateDirectories: true)
                try? (reason + "\n" + text.suffix(2000))
                    .write(toFile: VirtualMachine.bootFailureFile, atomically: true, encoding: .utf8)
            }
            try Test.cancel("\(reason); not run")
        }
        return (process.terminationStatus, text)
    }
}
