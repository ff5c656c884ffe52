import Foundation
import NBD
import PageCodec
import Testing
import TestSupport
import ZNBDControlAPI

/// Known data for the figures test: zero pages, English-like text, random bytes.
struct KnownData {
    static let zeroPages = 100
    static let textPages = 200
    static let randomPages = 50

    let text: [UInt8]
    let random: [UInt8]

    init(seed: UInt64) {
        var generator = SeededRandom(seed: seed)
        let words = [
            "the", "compressed", "page", "is", "stored", "in", "a", "zspage", "of", "frames", "and",
            "discard", "frees", "its", "handle", "at", "once", "while", "compaction", "moves", "objects",
        ]
        var text: [UInt8] = []
        while text.count < Self.textPages * 4096 {
            text += Array(words[Int(generator.next() % UInt64(words.count))].utf8) + [UInt8(ascii: " ")]
        }
        self.text = Array(text.prefix(Self.textPages * 4096))
        random = generator.bytes(Self.randomPages * 4096)
    }

    /// zram's accounting: each text page's LZO1X-1 length, 4096 per raw page.
    func expectedComprDataSize() throws -> Int {
        let codec = try LZO1X1Codec()
        var scratch = [UInt8](repeating: 0, count: codec.maxCompressedSize)
        var total = Self.randomPages * 4096
        for page in 0..<Self.textPages {
            let length = try text[page * 4096..<(page + 1) * 4096].withUnsafeBytes { bytes in
                try scratch.withUnsafeMutableBytes { try codec.compress(page: bytes, into: $0) }
            }
            #expect(length < 3264, "a text page must compress (got \(length))")
            total += length
        }
        return total
    }
}

@Suite("znbd and znbdctl: the built binaries, their figures and control", .serialized)
struct DaemonFiguresTests {
    @Test("figures match what was written: --json, --raw, the table, classes, frames, compact, /metrics")
    func figuresMatchWrites() async throws {
        let (_, seed) = SeededRandom.fromEnvironment()
        print("figuresMatchWrites seed \(seed)")
        let data = KnownData(seed: seed)
        try await withDaemon(["--size", "64M", "--name", "figures"]) { daemon in
            let client = try LibNBDClient(uri: "nbd+unix:///figures?socket=\(daemon.socketPath)")
            try client.write([UInt8](repeating: 0, count: KnownData.zeroPages * 4096), at: 0)
            try client.write(data.text, at: 1 << 20)
            try client.write(data.random, at: 4 << 20)
            try client.flush()
            #expect(try client.read(count: data.text.count, at: 1 << 20) == data.text)

            let json = try daemon.znbdctl(["stats", "--json"])
            #expect(json.status == 0, "\(json.standardError)")
            let object = try #require(
                try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any])
            for key in [
                "orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages",
                "pages_compacted", "huge_pages", "huge_pages_since", "rss_bytes",
            ] {
                #expect(object[key] is Int, "key \(key) in \(json.standardOutput.prefix(200))")
            }
            let stats = try JSONDecoder().decode(StatsDocument.self, from: Data(json.standardOutput.utf8))
            let pages = KnownData.zeroPages + KnownData.textPages + KnownData.randomPages
            #expect(stats.device[.origDataSize] == pages * 4096)
            #expect(stats.device[.samePages] == KnownData.zeroPages)
            #expect(stats.device[.hugePages] == KnownData.randomPages)
            #expect(stats.device[.comprDataSize] == (try data.expectedComprDataSize()))
            #expect(stats.device[.memUsedTotal] > 0 && stats.device[.memUsedTotal] < pages * 4096)
            #expect(stats.process[.rssBytes] > stats.device[.memUsedTotal])
            #expect(stats.export.name == "figures" && stats.export.sizeBytes == 64 << 20)
            #expect(stats.nbd.totals[.connectionsTotal] >= 1)
            #expect(stats.nbd.commands["write"]?.requests ?? 0 >= 3)
            #expect(stats.nbd.commands["write"]?.bytes == pages * 4096)

