// znbdctl: figures and control of a running znbd, as zramctl and
// /sys/block/zramN are for zram, and the kernel attach helper. Links
// ZNBDControlAPI, ZNBDFigures and NBDAttach, and no part of the device.
//
// THE MAP
//   ZNBDCtl.swift        the subcommands, and how each prints its document
//                        (this file)
//   ControlClient.swift  one HTTP/1.1 request over the control socket, and
//                        what each failure means for the exit status
//   Attach.swift         `attach`: /dev/nbdN kept attached across the
//                        daemon's restarts (NBDAttach)

import ArgumentParser
import NIOCore
import NIOHTTP1
import ZNBDCommandLine
import ZNBDControlAPI

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// znbdctl: figures and control of a running znbd, through its control
/// socket. Every failure is one line on stderr: 64 for bad usage, 69 when no
/// daemon answers, 76 when something else answers, 77 for permission, 1 when
/// the daemon refuses the request.
@main
struct ZNBDCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "znbdctl",
        abstract: "Figures and control of a running znbd (as zramctl and /sys/block/zramN are for zram).",
        version: "znbdctl \(ZNBDVersion.number)",
        subcommands: [
            Stats.self, List.self, Classes.self, Frames.self, Compact.self, Idle.self, Recompress.self, MemLimit.self,
            Attach.self,
        ])

    // Declared here too, so that --control may come before the subcommand.
    @OptionGroup var options: ControlOptions

    static func main() async {
        await mainWithOneLineErrors(helpHint: "znbdctl --help")
    }
}

/// --control or --device, accepted before or after the subcommand.
struct ControlOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "znbd's control socket (default: /run/znbd/nbd-control.sock for root, else $XDG_RUNTIME_DIR/znbd/nbd-control.sock).",
            valueName: "path"))
    var control: String?

    @Option(
        help: ArgumentHelp(
            "The device NAME of /etc/znbd/znbd.conf: its control socket, NAME-control.sock in the same directory.",
            valueName: "name"))
    var device: String?

    func validate() throws {
        if control != nil && device != nil {
            throw ValidationError("--control and --device both name a daemon: give one")
        }
    }

    var client: ControlClient {
        let environment = ProcessInfo.processInfo.environment
        let directory = ControlPaths.runtimeDirectory(userID: getuid(), environment: environment)
        return ControlClient(
            socketPath: control
                ?? device.map { "\(directory)/\($0)-control.sock" }
                ?? ControlPaths.defaultControlSocket(userID: getuid(), environment: environment))
    }

    /// GET or send `path`, and decode the 200 answer as `Document`.
    func fetch<Document: Decodable>(
        _ type: Document.Type, _ method: HTTPMethod = .GET, _ path: String, body: [UInt8] = [],
        timeout: TimeAmount = .seconds(30)
    ) async throws -> (document: Document, body: [UInt8]) {
        try await client.fetch(type, method, path, body: body, timeout: timeout)
    }

    /// Fetches a document and prints it: as the daemon sent it with
    /// `json`, else through `view`.
    func show<Document: Decodable>(
        _ type: Document.Type, _ method: HTTPMethod, _ path: String, body: [UInt8] = [],
        timeout: TimeAmount = .seconds(30), json: Bool, view: (Document) -> String
    ) async throws {
        let (document, body) = try await fetch(type, method, path, body: body, timeout: timeout)
        printOut(json ? String(decoding: body, as: UTF8.self) : view(document))
    }
}

func printOut(_ text: String) { writeAll(text, to: STDOUT_FILENO) }

/// A line on stderr that is not the command's failure (that is one line
/// too, written by ZNBDCommandLine at exit).
func printError(_ line: String) { writeAll(line + "\n", to: STDERR_FILENO) }

