import ArgumentParser
import ZNBDControlAPI

#if canImport(Glibc)
    import Glibc
#endif

/// What the generator does with a device at boot, from its section's own
/// keys (the rest of a section is `znbd serve`'s):
///
///     nbd-device = /dev/nbdN    attach it there (znbdctl attach, the kernel's driver)
///     connections = N           connections to it (default 2), as nbd-client's -C
///     dead-timeout = SECONDS    znbdctl attach's --dead-timeout: how long the
///                               kernel holds requests while the daemon is
///                               away (default 120)
///     request-timeout = SECONDS znbdctl attach's --timeout (default 30)
///     fs-type = swap | ext4 | xfs | …   swap on it, or a filesystem, made by
///                               systemd-makefs when the device holds none
///     mount-point = /PATH       where the filesystem is mounted
///     options = …               mount or swap options (default: discard,
///                               which gives freed pages back at once)
///     swap-priority = N         swapon's priority (default 100, above disk swap)
///
/// The names and defaults are zram-generator's where it has the same key.
struct BootAction: Sendable {
    static let keys = [
        "nbd-device", "connections", "dead-timeout", "request-timeout", "fs-type", "mount-point", "options",
        "swap-priority",
    ]

    enum Use: Sendable, Equatable {
        case serveOnly
        case filesystem(type: String, mountPoint: String, options: String)
        case swap(priority: Int, options: String)
    }

    /// /dev/nbdN, or nil when the device is only served (qemu, nbdfuse).
    let nbdDevice: String?
    let connections: Int
    /// znbdctl attach's --dead-timeout and --timeout, nil for its defaults.
    let deadTimeout: Int?
    let requestTimeout: Int?
    let use: Use

    init(_ section: ConfigurationFile.Section, path: String) throws(ConfigurationFile.Failure) {
        func fail(_ entry: ConfigurationFile.Entry, _ message: String) -> ConfigurationFile.Failure {
            ConfigurationFile.Failure(description: "\(path):\(entry.line): \(entry.key) = \(entry.value): \(message)")
        }
        func sectionFailure(_ message: String) -> ConfigurationFile.Failure {
            ConfigurationFile.Failure(description: "\(path):\(section.line): [\(section.name)]: \(message)")
        }
        if let entry = section.entry("nbd-device") {
            let number = entry.value.hasPrefix("/dev/nbd") ? Int(entry.value.dropFirst("/dev/nbd".count)) : nil
            guard let number, number >= 0, entry.value == "/dev/nbd\(number)" else {
                throw fail(entry, "a kernel NBD device, /dev/nbd0, /dev/nbd1, …")
            }
            nbdDevice = entry.value
        } else {
            nbdDevice = nil
        }
        if let entry = section.entry("connections") {
            guard let value = Int(entry.value), (1...16).contains(value) else { throw fail(entry, "1 to 16") }
            connections = value
        } else {
            connections = 2
        }
        let attached = nbdDevice != nil
        func seconds(_ key: String, _ range: ClosedRange<Int>) throws(ConfigurationFile.Failure) -> Int? {
            guard let entry = section.entry(key) else { return nil }
            guard attached else { throw fail(entry, "needs nbd-device") }
            guard let value = Int(entry.value), range.contains(value) else {
                throw fail(entry, "\(range.lowerBound) to \(range.upperBound) seconds")
            }
            return value
        }
        deadTimeout = try seconds("dead-timeout", 1...86_400)
        requestTimeout = try seconds("request-timeout", 1...3600)
        let options = section.entry("options")?.value ?? "discard"
        guard let fsType = section.entry("fs-type") else {
            for key in ["mount-point", "options", "swap-priority"] {
                if let entry = section.entry(key) { throw fail(entry, "needs fs-type") }
            }
            use = .serveOnly
            return
        }
        guard nbdDevice != nil else { throw sectionFailure("fs-type = \(fsType.value) needs nbd-device") }
        let typeAllowed = !fsType.value.isEmpty && fsType.value.utf8.allSatisfy { isalnum(Int32($0)) != 0 }
        guard typeAllowed else { throw fail(fsType, "swap or a filesystem type (ext4, xfs, …)") }
        if fsType.value == "swap" {
            if let entry = section.entry("mount-point") { throw fail(entry, "swap is not mounted") }
            var priority = 100
            if let entry = section.entry("swap-priority") {
                guard let value = Int(entry.value), (-1...32767).contains(value) else {
                    throw fail(entry, "-1 to 32767")
                }
                priority = value
            }
            use = .swap(priority: priority, options: options)
        } else {
            if let entry = section.entry("swap-priority") { throw fail(entry, "only with fs-type = swap") }
            guard let mountPoint = section.entry("mount-point") else {
                throw sectionFailure("fs-type = \(fsType.value) needs mount-point")
            }
            // Written as systemd will read it back: no empty, "." or ".."
            // part (systemd would simplify it and then refuse the unit,
            // whose name no longer matches), no % (a specifier).
            let parts = mountPoint.value.split(separator: "/")
            guard mountPoint.value.hasPrefix("/"), !parts.isEmpty,
                !parts.contains(where: { $0 == "." || $0 == ".." }), !mountPoint.value.contains("%")
            else {
                throw fail(mountPoint, "an absolute path other than /, without '.', '..' or '%'")
            }
            use = .filesystem(type: fsType.value, mountPoint: "/" + parts.joined(separator: "/"), options: options)
        }
    }
}

