import Foundation
import Testing
import TestSupport
import ZNBDControlAPI

/// What the end-to-end tests need from the machine, or the one line that
/// says what is missing (the tests are then skipped, never passed).
enum Machine {
    static func executable(_ name: String) -> String? {
        for directory in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
            let path = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    static let missing: String? = {
        if getuid() != 0 { return "end-to-end: needs root (mount, loop devices, FUSE); not run" }
        if !FileManager.default.fileExists(atPath: "/dev/fuse") && !FileManager.default.fileExists(atPath: "/dev/nbd0")
        {
            return "end-to-end: neither /dev/fuse (for nbdfuse) nor /dev/nbd0 (for nbd-client) exists; not run"
        }
        if !FileManager.default.fileExists(atPath: "/dev/loop-control")
            && !FileManager.default.fileExists(atPath: "/dev/nbd0")
        {
            return "end-to-end: no loop devices (/dev/loop-control) to mount nbdfuse's file; not run"
        }
        for tool in ["nbdfuse", "fusermount3", "mkfs.ext4", "e2fsck", "fstrim", "sha256sum"]
        where executable(tool) == nil {
            return "end-to-end: \(tool) is not installed (tools/setup installs it); not run"
        }
        return nil
    }()
}

@Suite("End to end: znbd attached, mkfs, mount, copy, drop caches, verify, delete, fstrim, fsck", .serialized)
struct EndToEndTests {
    @Test(
        "ext4 with /usr/share/doc and /usr/lib/python3; e2fsck -fy writes through the attachment",
        .enabled(if: Machine.missing == nil, "\(Machine.missing ?? "")"))
    func ext4() async throws {
        try await runEndToEnd(
            // -fy, not -fn: it writes the superblock's flags, sub-512 writes
            // that nbdfuse once passed on only to have them refused.
            makeFilesystem: ["mkfs.ext4", "-q", "-F"], check: ["e2fsck", "-fy"],
            trees: ["/usr/share/doc", "/usr/lib/python3"])
    }

    @Test(
        "xfs as a second filesystem, with /usr/lib/python3",
        .enabled(
            if: Machine.missing == nil && Machine.executable("mkfs.xfs") != nil,
            "\(Machine.missing ?? "end-to-end xfs: mkfs.xfs is not installed; not run")"))
    func xfs() async throws {
        try await runEndToEnd(
            makeFilesystem: ["mkfs.xfs", "-q", "-f"], check: ["xfs_repair", "-n"], trees: ["/usr/lib/python3"])
    }

    @Test(
        "btrfs as another filesystem, with /usr/lib/python3",
        .enabled(
            if: Machine.missing == nil && Machine.executable("mkfs.btrfs") != nil,
            "\(Machine.missing ?? "end-to-end btrfs: mkfs.btrfs is not installed; not run")"))
    func btrfs() async throws {
        try await runEndToEnd(
            makeFilesystem: ["mkfs.btrfs", "-q", "-f"], check: ["btrfs", "check", "--readonly"],
            trees: ["/usr/lib/python3"])
    }