private func writeAll(_ text: String, to descriptor: Int32) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { return }
            offset += written
        }
    }
}

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The device's figures: a zramctl-style table, --json, or --raw (mm_stat's line).")

    @OptionGroup var options: ControlOptions

    @Flag(help: "The whole /v1/stats JSON object (mm_stat and io_stat fields under zram's names, pool, NBD, RSS).")
    var json = false

    @Flag(help: "The nine mm_stat figures in the kernel's order, as /sys/block/zramN/mm_stat prints them.")
    var raw = false

    // A string, so that a refusal quotes what was typed ("0", not "0.0").
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Print again every SECONDS (0.1 to 86400) until interrupted.", valueName: "seconds"))
    var watch: String?

    /// --watch in seconds, checked by validate().
    var interval: Double? { watch.flatMap(Double.init) }

    @Flag(help: "After the table: the codecs, the maintenance thread's settings, and every figure under its JSON key.")
    var details = false

    func validate() throws {
        if json && raw { throw ValidationError("--json and --raw: choose one") }
        if details && (json || raw) { throw ValidationError("--details goes with the table, not --json or --raw") }
        if let watch, !(interval.map { $0 >= 0.1 && $0 <= 86_400 } ?? false) {
            throw ValidationError("--watch \(watch): must be 0.1 to 86400 seconds")
        }
    }

    func run() async throws {
        let clearScreen = interval != nil && !json && !raw && isatty(STDOUT_FILENO) == 1
        while true {
            let (stats, body) = try await options.fetch(StatsDocument.self, .GET, "/v1/stats")
            let text =
                json
                ? String(decoding: body, as: UTF8.self)
                : raw
                    ? TextViews.mmStatLine(stats)
                    : TextViews.statsTable(stats) + (details ? "\n" + TextViews.details(stats) : "")
            printOut((clearScreen ? "\u{1B}[H\u{1B}[2J" : "") + text)
            guard let interval else { return }
            try await Task.sleep(for: .seconds(interval))
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Every znbd running in a directory, one row each (as zramctl with no arguments lists every zram device).")

    @Option(
        help: ArgumentHelp(
            "Where to look for control sockets, *-control.sock (default: /run/znbd for root, else $XDG_RUNTIME_DIR/znbd).",
            valueName: "dir"))
    var directory: String?

    @Flag(help: "A JSON array of the daemons' /v1/stats objects.")
    var json = false

    func run() async throws {
        let directory =
            self.directory
            ?? ControlPaths.runtimeDirectory(userID: getuid(), environment: ProcessInfo.processInfo.environment)
        let sockets = try ControlPaths.controlSockets(in: directory)
        var rows: [(stats: StatsDocument, body: [UInt8])] = []
        for socket in sockets {
            do {
                let (stats, body) = try await ControlClient(socketPath: socket).fetch(
                    StatsDocument.self, .GET, "/v1/stats", timeout: .seconds(5))
                rows.append((stats, body))
            } catch {
                // A daemon that stopped and left its socket, or another
                // user's: said on stderr, the others still listed.
                printError("znbdctl: list: \(socket): \(error)")
            }
        }
        if json {
            printOut("[" + rows.map { String(decoding: $0.body, as: UTF8.self) }.joined(separator: ",") + "]\n")
        } else if rows.isEmpty {
            printError("znbdctl: list: no znbd answers in \(directory)")
        } else {
            printOut(TextViews.statsTable(rows.map(\.stats), listing: true))
        }
    }
}

struct Classes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The pool's size classes, as zsmalloc's debugfs classes file.")

    @OptionGroup var options: ControlOptions

    @Flag(help: "Every class, not only those in use.")
    var all = false

    @Flag(help: "The /v1/classes JSON.")
    var json = false

    func run() async throws {
        try await options.show(ClassesDocument.self, .GET, "/v1/classes", json: json) {
            TextViews.classesTable($0.classes, all: all)
        }
    }
}

struct Frames: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The arena's frames: free runs by order (as /proc/buddyinfo) and block occupancy.")

    @OptionGroup var options: ControlOptions

    @Flag(help: "The /v1/frames JSON.")
    var json = false

    func run() async throws {
        try await options.show(FramesDocument.self, .GET, "/v1/frames", json: json, view: TextViews.framesView)
    }
}