/// A systemd generator (systemd.generator(7)): at boot and at every
/// `systemctl daemon-reload`, the devices of /etc/znbd/znbd.conf become
/// units in the directory systemd gives:
///
///     multi-user.target.wants/znbd@NAME.service   the daemon (a static
///                                    template: znbd serve --device NAME)
///     znbd-attach@NAME.service       znbdctl attach to /dev/nbdN (kept
///                                    attached across the daemon's
///                                    restarts; after its own crash, a
///                                    start takes the device back,
///                                    --take-over), systemd-makefs for fs-type
///     MOUNT.mount or dev-nbdN.swap   the filesystem or swap
///
/// each wanted by multi-user.target and ordered after the one before, so a
/// stop of them all (a shutdown) runs the other way: swapoff or umount,
/// detach, then the daemon. The attach unit only wants the daemon: a
/// restart of the daemon (or its crash, which Restart= mends) leaves the
/// device, and what is mounted on it, in place.
/// The mount and swap units have no default dependencies: theirs would
/// order them before local-fs.target and swap.target, which come before
/// the daemon can run (a cycle). Installed as
/// /lib/systemd/system-generators/znbd-generator, a link to znbd.
struct SystemdGenerator: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "systemd-generator",
        abstract: "Write the systemd units of the devices a configuration file declares (systemd.generator(7)).",
        discussion: "systemd runs it at boot as znbd-generator, a link to znbd, with its three output directories.",
        shouldDisplay: false)

    /// The name systemd runs it by: main() turns that into this command.
    static let linkName = "znbd-generator"

    @Option(help: ArgumentHelp("The configuration file.", valueName: "path"))
    var config = ConfigurationFile.defaultPath

    @Argument(help: "systemd's normal, early and late directories; units go to the normal one.")
    var directories: [String] = []

    func validate() throws {
        guard (1...3).contains(directories.count) else {
            throw ValidationError("give the output directory (systemd gives three: normal, early, late)")
        }
    }

    func run() throws {
        // No file: no devices, as zram-generator does without its file.
        if access(config, F_OK) != 0 && errno == ENOENT { return }
        let file = try ConfigurationFile.read(config)
        // SourcePath= takes an absolute path.
        let absolute = realpath(config, nil).map { path in
            defer { free(path) }
            return String(cString: path)
        }
        let units = UnitWriter(directory: directories[0], configPath: absolute ?? config)
        // Every section is checked before any unit is written: systemd uses
        // whatever a failing generator left behind.
        var claimed: [String: String] = [:]
        var actions: [(ConfigurationFile.Section, BootAction)] = []
        for section in file.sections {
            let action = try BootAction(section, path: config)
            var uses = action.nbdDevice.map { [$0] } ?? []
            if case .filesystem(_, let mountPoint, _) = action.use { uses.append(mountPoint) }
            for use in uses {
                if let other = claimed[use] {
                    throw ConfigurationFile.Failure(
                        description: "\(config):\(section.line): [\(section.name)]: \(use) is [\(other)]'s already")
                }
                claimed[use] = section.name
            }
            actions.append((section, action))
        }
        for (section, action) in actions { try units.write(section, action) }
    }
}