    @Test(
        "at the memory limit: ext4 loses writes and the daemon says so; OPERATIONS' recovery brings it back intact",
        .enabled(if: Machine.missing == nil, "\(Machine.missing ?? "")"))
    func memoryLimitRecovery() async throws {
        // 256 MiB of disk, 24 MiB of pool: random data fills the pool first.
        let disk = try AttachedDaemon(["--size", "256M", "--mem-limit", "24M"])
        defer { disk.close() }
        let (daemon, attachment, mountPoint) = (disk.daemon, disk.attachment, disk.mountPoint)
        try shell(["mkfs.ext4", "-q", "-F", attachment.device], timeout: 120)
        try disk.mount()
        // What was there before the limit, with its checksum.
        try shell(
            [
                "sh", "-c",
                "head -c 4M /dev/urandom > '\(mountPoint)/kept' && sync && sha256sum '\(mountPoint)/kept' > '\(daemon.directory.path)/kept.sum'",
            ], timeout: 60)

        // Past the limit: the writes fail (EIO to the writer), and the
        // journal's own writes with them.
        let fill = try runCommand(
            ["dd", "if=/dev/urandom", "of=\(mountPoint)/fill", "bs=1M", "count=64", "conv=fsync", "status=none"],
            timeout: 120)
        #expect(fill.status != 0, "64 MiB of random data went into a 24 MiB pool")
        _ = try? runCommand(["sync"], timeout: 60)
        let refused = try stats(daemon).device[.failedWritesNoSpace]
        #expect(refused > 0)
        let deadline = ContinuousClock.now + .seconds(10)
        while !daemon.log.contains("writes refused with ENOSPC"), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(daemon.log.contains("znbd warning: writes refused with ENOSPC"), "\(daemon.log)")
        // The journal's writes failed too: ext4 aborted it, and the
        // filesystem refuses changes (it still reads), though /proc/mounts
        // may go on saying rw: what OPERATIONS tells the reader to expect.
        let probe = try runCommand(["touch", "\(mountPoint)/after"], timeout: 30)
        #expect(probe.status != 0 && probe.standardError.contains("Read-only file system"), "\(probe.standardError)")
        try shell(["sha256sum", "-c", "--quiet", "\(daemon.directory.path)/kept.sum"], timeout: 60)
        print("memory limit: \(refused) writes refused (failed_writes_no_space); ext4 then read-only")

        // The recovery docs/OPERATIONS.md gives, step by step.
        let lifted = try daemon.znbdctl(["mem-limit", "0"])
        #expect(lifted.status == 0, "\(lifted.standardError)")
        try disk.unmount()
        let repair = try runCommand(["e2fsck", "-fy", attachment.device], timeout: 300)
        #expect(repair.status == 0 || repair.status == 1, "e2fsck -fy: \(repair.status) \(repair.standardOutput)")
        try shell(["e2fsck", "-fn", attachment.device], timeout: 300)
        try disk.mount()
        try dropCaches()
        try shell(["sha256sum", "-c", "--quiet", "\(daemon.directory.path)/kept.sum"], timeout: 60)
        try shell(["rm", "-f", "\(mountPoint)/fill", "\(mountPoint)/after"], timeout: 60)
        try shell(["fstrim", mountPoint], timeout: 120)
        // The limit back where it was: what is left, and 8 MiB more, fit.
        let restored = try daemon.znbdctl(["mem-limit", "24M"])
        #expect(restored.status == 0, "\(restored.standardError)")
        try shell(["sh", "-c", "head -c 8M /dev/urandom > '\(mountPoint)/new' && sync"], timeout: 60)
        try disk.unmount()
        try shell(["e2fsck", "-fn", attachment.device], timeout: 300)
    }

    /// The whole path a user takes, every step checked, everything undone
    /// at the end whatever happened.
    func runEndToEnd(makeFilesystem: [String], check: [String], trees: [String]) async throws {
        // Room for the trees, which differ in size from machine to machine,
        // and the filesystem's own: half again, and 512 MiB at least.
        let usage = try runCommand(["du", "-scb"] + trees, timeout: 120)
        let treeBytes =
            usage.standardOutput.split(separator: "\n").last.flatMap { Int($0.split(separator: "\t")[0]) } ?? 0
        let mebibytes = max(512, (treeBytes + treeBytes / 2) >> 20 + 64)
        let disk = try AttachedDaemon(["--size", "\(mebibytes)M"])
        defer { disk.close() }
        let (daemon, attachment, mountPoint) = (disk.daemon, disk.attachment, disk.mountPoint)

        // Writes of 100 bytes off any boundary, as nbdkit's memory plugin
        // takes them: through nbdfuse (whose libnbd agreed to block sizes
        // and enforces the minimum) znbd's minimum of 1 lets them through.
        let marker = "znbd: 100 bytes at 700, "
        try shell(
            [
                "sh", "-c",
                "printf '%-100s' '\(marker)' | dd of='\(attachment.device)' bs=100 seek=7 count=1 conv=notrunc,fsync status=none",
            ], timeout: 60)
        try dropCaches()
        let back = try shell(
            ["dd", "if=\(attachment.device)", "bs=100", "skip=7", "count=1", "status=none"], timeout: 60)
        #expect(back.standardOutput.hasPrefix(marker), "read back: \(back.standardOutput.debugDescription)")

        try shell(makeFilesystem + [attachment.device], timeout: 120)
        try disk.mount()

        // Copy real files in, and keep their checksums from the source.
        let sums = daemon.directory.appendingPathComponent("sums.txt").path
        for tree in trees {
            let parent = (tree as NSString).deletingLastPathComponent
            let name = (tree as NSString).lastPathComponent
            try shell(["cp", "-a", tree, mountPoint + "/"], timeout: 600)
            try shell(
                [
                    "sh", "-c",
                    "cd '\(parent)' && find '\(name)' -type f -print0 | sort -z | xargs -0 sha256sum >> '\(sums)'",
                ],
                timeout: 600)
        }
        let fileCount = try String(contentsOfFile: sums, encoding: .utf8).split(separator: "\n").count
        #expect(fileCount > 500, "only \(fileCount) files copied")
        try shell(["sync"], timeout: 120)
        try dropCaches()
        try shell(["sh", "-c", "cd '\(mountPoint)' && sha256sum -c --quiet --strict '\(sums)'"], timeout: 600)
        // The files are in the device: at least their bytes, less a tenth
        // for pages of zeroes, which count in same_pages, not here (the
        // trees' size differs from machine to machine: 43 MB of
        // /usr/lib/python3 on one, more than 64 MiB on another).
        let written = try stats(daemon)
        #expect(
            written.device[.origDataSize] > treeBytes * 9 / 10,
            "orig_data_size \(written.device[.origDataSize]) after copying \(treeBytes) bytes")

