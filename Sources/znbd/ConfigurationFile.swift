#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
import ZNBDCommandLine
import ZNBDControlAPI

#if canImport(Glibc)
    import Glibc
#endif

/// /etc/znbd/znbd.conf: several devices declared in one file, a section
/// each, as zram-generator's file declares zram devices.
///
///     # A comment. Keys are `znbd serve` options without their dashes.
///     [scratch]
///     size = 8G
///     mem-limit = 2G
///     algorithm = zstd
///     nbd-device = /dev/nbd0      # attached at boot by the kernel's client
///     fs-type = ext4              # made when the device holds no filesystem
///     mount-point = /mnt/scratch
///
/// A section's name names the device: `znbd serve --config FILE --device
/// NAME` serves it (on /run/znbd/NAME.sock unless `socket` says otherwise),
/// and the systemd generator turns each section into units. Two kinds of
/// keys: every `znbd serve` option (`read-only` takes yes or no), and what
/// to do with the device at boot (`BootAction.keys`), which only the
/// generator reads. An unknown key, a repeated key or section, and a line
/// that is neither are errors that name the file and line: a typo must not
/// silently serve a device with defaults.
struct ConfigurationFile: Sendable {
    static let defaultPath = "/etc/znbd/znbd.conf"

    struct Entry: Sendable {
        let key: String
        let value: String
        let line: Int
    }

    struct Section: Sendable {
        let name: String
        let line: Int
        var entries: [Entry] = []

        func entry(_ key: String) -> Entry? { entries.first { $0.key == key } }
    }

    /// A mistake in the file: one line, exit 64 as every bad argument.
    struct Failure: CommandLineFailure, Sendable {
        let description: String
        var exitCode: Int32 { 64 }
    }

    let path: String
    let sections: [Section]

    /// The `znbd serve` options a file may set, by key. Kept beside the
    /// command's own declarations by a test that compares the two lists.
    enum ServeKey: Sendable {
        /// `key = VALUE` becomes `--key VALUE`.
        case value
        /// `key = yes` becomes `--key`; `no` leaves it out.
        case flag
    }

    static let serveKeys: [String: ServeKey] = [
        "size": .value, "name": .value, "socket": .value, "listen": .value, "read-only": .flag,
        "mem-limit": .value, "max-chain": .value, "algorithm": .value, "algorithm-params": .value,
        "recompress-algorithm": .value, "recompress-idle-age": .value, "recompress-rate": .value,
        "compaction": .value, "migration": .value, "waste-threshold": .value, "io-flusher": .value,
        "lock-memory": .value, "oom-score-adj": .value, "control": .value, "log-level": .value,
        "workers": .value, "state-dir": .value,
    ]