/// The unit files of one generator run.
struct UnitWriter {
    let directory: String
    let configPath: String

    /// Where the package puts the daemon's template; the first found is
    /// what the wants link points to (systemd reads the link's name).
    static let templateDirectories = [
        "/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ]
    static let makefsPaths = ["/usr/lib/systemd/systemd-makefs", "/lib/systemd/systemd-makefs"]

    func write(_ section: ConfigurationFile.Section, _ action: BootAction) throws(ConfigurationFile.Failure) {
        let name = section.name
        // Unit files expand % specifiers in these settings.
        let configPath = Self.specifiersEscaped(self.configPath)
        let daemon = "znbd@\(name).service"
        let templates = Self.templateDirectories.map { $0 + "/znbd@.service" }
        let template = templates.first { access($0, F_OK) == 0 } ?? "/usr/lib/systemd/system/znbd@.service"
        try want(daemon, linkTarget: template)
        guard let device = action.nbdDevice else { return }
        let source = "# Written by znbd-generator from \(configPath), [\(name)] (line \(section.line)).\n"
        let socket =
            section.entry("socket")?.value
            ?? ConfigurationFile.defaultSocket(forDevice: name, userID: 0, environment: [:])
        var attach = [
            "ExecStartPre=-modprobe nbd",
            "ExecStart=\(Self.znbdctlPath) attach \(device) --socket \(Self.quoted(socket)) --connections \(action.connections) --take-over"
                + (action.deadTimeout.map { " --dead-timeout \($0)" } ?? "")
                + (action.requestTimeout.map { " --timeout \($0)" } ?? "")
                + (section.entry("name").map { " --name \(Self.quoted($0.value))" } ?? ""),
        ]
        let makefs = Self.makefsPaths.first { access($0, X_OK) == 0 } ?? Self.makefsPaths[0]
        switch action.use {
        case .serveOnly: break
        case .filesystem(let type, _, _): attach.append("ExecStartPost=\(makefs) \(type) \(device)")
        case .swap: attach.append("ExecStartPost=\(makefs) swap \(device)")
        }
        let attachUnit = "znbd-attach@\(name).service"
        try file(
            attachUnit,
            source + """
                [Unit]
                Description=znbd device \(name) on \(device)
                Documentation=man:znbd(1)
                SourcePath=\(configPath)
                # Wants, not BindsTo or Requires: those would stop or restart
                # this unit, and the filesystem on it, with the daemon. The
                # daemon's state outlives it, and znbdctl attach hands the
                # kernel new connections to the next one.
                Wants=\(daemon)
                After=\(daemon)

                [Service]
                # READY=1 once the device is attached; SIGTERM detaches it.
                Type=notify
                # Killed or crashed, it leaves the device attached with nobody
                # to replace its connections: `systemctl start` of this unit
                # then takes the device back (--take-over). Not restarted by
                # systemd on failure: systemd 252 would restart the mount on
                # the device with it (docs/OPERATIONS.md).
                # systemd-makefs makes a filesystem or swap only where it finds
                # none, so a device that kept its data keeps it.
                \(attach.joined(separator: "\n"))

                """)
        try want(attachUnit, linkTarget: attachUnit)
        // The mount or swap unit: its name, how it is described, its section.
        let unit: (name: String, description: String, section: String)
        switch action.use {
        case .serveOnly: return
        case .filesystem(let type, let mountPoint, let options):
            unit = (
                Self.escapedPath(mountPoint) + ".mount", "on \(mountPoint)",
                "[Mount]\nWhat=\(device)\nWhere=\(mountPoint)\nType=\(type)\nOptions=\(Self.specifiersEscaped(options))\n"
            )
        case .swap(let priority, let options):
            unit = (
                Self.escapedPath(device) + ".swap", "as swap",
                "[Swap]\nWhat=\(device)\nPriority=\(priority)\nOptions=\(Self.specifiersEscaped(options))\n"
            )
        }
        try file(
            unit.name,
            source + """
                [Unit]
                Description=znbd device \(name) \(unit.description)
                Documentation=man:znbd(1)
                SourcePath=\(configPath)
                DefaultDependencies=no
                Requires=\(attachUnit)
                After=\(attachUnit)
                Conflicts=umount.target
                Before=umount.target

                \(unit.section)
                """)
        try want(unit.name, linkTarget: unit.name)
    }

    /// znbdctl beside this znbd (the generator is a link to it): the
    /// package's /usr/bin/znbdctl, or a build's.
    static var znbdctlPath: String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return "/usr/bin/znbdctl" }
        let executable = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let directory = executable.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(
            separator: "/")
        return directory + "/znbdctl"
    }

    private func file(_ name: String, _ text: String) throws(ConfigurationFile.Failure) {
        let path = directory + "/" + name
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw failure(path) }
        defer { close(descriptor) }
        var text = text
        let written = text.withUTF8 { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written == text.utf8.count else { throw failure(path) }
    }

    /// multi-user.target.wants/UNIT, a link to `linkTarget` (a generated
    /// unit's own name, relative to the wants directory's parent).
    private func want(_ unit: String, linkTarget: String) throws(ConfigurationFile.Failure) {
        let wants = directory + "/multi-user.target.wants"
        if mkdir(wants, 0o755) != 0 && errno != EEXIST { throw failure(wants) }
        let target = linkTarget.hasPrefix("/") ? linkTarget : "../" + linkTarget
        if symlink(target, wants + "/" + unit) != 0 && errno != EEXIST { throw failure(wants + "/" + unit) }
    }

    private func failure(_ path: String) -> ConfigurationFile.Failure {
        ConfigurationFile.Failure(description: "\(path): \(String(cString: strerror(errno)))")
    }

    static func specifiersEscaped(_ text: String) -> String {
        text.split(separator: "%", omittingEmptySubsequences: false).joined(separator: "%%")
    }

    /// A path as a unit name, as `systemd-escape --path` writes it: no
    /// leading or trailing slash, `/` as `-`, and any byte but letters,
    /// digits, `:`, `_` and a `.` that does not lead as `\xNN`.
    static func escapedPath(_ path: String) -> String {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
        if parts.isEmpty { return "-" }
        var escaped = ""
        for (index, byte) in parts.utf8.enumerated() {
            switch byte {
            case UInt8(ascii: "/"): escaped += "-"
            case UInt8(ascii: "."):
                escaped += index == 0 ? "\\x2e" : "."
            case _ where isalnum(Int32(byte)) != 0 || byte == UInt8(ascii: ":") || byte == UInt8(ascii: "_"):
                escaped.append(Character(Unicode.Scalar(byte)))
            default:
                escaped += "\\x" + String(byte, radix: 16).leftPadded(to: 2)
            }
        }
        return escaped
    }

    /// One word of an Exec line: as is when it needs no quoting, else in
    /// double quotes with `\` and `"` escaped; `%` and `$` doubled always
    /// (systemd's specifiers and variables).
    static func quoted(_ word: String) -> String {
        var text = ""
        var plain = !word.isEmpty
        for character in word {
            switch character {
            case "%": text += "%%"
            case "$": text += "$$"
            case "\\", "\"":
                text += "\\" + String(character)
                plain = false
            case " ", "\t", "'", ";":
                text.append(character)
                plain = false
            default: text.append(character)
            }
        }
        return plain ? text : "\"" + text + "\""
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
