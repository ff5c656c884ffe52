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
        let name = configuration.commandName ?? "\(Self.self)"
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let failure as any CommandLineFailure {
            printErrorLine("\(name): \(failure.description)")
            Glibc.exit(failure.exitCode)
        } catch {
            if let exitCode = error as? ExitCode { Glibc.exit(exitCode.rawValue) }
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }  // --help
            let message = message(for: error).split(whereSeparator: \.isNewline).joined(separator: "; ")
            printErrorLine("\(name): \(message) (see \(helpHint))")
            Glibc.exit(code.rawValue)
        }
    }
}

private func printErrorLine(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
