import Foundation
import Testing
import TestSupport
import ZNBDControlAPI

/// /etc/znbd/znbd.conf as users meet it: `znbd serve --device NAME` serves
/// a section, a mistake in the file is one line naming the file and line,
/// and the systemd generator turns sections into units that systemd
/// accepts. (Tests/VM/systemd.sh starts those units under a real systemd.)
@Suite("znbd.conf: several devices declared in one file, served and turned into systemd units", .serialized)
struct ConfigurationFileTests {
    static func write(_ text: String, in directory: URL, name: String = "znbd.conf") throws -> String {
        let path = directory.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("serve --device: the section's options, the command line's over them, its socket NAME.sock")
    func serveASection() async throws {
        let directory = try makeTemporaryDirectory("znbd-conf")
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = try Self.write(
            """
            # two devices; the second is served
            [first]
            size = 16M

            [second]   # a comment after a header
            size = 32M
            mem-limit = 8M
            algorithm = zstd
            algorithm-params = level=5
            name = -from-file
            read-only = yes
            socket = \(directory.path)/second.sock
            nbd-device = /dev/nbd3
            fs-type = swap
            """, in: directory)
        let daemon = try DaemonProcess(
            ["--config", config, "--device", "second", "--size", "64M", "--no-read-only"], directory: directory,
            socketPath: directory.path + "/second.sock", controlPath: directory.path + "/second-control.sock")
        defer { daemon.cleanUp() }
        try daemon.waitUntilServing()
        let stats = try daemon.znbdctl(["stats", "--json"])
        #expect(stats.status == 0, "\(stats.standardError)")
        let document = try JSONDecoder().decode(StatsDocument.self, from: Data(stats.standardOutput.utf8))
        #expect(document.export.sizeBytes == 64 << 20, "the command line's --size wins")
        #expect(document.export.name == "-from-file", "a value that starts with a dash stays a value")
        #expect(!document.export.readOnly, "the command line's --no-read-only wins over read-only = yes")
        #expect(document.device[.memLimit] == 8 << 20)
        #expect(stats.standardOutput.contains("\"zstd\""), "\(stats.standardOutput)")
        // znbdctl names a device's control socket as the daemon does:
        // NAME-control.sock in the runtime directory (root's /run/znbd,
        // else $XDG_RUNTIME_DIR/znbd), where no daemon of that name runs.
        let xdg = directory.path + "/xdg"
        let byName = try runCommand(
            [try DaemonProcess.executable("znbdctl"), "--device", "second", "stats"], timeout: 30,
            environment: ["XDG_RUNTIME_DIR": xdg])
        let expected = (getuid() == 0 ? "/run/znbd" : xdg + "/znbd") + "/second-control.sock"
        #expect(byName.status == 69 && byName.standardError.contains(expected), "\(byName)")
        let both = try runCommand(
            [try DaemonProcess.executable("znbdctl"), "--device", "second", "--control", daemon.controlPath, "stats"],
            timeout: 30)
        #expect(both.status == 64 && both.standardError.contains("give one"), "\(both)")
        #expect(daemon.signal(SIGTERM).status == 0)
    }

    @Test("a device without a socket key serves on NAME.sock in the runtime directory")
    func defaultSocketIsNamedAfterTheDevice() async throws {
        let directory = try makeTemporaryDirectory("znbd-conf")
        defer { try? FileManager.default.removeItem(at: directory) }
        // No state kept: this test is about the socket's default.
        let config = try Self.write("[scratch]\nsize = 16M\nstate-dir = none\n", in: directory)
        let runtime = directory.path + "/runtime"
        // Not root's /run/znbd: a user's $XDG_RUNTIME_DIR/znbd, the same rule.
        let command = [try DaemonProcess.executable("znbd"), "serve", "--config", config, "--device", "scratch"]
        let launcher = [
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "XDG_RUNTIME_DIR=\(runtime)",
        ]
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true)
        guard getuid() == 0 else {
            // Without root the daemon is already a user: run it directly.
            return try expectServesNamedSocket(command, environment: ["XDG_RUNTIME_DIR": runtime], runtime: runtime)
        }
        _ = chmod(directory.path, 0o755)
        _ = chmod(config, 0o644)
        _ = chown(runtime, 65534, 65534)
        try expectServesNamedSocket(launcher + command, environment: [:], runtime: runtime)
    }