        // Delete every second file, trim, and see the pool let go of the pages.
        let kept = daemon.directory.appendingPathComponent("kept.txt").path
        try shell(
            [
                "sh", "-c",
                """
                cd '\(mountPoint)' && awk 'NR % 2 == 0 { print substr($0, 67) }' '\(sums)' | tr '\\n' '\\0' | xargs -0 rm -f -- \
                && awk 'NR % 2 == 1' '\(sums)' > '\(kept)'
                """,
            ], timeout: 600)
        try shell(["sync"], timeout: 120)
        try shell(["fstrim", mountPoint], timeout: 300)
        let trimmed = try stats(daemon)
        #expect(
            trimmed.device[.origDataSize] < written.device[.origDataSize],
            "orig_data_size \(written.device[.origDataSize]) -> \(trimmed.device[.origDataSize]) after deleting half and fstrim"
        )
        #expect(trimmed.device[.notifyFree] > written.device[.notifyFree])
        #expect(trimmed.nbd.commands["trim"]?.requests ?? 0 > 0)
        print(
            "end-to-end \(makeFilesystem[0]): \(fileCount) files; orig_data_size \(written.device[.origDataSize]) -> "
                + "\(trimmed.device[.origDataSize]), compr_data_size \(written.device[.comprDataSize]) -> "
                + "\(trimmed.device[.comprDataSize]), notify_free \(trimmed.device[.notifyFree])")

        // What was kept is intact after the trim, read from the device again.
        try dropCaches()
        try shell(["sh", "-c", "cd '\(mountPoint)' && sha256sum -c --quiet --strict '\(kept)'"], timeout: 600)

        try disk.unmount()
        try shell(check + [attachment.device], timeout: 300)
        #expect(attachment.detach(), "nbdfuse did not exit after fusermount3 -u")
        let stop = daemon.signal(SIGTERM)
        #expect(stop.status == 0, "znbd exit status \(String(describing: stop.status)): \(daemon.log)")
    }

    func stats(_ daemon: DaemonProcess) throws -> StatsDocument {
        let result = try daemon.znbdctl(["stats", "--json"])
        guard result.status == 0 else {
            throw DaemonProcess.Failure(description: "znbdctl stats: \(result.standardError)")
        }
        return try JSONDecoder().decode(StatsDocument.self, from: Data(result.standardOutput.utf8))
    }

    func dropCaches() throws {
        try shell(["sh", "-c", "sync && echo 3 > /proc/sys/vm/drop_caches"], timeout: 120)
    }
}

