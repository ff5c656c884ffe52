import ArgumentParser
import NBDAttach
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

/// `znbdctl attach /dev/nbdN`: the kernel's NBD driver attached to a znbd
/// and kept attached while the daemon restarts, as nbd-client does without
/// `-persist` working in its netlink mode (Debian 12's 3.24). Runs in the
/// foreground until SIGTERM or SIGINT, then detaches the device.
struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach /dev/nbdN to a znbd and keep it attached across the daemon's restarts (root).",
        discussion: """
            Negotiates CONNECTIONS sockets with the daemon and hands them to the kernel's NBD driver over its \
            netlink interface, then stays: when the daemon goes away (a restart, an upgrade, a crash) the kernel \
            holds the device's requests for up to --dead-timeout seconds, and this command hands it new \
            connections to whatever daemon serves the socket again (the same state directory). SIGTERM or \
            SIGINT detaches the device and exits. With systemd it reports READY=1 once the device is attached. \
            If this process is killed instead, the device stays attached with nobody to replace its connections; \
            a new `znbdctl attach --take-over` for the same device takes it over.
            """)

    @Argument(help: ArgumentHelp("The NBD device to attach.", valueName: "/dev/nbdN"))
    var nbdDevice: String

    @Option(
        help: ArgumentHelp(
            "znbd's NBD socket (default: /run/znbd/nbd.sock for root, else $XDG_RUNTIME_DIR/znbd/nbd.sock).",
            valueName: "path"))
    var socket: String?

    /// --device NAME picks the daemon of /etc/znbd/znbd.conf's section
    /// NAME, as for every subcommand: here its NBD socket, NAME.sock.
    @OptionGroup var options: ControlOptions

    @Option(help: ArgumentHelp("The export name (default: the default export).", valueName: "name"))
    var name = ""

    @Option(help: ArgumentHelp("Connections to open, as nbd-client's -C (1 to 16).", valueName: "n"))
    var connections = 1

    @Option(
        help: ArgumentHelp(
            "Seconds the kernel holds requests while the daemon is away, before it fails them (1 to 86400).",
            valueName: "seconds"))
    var deadTimeout = 120

    @Option(
        help: ArgumentHelp(
            "Seconds before the kernel looks again at a request the daemon has not answered (1 to 3600).",
            valueName: "seconds"))
    var timeout = 30

    @Flag(
        name: .customLong("take-over"),
        help: ArgumentHelp(
            "When the device is attached already (an earlier znbdctl attach was killed), take it over: replace its dead connections and stay, instead of failing. Only for a device that is this daemon's: the kernel cannot say which server it was attached to, only its size is checked."
        ))
    var takeOver = false

    func validate() throws {
        guard index != nil else { throw ValidationError("\(nbdDevice): not an NBD device (/dev/nbdN)") }
        guard socket == nil || options.device == nil else { throw ValidationError("--socket and --device: give one") }
        guard (1...16).contains(connections) else { throw ValidationError("--connections must be 1 to 16") }
        guard (1...86_400).contains(deadTimeout) else { throw ValidationError("--dead-timeout must be 1 to 86400") }
        guard (1...3600).contains(timeout) else { throw ValidationError("--timeout must be 1 to 3600") }
    }

    private var index: Int? {
        guard nbdDevice.hasPrefix("/dev/nbd"), let number = Int(nbdDevice.dropFirst("/dev/nbd".count)),
            number >= 0
        else { return nil }
        return number
    }

    func run() throws {
        let environment = ProcessInfo.processInfo.environment
        let directory = ControlPaths.runtimeDirectory(userID: getuid(), environment: environment)
        let socketPath =
            socket ?? options.device.map { "\(directory)/\($0).sock" }
            ?? ControlPaths.defaultNBDSocket(userID: getuid(), environment: environment)
        let attachment = KernelAttachment(
            AttachRequest(
                socketPath: socketPath, export: name, index: index ?? 0, connections: connections,
                requestTimeout: timeout, deadConnectionTimeout: deadTimeout, takeOver: takeOver))
        // Before the device exists, so that a signal never leaves it attached
        // behind an exited process.
        for stop in [SIGTERM, SIGINT] { signal(stop) { _ in KernelAttachment.requestStop() } }
        do {
            try attachment.run(
                attached: {
                    let size = ByteSize.format(Int(attachment.exportSize))
                    printError(
                        "znbdctl: attached \(nbdDevice) to \(socketPath) (\(size), \(connections) connection\(connections == 1 ? "" : "s")); kept attached across the daemon's restarts until SIGTERM"
                    )
                    ServiceManager.notify("READY=1\nSTATUS=\(nbdDevice) attached to \(socketPath)")
                },
                log: { line in printError("znbdctl: \(line)") })
        } catch {
            throw AttachFailure(error)
        }
    }
}

/// An attach that failed: 69 when no daemon answers on the socket, 77
/// without the privilege, else 1.
struct AttachFailure: CommandLineFailure {
    let description: String
    let exitCode: Int32

    init(_ error: AttachError) {
        description = error.description
        exitCode =
            switch error.code {
            case ECONNREFUSED, ENOENT: 69
            case EPERM, EACCES: 77
            default: 1
            }
    }
}
