import Foundation
import Testing
import TestSupport

/// The Debian package as a user gets it: tools/package builds it, installs
/// it with apt-get, runs the installed binaries with no toolchain on PATH,
/// serves and copies data through a device, and purges it (the script
/// purges on any failure or timeout too).
@Suite("The Debian package", .serialized)
struct PackageTests {
    static let missing: String? = {
        if getuid() != 0 { return "the package test installs a .deb: needs root; uid \(getuid())" }
        for tool in ["/usr/bin/apt-get", "/usr/bin/dpkg-deb", "/usr/bin/nbdcopy"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            return "the package test needs \(tool) (tools/setup installs it); not run"
        }
        // Not on a machine where someone installed znbd: the check would
        // replace the package and then purge it.
        if (try? runCommand(["dpkg", "-s", "znbd"], timeout: 30).status) == 0 {
            return "a znbd package is installed on this machine; the package test would replace and purge it; not run"
        }
        return nil
    }()

    @Test(
        "tools/package --check: the .deb installs with apt-get, its znbd serves with no toolchain, and it purges clean",
        .enabled(if: missing == nil, "\(missing ?? "")"))
    func installServePurge() throws {
        // The static-runtime build takes minutes the first time (NIO and
        // the rest again, in .build-static).
        let result = try runCommand([repositoryRoot.appending(path: "tools/package").path, "--check"], timeout: 1500)
        print(result.standardOutput.split(separator: "\n").filter { $0.hasPrefix("package:") }.joined(separator: "\n"))
        if result.timedOut {
            // Killed before its own purge: the package it installed goes here.
            _ = try? runCommand(["apt-get", "purge", "-y", "-qq", "znbd"], timeout: 120)
        }
        #expect(!result.timedOut && result.status == 0, "\(result.standardOutput)\n\(result.standardError)")
        #expect(result.standardOutput.contains("package: check: passed"), "\(result.standardOutput)")
    }
}