    private func expectServesNamedSocket(_ command: [String], environment: [String: String], runtime: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let log = Pipe()
        process.standardError = log
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        let socket = runtime + "/znbd/scratch.sock"
        let control = runtime + "/znbd/scratch-control.sock"
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: control) && Date() < deadline && process.isRunning {
            usleep(50_000)
        }
        #expect(FileManager.default.fileExists(atPath: socket), "no \(socket)")
        #expect(FileManager.default.fileExists(atPath: control), "no \(control)")
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: socket))
    }

    @Test(
        "a bad file or a bad value in it: exit 64 and one line that says where",
        arguments: [
            ("[a]\nsise = 1G\n", "a", "znbd.conf:2: unknown key 'sise'"),
            ("[a]\n--size = 1G\n", "a", "znbd.conf:2: unknown key '--size' (write it without the dashes)"),
            ("size = 1G\n[a]\n", "a", "znbd.conf:1: 'size' before the first [NAME]"),
            ("[a]\n[a]\n", "a", "znbd.conf:2: [a] again (first on line 1)"),
            ("[a]\nsize = 1G\nsize = 2G\n", "a", "znbd.conf:3: 'size' again in [a] (first on line 2)"),
            ("[a b]\n", "a b", "znbd.conf:1: [a b]: a device name takes letters"),
            ("[-a]\n", "-a", "does not start with '.' or '-'"),
            ("[a\n", "a", "znbd.conf:1: a section header is [NAME]"),
            ("[a]\njust words\n", "a", "znbd.conf:2: expected [NAME] or KEY = VALUE, got 'just words'"),
            ("[a]\nread-only = maybe\n", "a", "znbd.conf:2: read-only = maybe: yes or no"),
            ("[a]\nsize = 16M\n", "b", "no device [b]: it declares a"),
            ("[a]\nsize = -1G\n", "a", "--size -1G: a size cannot be negative (with the options of"),
            ("[a]\ncompaction = maybe\n", "a", "Please provide one of 'auto' and 'off'. (with the options of"),
        ])
    func badFile(text: String, device: String, message: String) throws {
        let directory = try makeTemporaryDirectory("znbd-conf")
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = try Self.write(text, in: directory)
        let result = try runCommand(
            [
                try DaemonProcess.executable("znbd"), "serve", "--config", config, "--device", device, "--socket",
                directory.path + "/nbd.sock",
            ], timeout: 20)
        DaemonLifecycleTests.expectUsageError(result, contains: message)
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/nbd.sock"))
    }

    @Test("no file, or --config alone: one line each")
    func missingFile() throws {
        let znbd = try DaemonProcess.executable("znbd")
        let missing = try runCommand([znbd, "--config", "/nonexistent-znbd.conf", "--device", "a"], timeout: 20)
        DaemonLifecycleTests.expectUsageError(missing, contains: "/nonexistent-znbd.conf: No such file or directory")
        let alone = try runCommand([znbd, "--config", "/nonexistent-znbd.conf"], timeout: 20)
        DaemonLifecycleTests.expectUsageError(alone, contains: "give --device NAME too")
    }

    static let threeDevices = """
        [scratch]
        size = 64M
        nbd-device = /dev/nbd0
        connections = 4
        fs-type = ext4
        mount-point = /mnt/znbd scratch
        options = discard,noatime

        [swap]
        size = 64M
        dead-timeout = 600
        request-timeout = 10
        nbd-device = /dev/nbd1
        fs-type = swap
        swap-priority = 50

        [vm.disk]
        size = 64M
        name = disk
        """

    @Test("the generator: a daemon per section, znbdctl attach, makefs, a mount and a swap unit, systemd-analyze clean")
    func generatorWritesUnits() throws {
        let directory = try makeTemporaryDirectory("znbd-generator")
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = try Self.write(Self.threeDevices, in: directory)
        let output = directory.appendingPathComponent("normal").path
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        let znbd = try DaemonProcess.executable("znbd")
        let result = try runCommand([znbd, "systemd-generator", "--config", config, output], timeout: 20)
        #expect(result.status == 0, "\(result.standardError)")
        let files = try FileManager.default.subpathsOfDirectory(atPath: output).sorted()
        #expect(
            files == [
                "dev-nbd1.swap", "mnt-znbd\\x20scratch.mount", "multi-user.target.wants",
                "multi-user.target.wants/dev-nbd1.swap", "multi-user.target.wants/mnt-znbd\\x20scratch.mount",
                "multi-user.target.wants/znbd-attach@scratch.service",
                "multi-user.target.wants/znbd-attach@swap.service",
                "multi-user.target.wants/znbd@scratch.service", "multi-user.target.wants/znbd@swap.service",
                "multi-user.target.wants/znbd@vm.disk.service", "znbd-attach@scratch.service",
                "znbd-attach@swap.service",
            ], "\(files)")
        func unit(_ name: String) -> String {
            (try? String(contentsOfFile: output + "/" + name, encoding: .utf8)) ?? ""
        }
        let attach = unit("znbd-attach@scratch.service")
        // A restart of the daemon must not stop the device or its mount.
        #expect(attach.contains("Wants=znbd@scratch.service\nAfter=znbd@scratch.service\n"), "\(attach)")
        #expect(!attach.contains("BindsTo=") && !attach.contains("Requires="), "\(attach)")
        let znbdctl = try DaemonProcess.executable("znbdctl")
        #expect(
            attach.contains(
                "ExecStart=\(znbdctl) attach /dev/nbd0 --socket /run/znbd/scratch.sock --connections 4 --take-over\n"),
            "\(attach)")
        #expect(attach.contains("Type=notify\n") && attach.contains("systemd-makefs ext4 /dev/nbd0\n"), "\(attach)")
        // No Restart=: systemd would restart the mount with it.
        #expect(!attach.contains("Restart="), "\(attach)")
        #expect(attach.contains("SourcePath=\(directory.resolvingSymlinksInPath().path)/znbd.conf\n"), "\(attach)")
        let mount = unit("mnt-znbd\\x20scratch.mount")
        #expect(mount.contains("Requires=znbd-attach@scratch.service\nAfter=znbd-attach@scratch.service\n"))
        #expect(
            mount.contains("What=/dev/nbd0\nWhere=/mnt/znbd scratch\nType=ext4\nOptions=discard,noatime\n"), "\(mount)")
        let swap = unit("dev-nbd1.swap")
        #expect(swap.contains("What=/dev/nbd1\nPriority=50\nOptions=discard\n"), "\(swap)")
        #expect(unit("znbd-attach@swap.service").contains("systemd-makefs swap /dev/nbd1\n"))
        #expect(
            unit("znbd-attach@swap.service").contains(
                "--connections 2 --take-over --dead-timeout 600 --timeout 10\n"))

        // systemd's own check, with the template pointing at this build:
        // syntax, every key known, every command found. It warns and still
        // exits 0 for an unknown key, so its output must be empty too.
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else { return }
        let template = try String(
            contentsOfFile: repositoryRoot.appendingPathComponent("tools/systemd/znbd@.service").path, encoding: .utf8)
        try template.replacingOccurrences(of: "/usr/local/bin/znbd", with: znbd)
            .write(toFile: output + "/znbd@.service", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("tools/systemd/znbd@.socket").path,
            toPath: output + "/znbd@.socket")
        let verify = try runCommand(
            [
                "systemd-analyze", "verify", "--man=no", output + "/znbd@.service", output + "/znbd@scratch.service",
                output + "/znbd@scratch.socket",
                output + "/znbd-attach@scratch.service", output + "/mnt-znbd\\x20scratch.mount",
                output + "/dev-nbd1.swap", output + "/znbd-attach@swap.service",
            ], timeout: 60)
        #expect(verify.status == 0, "\(verify.standardError)")
        #expect(verify.standardOutput.isEmpty && verify.standardError.isEmpty, "\(verify.standardError)")
    }

    @Test("the generator by systemd's name for it (a link to znbd), with its three directories; no file, no units")
    func generatorByItsLinkName() throws {
        let directory = try makeTemporaryDirectory("znbd-generator")
        defer { try? FileManager.default.removeItem(at: directory) }
        // Written with CRLF line ends and a comment first, as an editor on
        // another system may leave it.
        let config = try Self.write(
            "# devices\r\n" + Self.threeDevices.split(separator: "\n").joined(separator: "\r\n") + "\r\n",
            in: directory)
        let link = directory.appendingPathComponent("znbd-generator").path
        try FileManager.default.createSymbolicLink(
            atPath: link, withDestinationPath: try DaemonProcess.executable("znbd"))
        let outputs = ["normal", "early", "late"].map { directory.appendingPathComponent($0).path }
        for output in outputs {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        }
        let byLink = try runCommand([link, "--config", config] + outputs, timeout: 20)
        #expect(byLink.status == 0, "\(byLink.standardError)")
        let written = try FileManager.default.subpathsOfDirectory(atPath: outputs[0])
        #expect(written.contains("mnt-znbd\\x20scratch.mount") && written.contains("dev-nbd1.swap"), "\(written)")
        #expect(written.contains("multi-user.target.wants/znbd@vm.disk.service"), "\(written)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outputs[1]).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: outputs[2]).isEmpty)
        // A file that is not there: nothing, and success (a machine with the
        // package and no devices boots as before).
        let empty = directory.appendingPathComponent("empty").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let none = try runCommand([link, "--config", "/nonexistent-znbd.conf", empty, empty, empty], timeout: 20)
        #expect(none.status == 0, "\(none.standardError)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: empty).isEmpty)
    }

    @Test(
        "the generator refuses what it cannot attach, with the file and line",
        arguments: [
            ("[a]\nfs-type = ext4\nmount-point = /mnt/a\n", "znbd.conf:1: [a]: fs-type = ext4 needs nbd-device"),
            ("[a]\nnbd-device = /dev/sda\n", "znbd.conf:2: nbd-device = /dev/sda: a kernel NBD device"),
            ("[a]\nnbd-device = /dev/nbd0\nfs-type = ext4\n", "[a]: fs-type = ext4 needs mount-point"),
            (
                "[a]\nnbd-device = /dev/nbd0\nfs-type = swap\nmount-point = /x\n",
                "mount-point = /x: swap is not mounted"
            ),
            ("[a]\nnbd-device = /dev/nbd0\nconnections = 0\n", "connections = 0: 1 to 16"),
            ("[a]\nnbd-device = /dev/nbd0\ndead-timeout = 0\n", "dead-timeout = 0: 1 to 86400 seconds"),
            ("[a]\nrequest-timeout = 5\n", "request-timeout = 5: needs nbd-device"),
            ("[a]\nmount-point = /mnt/a\n", "mount-point = /mnt/a: needs fs-type"),
            (
                "[a]\nnbd-device = /dev/nbd0\nfs-type = ext4\nmount-point = relative\n",
                "mount-point = relative: an absolute path"
            ),
            (
                "[a]\nnbd-device = /dev/nbd0\n[b]\nnbd-device = /dev/nbd0\n",
                "znbd.conf:3: [b]: /dev/nbd0 is [a]'s already"
            ),
            (
                "[a]\nnbd-device = /dev/nbd0\nfs-type = swap\nswap-priority = high\n",
                "swap-priority = high: -1 to 32767"
            ),
            ("[a]\nnbd-device = /dev/nbd0\nfs-type = ext4\nmount-point = /mnt/../x\n", "without '.', '..' or '%'"),
            ("[a]\nnbd-device = /dev/nbd0\nfs-type = ext4\nmount-point = //\n", "an absolute path other than /"),
            ("[a]\nnbd-device = /dev/nbd0\nfs-type = ext4\nmount-point = /mnt/a%b\n", "without '.', '..' or '%'"),
            (
                "[a]\nnbd-device = /dev/nbd0\nfs-type = ext4\nmount-point = /mnt/x\n"
                    + "[b]\nnbd-device = /dev/nbd1\nfs-type = xfs\nmount-point = /mnt//x/\n",
                "znbd.conf:5: [b]: /mnt/x is [a]'s already"
            ),
        ])
    func generatorRefuses(text: String, message: String) throws {
        let directory = try makeTemporaryDirectory("znbd-generator")
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = try Self.write(text, in: directory)
        let output = directory.appendingPathComponent("normal").path
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        let result = try runCommand(
            [try DaemonProcess.executable("znbd"), "systemd-generator", "--config", config, output], timeout: 20)
        DaemonLifecycleTests.expectUsageError(result, contains: message)
        // Every section is checked before a unit is written: systemd would
        // use a failing generator's half.
        #expect(try FileManager.default.contentsOfDirectory(atPath: output).isEmpty)
    }

    @Test("every `znbd serve` option is a key of the file (the two lists cannot drift apart)")
    func everyServeOptionIsAKey() throws {
        let znbd = try DaemonProcess.executable("znbd")
        let dump = try runCommand([znbd, "serve", "--experimental-dump-help"], timeout: 20)
        let help = try JSONSerialization.jsonObject(with: Data(dump.standardOutput.utf8)) as? [String: Any]
        let arguments = (help?["command"] as? [String: Any])?["arguments"] as? [[String: Any]] ?? []
        var lines: [String] = []
        for argument in arguments {
            let names = argument["names"] as? [[String: Any]] ?? []
            guard let long = names.first(where: { $0["kind"] as? String == "long" })?["name"] as? String else {
                continue
            }
            // Not options of a device: help, version, and the two that pick the file.
            if ["help", "version", "config", "device"].contains(long) { continue }
            // A flag's --no- form is the same key (read-only = no).
            if long.hasPrefix("no-") && argument["kind"] as? String == "flag" { continue }
            lines.append("\(long) = \(argument["kind"] as? String == "flag" ? "yes" : "x")")
        }
        #expect(lines.count >= 20, "\(dump.standardOutput.prefix(500))")
        let directory = try makeTemporaryDirectory("znbd-generator")
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = try Self.write("[all]\n" + lines.joined(separator: "\n") + "\n", in: directory)
        // The generator reads every key without checking `znbd serve`'s values.
        let result = try runCommand([znbd, "systemd-generator", "--config", config, directory.path], timeout: 20)
        #expect(result.status == 0, "\(result.standardError)")
        // And a flag is a flag to the file too: yes or no, nothing else.
        for line in lines where line.hasSuffix(" = yes") {
            let key = String(line.dropLast(" = yes".count))
            let flagConfig = try Self.write("[all]\n\(key) = maybe\n", in: directory, name: "flag.conf")
            let refused = try runCommand(
                [znbd, "systemd-generator", "--config", flagConfig, directory.path], timeout: 20)
            #expect(refused.status == 64 && refused.standardError.contains("\(key) = maybe: yes or no"), "\(refused)")
        }
    }
}