            let raw = try daemon.znbdctl(["stats", "--raw"])
            #expect(raw.status == 0)
            let lines = raw.standardOutput.split(separator: "\n")
            #expect(lines.count == 1)
            let figures = lines.first.map { $0.split(separator: " ").compactMap { Int($0) } } ?? []
            #expect(figures.count == 9 && raw.standardOutput.split(separator: " ").count == 9)
            #expect(figures == stats.mmStat, "raw \(raw.standardOutput)")
            #expect(
                Array(figures.prefix(3)) == [
                    stats.device[.origDataSize], stats.device[.comprDataSize], stats.device[.memUsedTotal],
                ])

            let table = try daemon.znbdctl(["stats"])
            #expect(table.status == 0)
            #expect(table.standardOutput.hasPrefix("NAME"))
            #expect(table.standardOutput.contains("figures") && table.standardOutput.contains("64M"))

            let classes = try daemon.znbdctl(["classes"])
            #expect(classes.status == 0 && classes.standardOutput.contains("obj_used"))
            let classesJSON = try daemon.znbdctl(["classes", "--json"])
            let document = try JSONDecoder().decode(ClassesDocument.self, from: Data(classesJSON.standardOutput.utf8))
            #expect(document.classes.reduce(0) { $0 + $1.objectsUsed } == KnownData.textPages + KnownData.randomPages)
            let frames = try daemon.znbdctl(["frames"])
            #expect(frames.status == 0 && frames.standardOutput.contains("free runs by order"))

            let compact = try daemon.znbdctl(["compact"])
            #expect(compact.status == 0, "\(compact.standardError)")
            #expect(
                compact.standardOutput.contains("compaction:") && compact.standardOutput.contains("migration:"))
            #expect(try client.read(count: data.random.count, at: 4 << 20) == data.random)

            try checkMetrics(daemon, stats: stats)
        }
    }

    /// /metrics through an independent parser (Debian's python3-prometheus-client).
    func checkMetrics(_ daemon: DaemonProcess, stats: StatsDocument) throws {
        let metrics = try daemon.curl("GET", "/metrics")
        #expect(metrics.status == 200)
        let script = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            samples = {}
            for family in text_string_to_metric_families(sys.stdin.read()):
                for sample in family.samples:
                    samples[sample.name + str(sorted(sample.labels.items()))] = sample.value
            print(len(samples))
            for key in ["znbd_same_pages[]", "znbd_orig_data_size_bytes[]", "znbd_huge_pages[]"]:
                print(int(samples[key]))
            """
        let file = daemon.directory.appendingPathComponent("metrics.txt")
        try metrics.body.write(to: file, atomically: true, encoding: .utf8)
        let parsed = try runCommand(["sh", "-c", "python3 -c '\(script)' < '\(file.path)'"])
        #expect(parsed.status == 0, "the Prometheus parser refused /metrics: \(parsed.standardError)")
        let values = parsed.standardOutput.split(separator: "\n").compactMap { Int($0) }
        #expect(values.count == 4)
        #expect(values.first ?? 0 > 50, "samples parsed: \(values.first ?? 0)")
        #expect(
            Array(values.dropFirst()) == [
                stats.device[.samePages], stats.device[.origDataSize], stats.device[.hugePages],
            ])
    }

    @Test(
        "codecs through the CLI: lz4 writes, zstd recompresses; znbdctl idle and recompress, the figures in stats, the table and /metrics"
    )
    func codecsThroughTheCLI() async throws {
        let data = KnownData(seed: 17)
        let arguments = [
            "--size", "64M", "--algorithm", "lz4", "--algorithm-params", "acceleration=2",
            "--recompress-algorithm", "zstd:7", "--recompress-idle-age", "off",
        ]
        try await withDaemon(arguments) { daemon in
            let client = try LibNBDClient(uri: daemon.uri)
            try client.write(data.text, at: 0)
            try client.write(data.random, at: 4 << 20)
            func stats() throws -> StatsDocument {
                let json = try daemon.znbdctl(["stats", "--json"])
                return try JSONDecoder().decode(StatsDocument.self, from: Data(json.standardOutput.utf8))
            }
            let before = try stats()
            #expect(before.compression.algorithm == "lz4" && before.compression.algorithmParams == "level=2")
            #expect(
                before.compression.recompressAlgorithm == "zstd"
                    && before.compression.recompressAlgorithmParams == "level=7")
            #expect(before.compression.pagesByAlgorithm["lz4"] == KnownData.textPages)
            #expect(before.device[.hugePages] == KnownData.randomPages)
            #expect(before.maintenance.recompressIdleAgeSeconds == nil)
            let table = try daemon.znbdctl(["stats", "--details"])
            #expect(
                table.standardOutput.split(separator: "\n").dropFirst().first?.contains(" lz4:2 ") == true,
                "\(table.standardOutput)")
            #expect(table.standardOutput.contains("recompression zstd:7"))

            let idle = try daemon.znbdctl(["idle"])
            #expect(
                idle.status == 0
                    && idle.standardOutput.hasPrefix("\(KnownData.textPages + KnownData.randomPages) pages marked idle"),
                "\(idle.standardOutput)")
            #expect(try daemon.znbdctl(["idle", "3600"]).standardOutput.hasPrefix("0 pages marked"))
            #expect(try client.read(count: 4096, at: 0) == Array(data.text.prefix(4096)))  // page 0: no longer idle

            let huge = try daemon.znbdctl(["recompress", "--type", "huge", "--json"])
            let hugeRun = try JSONDecoder().decode(RecompressDocument.self, from: Data(huge.standardOutput.utf8))
            #expect(
                hugeRun.result[.pagesTried] == KnownData.randomPages
                    && hugeRun.result[.pagesIncompressible] == KnownData.randomPages)
            let run = try daemon.znbdctl(["recompress", "--type", "idle", "--max-pages", "100"])
            #expect(run.status == 0 && run.standardOutput.contains("100 tried"), "\(run.standardOutput)")
            let rest = try daemon.znbdctl(["recompress", "--type", "idle", "--json"])
            let restRun = try JSONDecoder().decode(RecompressDocument.self, from: Data(rest.standardOutput.utf8))
            #expect(restRun.result[.pagesTried] == KnownData.textPages - 1 - 100 && restRun.result.finished == true)

            let after = try stats()
            let totals = after.compression.recompression
            #expect(totals[.pagesTried] == KnownData.randomPages + KnownData.textPages - 1)
            #expect(
                after.compression.pagesByAlgorithm["zstd"] == totals[.pagesRecompressed]
                    && totals[.pagesRecompressed] > 0)
            #expect(after.compression.pagesByAlgorithm["lz4"] == KnownData.textPages - totals[.pagesRecompressed])
            #expect(
                after.device[.comprDataSize] == before.device[.comprDataSize] - totals[.bytesBefore]
                    + totals[.bytesAfter])
            #expect(try client.read(count: data.text.count, at: 0) == data.text)
            #expect(try client.read(count: data.random.count, at: 4 << 20) == data.random)

            let metrics = try daemon.curl("GET", "/metrics").body
            #expect(metrics.contains("znbd_codec_info{role=\"recompression\",algorithm=\"zstd\",params=\"level=7\"} 1"))
            #expect(
                metrics.contains(
                    "znbd_recompression_pages_total{outcome=\"recompressed\"} \(totals[.pagesRecompressed])")
            )
            #expect(metrics.contains("znbd_pages_by_algorithm{algorithm=\"zstd\"} \(totals[.pagesRecompressed])"))

            let bad = try daemon.curl("POST", "/v1/recompress", body: "type=cold")
            #expect(bad.status == 400 && bad.body.contains("unknown type"))
        }
        // Without a recompression codec the daemon says what to start it with.
        try await withDaemon(["--size", "16M"]) { daemon in
            let refused = try daemon.znbdctl(["recompress"])
            #expect(
                refused.status == 1 && refused.standardError.contains("--recompress-algorithm"),
                "\(refused.standardError)")
        }
    }

    @Test(
        "mem-limit: a write past it fails with ENOSPC, keeps the old data and is warned about; lifting it lets writes in"
    )
    func memLimitThroughTheCLI() async throws {
        try await withDaemon(["--size", "64M"]) { daemon in
            let client = try LibNBDClient(uri: daemon.uri)
            var generator = SeededRandom(seed: 7)
            let first = generator.bytes(64 << 10)
            try client.write(first, at: 0)
            let set = try daemon.znbdctl(["mem-limit", "1M"])
            #expect(set.status == 0 && set.standardOutput.contains("mem_limit 1M"), "\(set.standardError)")
            let large = generator.bytes(4 << 20)
            #expect(throws: (any Error).self) { try client.write(large, at: 1 << 20) }
            #expect(try client.read(count: first.count, at: 0) == first)
            let stats = try JSONDecoder().decode(
                StatsDocument.self, from: Data(try daemon.znbdctl(["stats", "--json"]).standardOutput.utf8))
            #expect(stats.device[.memLimit] == 1 << 20)
            #expect(stats.device[.failedWrites] > 0)
            #expect(stats.device[.failedWritesNoSpace] == stats.device[.failedWrites])
            #expect(stats.nbd.commands["write"]?.errors["ENOSPC"] ?? 0 >= 1)
            // Said where an operator looks: below the table, and in the log
            // (checked once a second by the daemon).
            let table = try daemon.znbdctl(["stats"]).standardOutput
            #expect(table.contains("refused since the start: no pool memory left under mem_limit"), "\(table)")
            let deadline = ContinuousClock.now + .seconds(10)
            while !daemon.log.contains("writes refused with ENOSPC"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(
                daemon.log.contains("znbd warning: writes refused with ENOSPC: the pool is at its memory limit"),
                "\(daemon.log)")
            let lifted = try daemon.znbdctl(["mem-limit", "0"])
            #expect(lifted.status == 0 && lifted.standardOutput.contains("none"))
            try client.write(large, at: 1 << 20)
            #expect(try client.read(count: large.count, at: 1 << 20) == large)
        }
    }

    @Test("block sizes 1 / 4096 / 32M: libnbd, which enforces the minimum it agreed to, writes 100 bytes at 7")
    func byteGranularRequests() async throws {
        try await withDaemon(["--size", "16M"]) { daemon in
            let info = try runCommand(["nbdinfo", daemon.uri], timeout: 30)
            #expect(info.status == 0, "\(info.standardError)")
            #expect(info.standardOutput.contains("block_size_minimum: 1"), "\(info.standardOutput)")
            #expect(info.standardOutput.contains("block_size_preferred: 4096"))
            #expect(info.standardOutput.contains("block_size_maximum: 33554432"))
            let client = try LibNBDClient(uri: daemon.uri, strict: true, blockSizes: true)
            let bytes = [UInt8]((0..<100).map { UInt8($0) })
            try client.write([UInt8](repeating: 0xEE, count: 8192), at: 0)
            try client.write(bytes, at: 7)
            var expected = [UInt8](repeating: 0xEE, count: 8192)
            expected.replaceSubrange(7..<107, with: bytes)
            #expect(try client.read(count: 8192, at: 0) == expected)
            #expect(try client.read(count: 3, at: 4095) == [0xEE, 0xEE, 0xEE])
        }
    }

    @Test("znbdctl list: every daemon of a directory, one row each; a stale socket is said and skipped")
    func listEveryDaemon() async throws {
        try await withDaemon(["--size", "16M", "--name", "first"]) { first in
            let directory = first.directory.path
            let second = try DaemonProcess(
                ["--size", "32M", "--name", "second"], directory: first.directory, socketPath: directory + "/b.sock",
                controlPath: directory + "/b-control.sock")
            defer { second.cleanUp() }
            try second.waitUntilServing()
            // A socket nobody answers on any more.
            let stale = directory + "/stale-control.sock"
            let bind = try runCommand(
                ["python3", "-c", "import socket; socket.socket(socket.AF_UNIX).bind('\(stale)')"], timeout: 20)
            #expect(bind.status == 0, "\(bind.standardError)")

            let list = try runCommand(
                [try DaemonProcess.executable("znbdctl"), "list", "--directory", directory], timeout: 30)
            #expect(list.status == 0, "\(list.standardError)")
            let lines = list.standardOutput.split(separator: "\n")
            #expect(lines.count == 3, "\(list.standardOutput)")
            #expect(lines.first?.hasPrefix("SOCKET") == true && lines.first?.contains("DISKSIZE") == true)
            #expect(
                lines.contains { $0.hasPrefix(directory + "/b.sock") && $0.contains("second") && $0.contains("32M") })
            #expect(lines.contains { $0.hasPrefix(first.socketPath) && $0.contains("first") && $0.contains("16M") })
            #expect(list.standardError.contains("stale-control.sock"), "\(list.standardError)")

            let json = try runCommand(
                [try DaemonProcess.executable("znbdctl"), "list", "--directory", directory, "--json"], timeout: 30)
            let documents = try JSONDecoder().decode([StatsDocument].self, from: Data(json.standardOutput.utf8))
            #expect(documents.map(\.export.name).sorted() == ["first", "second"])
            // No daemon anywhere: nothing listed, said on stderr, exit 0.
            let none = try runCommand(
                [try DaemonProcess.executable("znbdctl"), "list", "--directory", directory + "/none"], timeout: 30)
            #expect(none.status == 0 && none.standardOutput.isEmpty, "\(none.standardError)")
            #expect(none.standardError.contains("no znbd answers in"), "\(none.standardError)")
            #expect(second.signal(SIGTERM).status == 0)
        }
    }

    @Test("the control endpoint answers bad requests with 4xx and a JSON error, and serves on")
    func badControlRequests() async throws {
        try await withDaemon(["--size", "16M"]) { daemon in
            let cases: [(method: String, path: String, body: String?, status: Int)] = [
                ("GET", "/v1/nothing", nil, 404),
                ("DELETE", "/v1/stats", nil, 405),
                ("GET", "/v1/compact", nil, 405),
                ("PUT", "/v1/mem-limit", "{\"mem_limit\": -5}", 400),
                ("PUT", "/v1/mem-limit", "twelve", 400),
                ("PUT", "/v1/mem-limit", "{\"limit\": 5}", 400),
                ("PUT", "/v1/mem-limit", String(repeating: "9", count: 70_000), 413),
            ]
            for item in cases {
                let answer = try daemon.curl(item.method, item.path, body: item.body)
                #expect(answer.status == item.status, "\(item.method) \(item.path)")
                let error = try? JSONDecoder().decode(ErrorDocument.self, from: Data(answer.body.utf8))
                #expect(error?.error.isEmpty == false, "\(item.method) \(item.path): \(answer.body)")
            }
            let garbage = try RawClient(socketPath: daemon.controlPath)
            try garbage.send(Array("NOT HTTP AT ALL\r\n\r\n".utf8))
            let answer = String(decoding: try garbage.receiveUntilClosed(), as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            let limit = try daemon.curl("PUT", "/v1/mem-limit", body: "{\"mem_limit\": \"8M\"}")
            #expect(limit.status == 200 && limit.body.contains("8388608"))
            let client = try LibNBDClient(uri: daemon.uri)
            try client.write([UInt8](repeating: 9, count: 4096), at: 0)
            #expect(try client.read(count: 4096, at: 0) == [UInt8](repeating: 9, count: 4096))
        }
    }
}