struct Compact: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compact the pool and give emptied blocks back to the OS now (zram's compact, plus migration).")

    @OptionGroup var options: ControlOptions

    @Flag(help: "The /v1/compact JSON.")
    var json = false

    func run() async throws {
        try await options.show(CompactDocument.self, .POST, "/v1/compact", json: json, view: TextViews.compactSummary)
    }
}

struct Idle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mark stored pages idle, as zram's idle attribute: all, or those not read or written for SECONDS.")

    @OptionGroup var options: ControlOptions

    @Argument(
        help: ArgumentHelp(
            "Only pages not accessed for this many seconds; omit (or all) for every page.",
            valueName: "seconds"))
    var age: String?

    @Flag(help: "The /v1/idle JSON.")
    var json = false

    func validate() throws {
        if let age, age != "all", Int(age).map({ $0 < 0 }) ?? true {
            throw ValidationError("idle \(age): a number of seconds, or all")
        }
    }

    func run() async throws {
        try await options.show(
            IdleDocument.self, .POST, "/v1/idle", body: Array((age ?? "all").utf8), json: json,
            view: TextViews.idleLine)
    }
}

struct Recompress: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Store pages again with the recompression codec (znbd --recompress-algorithm), as zram's recompress.")

    @OptionGroup var options: ControlOptions

    @Option(
        help: ArgumentHelp(
            "Which pages: idle (marked with znbdctl idle), huge (stored raw), huge_idle, or all.",
            valueName: "type"))
    var type = "all"

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Only pages stored in at least this many bytes (zram's threshold).", valueName: "bytes"))
    var threshold: Int?

    @Option(
        name: .customLong("max-pages"), parsing: .unconditional,
        help: ArgumentHelp("Stop after compressing this many pages again.", valueName: "n"))
    var maxPages: Int?

    @Flag(help: "The /v1/recompress JSON.")
    var json = false

    func validate() throws {
        guard ["idle", "huge", "huge_idle", "all"].contains(type) else {
            throw ValidationError("--type \(type): idle, huge, huge_idle or all")
        }
        if let threshold, threshold <= 0 { throw ValidationError("--threshold \(threshold): must be positive") }
        if let maxPages, maxPages <= 0 { throw ValidationError("--max-pages \(maxPages): must be positive") }
    }

    func run() async throws {
        var body = "type=\(type)"
        if let threshold { body += " threshold=\(threshold)" }
        if let maxPages { body += " max_pages=\(maxPages)" }
        // A run over a large device takes minutes (zstd compresses some
        // 40,000 pages a second per core); it is not cut short here.
        try await options.show(
            RecompressDocument.self, .POST, "/v1/recompress", body: Array(body.utf8),
            timeout: .hours(24), json: json, view: TextViews.recompressSummary)
    }
}

struct MemLimit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mem-limit",
        abstract: "Show or set the cap on pool memory, as zram's mem_limit (0 lifts it).")

    @OptionGroup var options: ControlOptions

    @Argument(help: ArgumentHelp("The new limit: 512M, 2G, bytes, or 0 for none; omit to show it.", valueName: "size"))
    var size: String?

    func run() async throws {
        let document: MemLimitDocument
        if let size {
            let bytes: Int
            do {
                bytes = try ByteSize.parse(size)
            } catch {
                throw ValidationError("mem-limit \(size): \(error)")  // usage: exit 64
            }
            document = try await options.fetch(
                MemLimitDocument.self, .PUT, "/v1/mem-limit",
                body: Array("{\"mem_limit\": \(bytes)}".utf8)
            ).document
        } else {
            document = try await options.fetch(MemLimitDocument.self, .GET, "/v1/mem-limit").document
        }
        printOut(TextViews.memLimitLine(document))
    }
}
