// ZNBDCommandLine: how both executables fail: one line on stderr and an
// exit status of sysexits.h, never a stack trace (OneLineErrors.swift); the
// release number both report (Version.swift); READY=1, STATUS and
// STOPPING=1 to systemd for the long-running ones (ServiceManager.swift:
// the daemon, znbdctl attach).

public import ArgumentParser

#if canImport(Glibc)
    import Glibc
#endif

/// An error a command reports as one line, with an exit code of its own
/// (sysexits.h: 64 usage, 69 unavailable, 76 protocol, 77 permission).
public protocol CommandLineFailure: Error, CustomStringConvertible {
    var exitCode: Int32 { get }
}

extension ParsableCommand {
    /// Parses and runs the command line. Every failure is one line on
    /// stderr, "NAME: what went wrong", and an exit code: a
    /// CommandLineFailure's own, 64 for bad usage (ArgumentParser's), 1 for
    /// anything else. --help prints help and exits 0. No stack trace, ever.
    public static func mainWithOneLineErrors(helpHint: String) async {
        await runWithOneLineErrors(parseWithOneLineErrors(helpHint: helpHint), helpHint: helpHint)
    }

    /// The first half of `mainWithOneLineErrors`: parses the command line,
    /// or exits as it describes. Synchronous, so a caller on the main thread
    /// stays there (znbd applies per-thread settings before any thread).
    /// `arguments` are the command line's unless given (without the
    /// program's name); `context` is added to a failure's line (where
    /// arguments that were not typed came from).
    public static func parseWithOneLineErrors(
        _ arguments: [String]? = nil, helpHint: String, context: String? = nil
    ) -> any ParsableCommand {
        do {
            return try parseAsRoot(arguments)
        } catch {
            exitWithOneLineError(error, helpHint: helpHint, context: context)
        }
    }

    /// The second half: runs a parsed command, exiting as described above
    /// when it throws.
    public static func runWithOneLineErrors(_ command: any ParsableCommand, helpHint: String) async {
        var command = command
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exitWithOneLineError(error, helpHint: helpHint)
        }
    }

    /// Prints `error` as one line (or the help it asks for) and exits.
    public static func exitWithOneLineError(_ error: any Error, helpHint: String, context: String? = nil) -> Never {
        let name = configuration.commandName ?? "\(Self.self)"
        if let failure = error as? any CommandLineFailure {
            printErrorLine("\(name): \(failure.description)")
            Glibc.exit(failure.exitCode)
        }
        if let exitCode = error as? ExitCode { Glibc.exit(exitCode.rawValue) }
        let code = exitCode(for: error)
        if code == .success { exit(withError: error) }  // --help
        let origin = context.map { " (\($0))" } ?? ""
        printErrorLine("\(name): \(oneLine(message(for: error)))\(origin) (see \(helpHint))")
        Glibc.exit(code.rawValue)
    }
}

/// ArgumentParser's message on one line: its lines joined by "; ", and a
/// list of choices ("- trace", "- debug", ...) as "trace, debug, ...".
func oneLine(_ message: String) -> String {
    var parts: [String] = []
    var choices: [String] = []
    func endChoices() {
        guard !choices.isEmpty else { return }
        let list = choices.joined(separator: ", ")
        if parts.isEmpty { parts.append(list) } else { parts[parts.count - 1] += " " + list }
        choices.removeAll()
    }
    for line in message.split(whereSeparator: \.isNewline) {
        let text = line.drop(while: { $0 == " " || $0 == "\t" })
        if text.hasPrefix("- ") {
            choices.append(String(text.dropFirst(2)))
        } else if !text.isEmpty {
            endChoices()
            parts.append(String(text))
        }
    }
    endChoices()
    return parts.joined(separator: "; ")
}

private func printErrorLine(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