    /// Reads and checks the file's syntax and keys (not the values: those
    /// are checked where they are used, by `znbd serve` and the generator).
    static func read(_ path: String) throws(Failure) -> ConfigurationFile {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw Failure(description: "\(path): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = Glibc.read(descriptor, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw Failure(description: "\(path): \(String(cString: strerror(errno)))") }
            if count == 0 { break }
            bytes += buffer[..<count]
            guard bytes.count <= 1 << 20 else { throw Failure(description: "\(path): larger than 1 MiB") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw Failure(description: "\(path): not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    static func parse(_ text: String, path: String) throws(Failure) -> ConfigurationFile {
        var sections: [Section] = []
        // Lines end in LF or CRLF ("\r\n" is one Character, a newline).
        for (index, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = index + 1
            let content = Self.trimmed(Self.strippingComment(rawLine))
            func fail(_ message: String) -> Failure { Failure(description: "\(path):\(line): \(message)") }
            if content.isEmpty { continue }
            if content.hasPrefix("[") {
                guard content.hasSuffix("]") else { throw fail("a section header is [NAME]") }
                let name = Self.trimmed(content.dropFirst().dropLast())
                if let problem = Self.problem(withDeviceName: name) { throw fail("[\(name)]: \(problem)") }
                if let earlier = sections.first(where: { $0.name == name }) {
                    throw fail("[\(name)] again (first on line \(earlier.line))")
                }
                sections.append(Section(name: name, line: line))
                continue
            }
            guard let equals = content.firstIndex(of: "=") else {
                throw fail("expected [NAME] or KEY = VALUE, got '\(content)'")
            }
            let key = Self.trimmed(content[..<equals])
            let value = Self.trimmed(content[content.index(after: equals)...])
            guard !sections.isEmpty else {
                throw fail("'\(key)' before the first [NAME]: every key belongs to a device")
            }
            guard serveKeys[key] != nil || BootAction.keys.contains(key) else {
                let hint = key.hasPrefix("--") ? " (write it without the dashes)" : ""
                throw fail(
                    "unknown key '\(key)'\(hint): a `znbd serve` option (znbd serve --help) or one of \(BootAction.keys.joined(separator: ", "))"
                )
            }
            if let earlier = sections[sections.count - 1].entry(key) {
                throw fail("'\(key)' again in [\(sections[sections.count - 1].name)] (first on line \(earlier.line))")
            }
            if case .flag = serveKeys[key], !["yes", "no", "true", "false"].contains(value) {
                throw fail("\(key) = \(value): yes or no")
            }
            sections[sections.count - 1].entries.append(Entry(key: key, value: value, line: line))
        }
        return ConfigurationFile(path: path, sections: sections)
    }

    /// A device's name is a file name and a systemd instance name: letters,
    /// digits, `_`, `.` and `-`, not first a `.` or `-`, at most 64 bytes.
    static func problem(withDeviceName name: String) -> String? {
        if name.isEmpty { return "a device needs a name" }
        if name.utf8.count > 64 { return "at most 64 bytes" }
        let allowed = name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")
        }
        if !allowed { return "a device name takes letters, digits, '_', '.' and '-' only" }
        if name.hasPrefix(".") || name.hasPrefix("-") { return "a device name does not start with '.' or '-'" }
        return nil
    }

    /// The section `name`.
    func section(named name: String) throws(Failure) -> Section {
        guard let section = sections.first(where: { $0.name == name }) else {
            let known =
                sections.isEmpty ? "it declares none" : "it declares " + sections.map(\.name).joined(separator: ", ")
            throw Failure(description: "\(path): no device [\(name)]: \(known)")
        }
        return section
    }

    /// The section's `znbd serve` options as command-line arguments, in
    /// the file's order. Boot-action keys are not the daemon's and are left
    /// out; a flag set to no is its --no- form, so the command line can
    /// still turn it either way.
    static func serveArguments(of section: Section) -> [String] {
        section.entries.flatMap { entry -> [String] in
            switch serveKeys[entry.key] {
            // --key=value: a value that starts with a dash stays a value.
            case .value?: return ["--\(entry.key)=\(entry.value)"]
            case .flag?: return ["yes", "true"].contains(entry.value) ? ["--\(entry.key)"] : ["--no-\(entry.key)"]
            case nil: return []
            }
        }
    }

    /// Where device `name` serves unless its section sets `socket`: the
    /// runtime directory, NAME.sock (its control socket NAME-control.sock
    /// beside it, where `znbdctl list` finds it).
    static func defaultSocket(forDevice name: String, userID: UInt32, environment: [String: String]) -> String {
        ControlPaths.runtimeDirectory(userID: userID, environment: environment) + "/\(name).sock"
    }

    private static func trimmed(_ text: Substring) -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        return String(text.drop(while: blank).reversed().drop(while: blank).reversed())
    }

    /// `#` starts a comment anywhere on a line (no value needs one).
    private static func strippingComment(_ line: Substring) -> Substring {
        line.firstIndex(of: "#").map { line[..<$0] } ?? line
    }
}

/// `znbd serve --device NAME [--config FILE]`: the section's options put
/// in front of the command line's, so that the command line wins (the last
/// of a repeated option is the one ArgumentParser keeps).
struct ConfiguredDevice: Sendable, CustomStringConvertible {
    let path: String
    let name: String

    var description: String { "\(path) [\(name)]" }

    /// Expands `arguments` (without the program's name) in place when they
    /// serve a device of a configuration file; returns which one.
    static func expand(_ arguments: inout [String]) throws(ConfigurationFile.Failure) -> ConfiguredDevice? {
        // `znbd serve …`, or options alone (serve is the default command).
        let start: Int
        if arguments.first == "serve" {
            start = 1
        } else if let first = arguments.first, !first.hasPrefix("-") {
            return nil
        } else {
            start = 0
        }
        func value(of option: String) -> String? {
            var found: String?
            var index = start
            while index < arguments.count {
                let argument = arguments[index]
                if argument == option, index + 1 < arguments.count {
                    found = arguments[index + 1]
                    index += 1
                } else if argument.hasPrefix(option + "=") {
                    found = String(argument.dropFirst(option.count + 1))
                }
                index += 1
            }
            return found
        }
        let config = value(of: "--config")
        guard let name = value(of: "--device") else {
            if config != nil {
                throw ConfigurationFile.Failure(
                    description: "--config names the file --device reads: give --device NAME too")
            }
            return nil
        }
        let path = config ?? ConfigurationFile.defaultPath
        let section = try ConfigurationFile.read(path).section(named: name)
        arguments.insert(contentsOf: ConfigurationFile.serveArguments(of: section), at: start)
        return ConfiguredDevice(path: path, name: name)
    }
}
