public import Foundation
public import ZNBDSystem

/// Real-world test data: the first bytes of a tar stream of the system's own
/// libraries, documentation and programs, the mix of text, code and binary
/// data a compressed RAM disk sees.
///
/// The stream is built once per machine into a cache file (in
/// `ZNBD_CORPUS_DIR`, or the temporary directory) and reused by later runs.
public enum Corpus {
    public struct BuildError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The directories tar reads, in order.
    public static let sourceDirectories = ["/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/bin"]

    /// The path of a cached corpus of exactly `byteCount` bytes, building it if needed.
    public static func file(byteCount: Int) throws -> URL {
        let directory =
            ProcessInfo.processInfo.environment["ZNBD_CORPUS_DIR"]
            ?? FileManager.default.temporaryDirectory.path
        let url = URL(fileURLWithPath: directory).appendingPathComponent("znbd-corpus-\(byteCount).tar")
        if let size = try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int, size == byteCount {
            return url
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Build under a unique name and rename, so parallel test processes never
        // read a half-written corpus.
        let partial = url.path + ".\(getpid()).partial"
        let dirs = sourceDirectories.filter { FileManager.default.fileExists(atPath: $0) }
            .joined(separator: " ")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "tar cf - \(dirs) 2>/dev/null | head -c \(byteCount) > '\(partial)'"]
        try process.run()
        process.waitUntilExit()
        let size = (try? FileManager.default.attributesOfItem(atPath: partial)[.size] as? Int) ?? 0
        guard size == byteCount else {
            try? FileManager.default.removeItem(atPath: partial)
            throw BuildError(description: "corpus: tar of \(dirs) gave \(size) bytes, wanted \(byteCount)")
        }
        _ = try? FileManager.default.removeItem(at: url)
        try FileManager.default.moveItem(atPath: partial, toPath: url.path)
        return url
    }

    /// The first `count` pages of the corpus, as one flat byte array.
    public static func pages(_ count: Int, pageSize: Int = ZNBDSystem.pageSize) throws -> PageArray {
        let url = try file(byteCount: count * pageSize)
        return PageArray(bytes: [UInt8](try Data(contentsOf: url)), pageSize: pageSize)
    }
}

/// Pages stored back to back in one array.
public struct PageArray: Sendable {
    public let bytes: [UInt8]
    public let pageSize: Int

    public init(bytes: [UInt8], pageSize: Int = ZNBDSystem.pageSize) {
        precondition(bytes.count % pageSize == 0)
        self.bytes = bytes
        self.pageSize = pageSize
    }

    public var count: Int { bytes.count / pageSize }

    public subscript(index: Int) -> ArraySlice<UInt8> {
        bytes[index * pageSize..<(index + 1) * pageSize]
    }
}
