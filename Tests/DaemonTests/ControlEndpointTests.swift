import Foundation
import NBD
import Testing
import ZNBDFigures
import TestSupport
import ZNBDControlAPI
import ZNBDControlServer
import ZRAM

@Suite("Control plane without sockets: sizes, paths, routes, Prometheus text")
struct ControlEndpointTests {
    @Test("sizes parse as memparse reads them and print as zramctl does")
    func byteSizes() throws {
        let good: [(String, Int)] = [
            ("4096", 4096), ("4K", 4096), ("4k", 4096), ("512M", 512 << 20), ("1G", 1 << 30),
            ("1.5G", 3 << 29), ("2TiB", 2 << 40), ("64MB", 64 << 20), (" 8M ", 8 << 20), ("0", 0),
            ("9007199254740993", 9_007_199_254_740_993),
        ]
        for (text, bytes) in good { #expect(try ByteSize.parse(text) == bytes, "\(text)") }
        for text in ["", "G", "1X", "1.3K", "-4K", "1GG", "12 M B", "9999999T"] {
            #expect(throws: ByteSize.ParseError.self, "\(text)") { try ByteSize.parse(text) }
        }
        let printed: [(Int, String)] = [
            (0, "0B"), (512, "512B"), (4096, "4K"), (1536 << 10, "1.5M"),
            (68_678_494, "65.5M"), (1 << 30, "1G"), (3 << 39, "1.5T"),
        ]
        for (bytes, text) in printed { #expect(ByteSize.format(bytes) == text, "\(bytes)") }
    }

    @Test("default sockets: /run/znbd for root, XDG_RUNTIME_DIR or /tmp for others; control beside NBD")
    func defaultPaths() {
        #expect(
            ControlPaths.defaultNBDSocket(userID: 0, environment: ["XDG_RUNTIME_DIR": "/run/user/0"])
                == "/run/znbd/nbd.sock")
        #expect(
            ControlPaths.defaultNBDSocket(userID: 1000, environment: ["XDG_RUNTIME_DIR": "/run/user/1000"])
                == "/run/user/1000/znbd/nbd.sock")
        #expect(ControlPaths.defaultNBDSocket(userID: 1000, environment: [:]) == "/tmp/znbd-1000/nbd.sock")
        #expect(ControlPaths.controlSocket(nextTo: "/run/znbd/nbd.sock") == "/run/znbd/nbd-control.sock")
        #expect(ControlPaths.controlSocket(nextTo: "/srv/disk") == "/srv/disk-control.sock")
        #expect(ControlPaths.controlSocket(nextTo: "a.sock") == "a-control.sock")
        #expect(ControlPaths.defaultControlSocket(userID: 0, environment: [:]) == "/run/znbd/nbd-control.sock")
    }

    func endpoint() throws -> ControlEndpoint {
        let device = try CompressedBlockDevice(.init(byteCount: 8 << 20))
        let export = ExportSummary(
            name: "t", sizeBytes: 8 << 20, readOnly: false, nbdSocket: nil, tcpAddress: nil,
            compaction: "off")
        return ControlEndpoint(
            maintenance: try DeviceMaintenance(device: device, policy: .manualOnly), export: export,
            serverFigures: { ServerFiguresFixture.sample })
    }

    @Test("routes: each document, 404 with the list, 405 with Allow, mem-limit in every accepted form")
    func routes() throws {
        let endpoint = try endpoint()
        try [UInt8](repeating: 0xAB, count: 8192).withUnsafeBytes { try endpoint.device.write($0, at: 0) }
        let stats = endpoint.respond(to: ControlRequest(method: "GET", target: "/v1/stats?pretty=1"))
        #expect(stats.status == 200 && stats.contentType == "application/json")
        let document = try JSONDecoder().decode(StatsDocument.self, from: Data(stats.body))
        #expect(document.device[.samePages] == 2 && document.device[.origDataSize] == 8192)
        #expect(document.mmStat.count == 9 && document.ioStat.count == 4)
        #expect(document.nbd == StatsDocument.NBD(ServerFiguresFixture.sample))
        let roundTrip = try JSONEncoder().encode(document)
        #expect(try JSONDecoder().decode(StatsDocument.self, from: roundTrip) == document)

        #expect(endpoint.respond(to: ControlRequest(method: "GET", target: "/v1/classes")).status == 200)
        let frames = endpoint.respond(to: ControlRequest(method: "GET", target: "/v1/frames"))
        #expect(try JSONDecoder().decode(FramesDocument.self, from: Data(frames.body)).freeRunsByOrder.count == 10)
        let compact = endpoint.respond(to: ControlRequest(method: "POST", target: "/v1/compact"))
        #expect(compact.status == 200)
        #expect(try JSONDecoder().decode(CompactDocument.self, from: Data(compact.body)).pass.trigger == "manual")
        let after = try JSONDecoder().decode(
            StatsDocument.self,
            from: Data(endpoint.respond(to: ControlRequest(method: "GET", target: "/v1/stats")).body))
        #expect(after.maintenance.totals[.passes, "manual"] == 1 && after.maintenance.compaction == "off")

        let missing = endpoint.respond(to: ControlRequest(method: "GET", target: "/v2/stats"))
        #expect(missing.status == 404 && String(decoding: missing.body, as: UTF8.self).contains("/v1/stats"))
        let wrongMethod = endpoint.respond(to: ControlRequest(method: "POST", target: "/v1/stats"))
        #expect(wrongMethod.status == 405 && wrongMethod.allow == ["GET"])

        for (body, limit) in [
            ("{\"mem_limit\": 1048576}", 1 << 20), ("{\"mem_limit\": \"2M\"}", 2 << 20), ("3M\n", 3 << 20),
            ("0", 0),
        ] {
            let answer = endpoint.respond(
                to: ControlRequest(method: "PUT", target: "/v1/mem-limit", body: Array(body.utf8)))
            #expect(answer.status == 200, "\(body)")
            #expect(try JSONDecoder().decode(MemLimitDocument.self, from: Data(answer.body)).memLimit == limit)
            #expect((endpoint.device.memLimitBytes ?? 0) == limit)
        }
        for body in ["", "{}", "{\"mem_limit\": -1}", "{\"mem_limit\": \"lots\"}", "[1]", "5Q"] {
            let answer = endpoint.respond(
                to: ControlRequest(method: "PUT", target: "/v1/mem-limit", body: Array(body.utf8)))
            #expect(answer.status == 400, "\(body)")
        }
        #expect(endpoint.device.memLimitBytes == nil)
    }