/// Runs a command; a non-zero exit or a timeout is a thrown error with its output.
@discardableResult
func shell(_ arguments: [String], timeout: Double) throws -> CommandResult {
    let result = try runCommand(arguments, timeout: timeout)
    guard result.status == 0, !result.timedOut else {
        throw DaemonProcess.Failure(
            description: """
                \(arguments.joined(separator: " ")) exited \(result.status)\(result.timedOut ? " (timed out)" : ""): \
                \(result.standardError.suffix(2000)) \(result.standardOutput.suffix(2000))
                """)
    }
    return result
}

/// A daemon with its device attached (Attachment) and a mount point beside
/// it. `close()`, deferred by the test, undoes whatever is still done, in
/// order: unmount (lazily), detach, kill the daemon.
final class AttachedDaemon {
    let daemon: DaemonProcess
    let attachment: Attachment
    let mountPoint: String
    private var mounted = false

    init(_ arguments: [String]) throws {
        daemon = try DaemonProcess(arguments)
        do {
            try daemon.waitUntilServing()
            mountPoint = daemon.directory.appendingPathComponent("mnt").path
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            attachment = try Attachment(daemon: daemon)
        } catch {
            daemon.cleanUp()
            throw error
        }
    }

    func mount() throws {
        try shell(["mount"] + attachment.mountOptions + [attachment.device, mountPoint], timeout: 60)
        mounted = true
    }

    func unmount() throws {
        try shell(["umount", mountPoint], timeout: 120)
        mounted = false
    }

    func close() {
        if mounted { _ = try? runCommand(["umount", "-l", mountPoint], timeout: 60) }
        mounted = false
        attachment.detach()
        daemon.cleanUp()
    }
}

/// The device a user would mkfs: /dev/nbd0 through the kernel's nbd-client
/// where the nbd module is loaded, else nbdfuse's file (mounted with -o loop).
final class Attachment {
    let device: String
    let mountOptions: [String]
    private let fuseDirectory: String?
    private let process: Process?
    private let finished = DispatchSemaphore(value: 0)
    private var isDetached = false

    init(daemon: DaemonProcess) throws {
        if FileManager.default.fileExists(atPath: "/dev/nbd0"), Machine.executable("nbd-client") != nil {
            device = "/dev/nbd0"
            mountOptions = []
            fuseDirectory = nil
            process = nil
            try shell(["nbd-client", "-unix", daemon.socketPath, device, "-b", "4096"], timeout: 60)
            return
        }
        let directory = daemon.directory.appendingPathComponent("fuse").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let pidFile = daemon.directory.appendingPathComponent("nbdfuse.pid").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Machine.executable("nbdfuse") ?? "/usr/bin/nbdfuse")
        process.arguments = ["-P", pidFile, directory + "/disk", "--unix", daemon.socketPath]
        process.standardInput = FileHandle.nullDevice
        let finished = self.finished
        process.terminationHandler = { _ in finished.signal() }
        try process.run()
        device = directory + "/disk"
        mountOptions = ["-o", "loop"]
        fuseDirectory = directory
        self.process = process
        // nbdfuse writes its pid file once the file is being served.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let pid = try? String(contentsOfFile: pidFile, encoding: .utf8), !pid.isEmpty,
                FileManager.default.fileExists(atPath: device)
            {
                return
            }
            if !process.isRunning { break }
            usleep(20_000)
        }
        detach()
        throw DaemonProcess.Failure(description: "nbdfuse did not serve \(device) within 20 s")
    }

    /// Unmounts the FUSE file (nbdfuse then exits) or disconnects nbd0.
    /// False when that did not work and nbdfuse had to be killed.
    @discardableResult
    func detach() -> Bool {
        guard !isDetached else { return true }
        isDetached = true
        guard let process, let fuseDirectory else {
            return (try? runCommand(["nbd-client", "-d", device], timeout: 60).status) == 0
        }
        _ = try? runCommand(["fusermount3", "-u", fuseDirectory], timeout: 60)
        let exited = finished.wait(timeout: .now() + 10) == .success
        if !exited {
            kill(process.processIdentifier, SIGKILL)
            _ = try? runCommand(["fusermount3", "-uz", fuseDirectory], timeout: 60)
            _ = finished.wait(timeout: .now() + 10)
        }
        // Returns at once now; it also lets Foundation drop what it keeps
        // to watch the child (left alone, LeakSanitizer reports it).
        process.waitUntilExit()
        return exited
    }
}
