import Foundation
import Testing
import ZNBDFigures
import TestSupport
import ZNBDControlAPI

@Suite("znbd gives memory back on its own", .serialized)
struct MemoryReturnTests {
    static func stats(_ daemon: DaemonProcess) throws -> StatsDocument {
        let result = try daemon.znbdctl(["stats", "--json"])
        guard result.status == 0 else { throw DaemonProcess.Failure(description: "znbdctl: \(result.standardError)") }
        return try JSONDecoder().decode(StatsDocument.self, from: Data(result.standardOutput.utf8))
    }

    @Test("with the defaults, a large discard is followed within seconds by lower mem_used_total and RSS, no command")
    func memoryBackAfterDiscard() async throws {
        try await withDaemon(["--size", "512M"]) { daemon in
            let corpus = try Corpus.pages(128 << 8)
            let client = try LibNBDClient(uri: daemon.uri)
            for offset in stride(from: 0, to: corpus.bytes.count, by: 4 << 20) {
                try client.write(Array(corpus.bytes[offset..<offset + (4 << 20)]), at: offset)
            }
            let written = try Self.stats(daemon)
            #expect(written.maintenance.compaction == "auto" && written.maintenance.migration == "auto")
            // Every other page: each zspage loses about half its objects and
            // keeps its frames, as after deleting many small files.
            for offset in stride(from: 0, to: corpus.bytes.count, by: 8192) {
                try client.trim(count: 4096, at: offset)
            }
            let trimmed = try Self.stats(daemon)
            let start = ContinuousClock.now
            var settled = trimmed
            while ContinuousClock.now - start < .seconds(10) {
                try await Task.sleep(for: .milliseconds(250))
                settled = try Self.stats(daemon)
                if settled.maintenance.totals[.passes, "discard"] > 0,
                    Double(settled.device[.memUsedTotal]) <= 1.1 * Double(settled.device[.comprDataSize])
                {
                    break
                }
            }
            let elapsed = ContinuousClock.now - start
            print(
                "memoryBackAfterDiscard: compressed \(written.device[.comprDataSize]) -> "
                    + "\(settled.device[.comprDataSize]); mem_used_total \(written.device[.memUsedTotal]) -> "
                    + "\(trimmed.device[.memUsedTotal]) after the trims -> \(settled.device[.memUsedTotal]) after "
                    + "\(elapsed); RSS \(written.process[.rssBytes]) -> \(trimmed.process[.rssBytes]) -> "
                    + "\(settled.process[.rssBytes]); passes \(settled.maintenance.totals.values(of: .passes))")
            #expect(settled.maintenance.totals[.passes, "discard"] > 0, "no discard pass within 10 s")
            #expect(
                Double(settled.device[.memUsedTotal]) <= 1.1 * Double(settled.device[.comprDataSize]),
                "mem_used_total \(settled.device[.memUsedTotal]) for \(settled.device[.comprDataSize]) compressed")
            let freed = trimmed.device[.memUsedTotal] - settled.device[.memUsedTotal]
            #expect(freed > 0)
            // The pool's frames went back to the kernel too, not only to the
            // pool: RSS fell by at least most of what the pool let go.
            if ProcessInfo.processInfo.environment["ZNBD_SANITIZER"] == nil {
                #expect(
                    trimmed.process[.rssBytes] - settled.process[.rssBytes] >= freed * 3 / 4,
                    "RSS \(trimmed.process[.rssBytes]) -> \(settled.process[.rssBytes]) while the pool freed \(freed)")
            }
            #expect(settled.maintenance.totals[.blocksReleased] > 0 && settled.maintenance.totals[.pagesCompacted] > 0)
            // Nothing was lost on the way.
            var expected = corpus.bytes
            for offset in stride(from: 0, to: expected.count, by: 8192) {
                expected.replaceSubrange(offset..<offset + 4096, with: repeatElement(0, count: 4096))
            }
            for offset in stride(from: 0, to: expected.count, by: 4 << 20) {
                let read = try client.read(count: 4 << 20, at: offset)
                #expect(firstDifference(read, expected[offset..<offset + (4 << 20)]) == nil, "at \(offset)")
            }
        }
    }
}