    @Test("text views: mm_stat in the kernel's widths, zramctl's columns, the classes' totals")
    func textViews() throws {
        let endpoint = try endpoint()
        try [UInt8](repeating: 0, count: 4096).withUnsafeBytes { try endpoint.device.write($0, at: 0) }
        var generator = SeededRandom(seed: 3)
        try generator.bytes(8192).withUnsafeBytes { try endpoint.device.write($0, at: 8192) }
        let stats = endpoint.stats(pool: endpoint.device.poolFigures())
        // The kernel prints mm_stat with "%8llu %8llu %8llu %8lu %8ld %8llu %8lu %8llu %8llu\n".
        let expected =
            stats.mmStat.map { String(repeating: " ", count: max(0, 8 - String($0).count)) + String($0) }
            .joined(separator: " ") + "\n"
        #expect(TextViews.mmStatLine(stats) == expected)
        #expect(
            stats.mmStat == [3 * 4096, 2 * 4096, stats.device[.memUsedTotal], 0, stats.device[.memUsedMax], 1, 0, 2, 2])

        let table = TextViews.statsTable(stats).split(separator: "\n")
        #expect(table.count == 2)
        #expect(
            table.first?.split(separator: " ").map(String.init)
                == [
                    "NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "RATIO", "MEM-LIMIT", "MEM-USED", "SAME",
                    "HUGE", "COMPACTED", "RSS",
                ])
        let row = table.last?.split(separator: " ").map(String.init) ?? []
        #expect(
            Array(row.prefix(7)) == [
                "t", "lzo", "8M", "12K", "8K", ByteSize.format(stats.device[.memUsedTotal]), "1.50",
            ])

        let classes = TextViews.classesTable(ClassesDocument(endpoint.device.poolFigures()).classes, all: false)
            .split(separator: "\n")
        #expect(classes.count == 3, "header, the huge class in use, the totals: \(classes)")
        #expect(classes.last?.hasPrefix("Total") == true)
    }

    @Test("/metrics: HELP and TYPE once per family, labels escaped, every sample a name and an integer")
    func prometheusText() throws {
        var exposition = PrometheusExposition()
        exposition.family("x_total", .counter, help: "a \\ b\nc", samples: [([("k", "q\"u\\o\nte")], 3)])
        #expect(
            exposition.text
                == "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{k=\"q\\\"u\\\\o\\nte\"} 3\n")

        let metrics = try endpoint().respond(to: ControlRequest(method: "GET", target: "/metrics"))
        #expect(metrics.contentType.hasPrefix("text/plain; version=0.0.4"))
        let text = String(decoding: metrics.body, as: UTF8.self)
        var typed = Set<String>()
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let name = String(line.split(separator: " ")[2])
                #expect(typed.insert(name).inserted, "TYPE twice for \(name)")
            } else if !line.hasPrefix("# HELP ") {
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                #expect(typed.contains(name), "sample before its TYPE: \(line)")
                #expect(Int(line.split(separator: " ").last ?? "") != nil, "\(line)")
            }
        }
        #expect(typed.contains("znbd_orig_data_size_bytes") && typed.contains("znbd_nbd_requests_total"))
        #expect(text.contains("znbd_nbd_request_errors_total{command=\"write\",errno=\"ENOSPC\"} 2"))
    }
}

enum ServerFiguresFixture {
    static let sample: NBDServerFigures = {
        var totals = Figures<ServerFigure>()
        totals[.connectionsOpen] = 1
        totals[.connectionsTotal] = 3
        return NBDServerFigures(
            totals: totals, commands: ["write": .init(requests: 5, bytes: 20480, errors: ["ENOSPC": 2])])
    }()
}
