import BlockDevice
import CNBD
import Foundation
import NBD
import Synchronization
import Testing
import ZNBDFigures
import TestSupport
import ZRAM

/// Data integrity where it is hardest to keep: clients writing, discarding
/// and zeroing over NBD while the maintenance thread compacts and migrates
/// as fast as it can, moving the very objects and frames being read.
@Suite("NBD and maintenance: integrity under constant compaction and migration")
struct MaintenanceStressTests {
    @Test("three connections write, trim, zero and verify against a model while maintenance runs flat out")
    func stress() async throws {
        let seconds = ProcessInfo.processInfo.environment["ZNBD_NBD_STRESS_SECONDS"].flatMap(Double.init) ?? 60
        let (_, baseSeed) = SeededRandom.fromEnvironment()
        print("maintenanceStress seed \(baseSeed), \(seconds) s")
        let regionSize = 16 << 20
        let device = try CompressedBlockDevice(.init(byteCount: 3 * regionSize))
        let maintenance = try DeviceMaintenance(device: device, policy: .aggressive)
        maintenance.start()
        defer { maintenance.stop() }
        let corpus = try Corpus.pages(1024)
        let failures = Mutex<[String]>([])
        let operations = Mutex<[String: Int]>([:])
        try await withServedDevice(device: device) { served in
            let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            runOnThreads(3) { index in
                do {
                    let counts = try Self.client(
                        index: index, uri: served.uri, base: index * regionSize, size: regionSize, corpus: corpus,
                        seed: baseSeed &+ UInt64(index), deadline: deadline)
                    operations.withLock { $0.merge(counts, uniquingKeysWith: +) }
                } catch {
                    failures.withLock { $0.append("connection \(index): \(error)") }
                }
            }
        }
        let stats = maintenance.figures().totals
        let passes = stats.values(of: .passes)
        print(
            "maintenanceStress: \(operations.withLock { $0 }); passes \(passes); compaction moved "
                + "\(stats[.objectsMoved]) objects (\(stats[.objectsSkipped]) busy), migration moved "
                + "\(stats[.framesMigrated]) frames (\(stats[.framesSkipped]) busy), "
                + "\(stats[.blocksReleased]) blocks released")
        #expect(failures.withLock { $0 } == [])
        #expect(passes.values.reduce(0, +) > 50, "maintenance hardly ran: \(passes)")
        #expect(stats[.objectsMoved] > 0 && stats[.framesMigrated] > 0)
        maintenance.stop()
        try device.validate()
    }

    /// One connection's life: random requests in its own region, each
    /// checked against what the region must hold. Returns the counts by kind.
    static func client(
        index: Int, uri: String, base: Int, size: Int, corpus: PageArray, seed: UInt64,
        deadline: ContinuousClock.Instant
    ) throws -> [String: Int] {
        let client = try LibNBDClient(uri: uri)
        var random = SeededRandom(seed: seed)
        var model = [UInt8](repeating: 0, count: size)
        var counts: [String: Int] = [:]
        func range() -> (offset: Int, length: Int) {
            let unit = random.next() % 2 == 0 ? 4096 : 512
            let length = unit * (1 + Int(random.next() % UInt64(128 * 1024 / unit)))
            let offset = Int(random.next() % UInt64((size - length) / unit)) * unit
            return (offset, length)
        }
        while ContinuousClock.now < deadline {
            let (offset, length) = range()
            switch random.next() % 10 {
            case 0...3:
                var bytes: [UInt8]
                switch random.next() % 4 {
                case 0: bytes = random.bytes(length)
                case 1: bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: random.next()), count: length)
                default:
                    let start = Int(random.next() % UInt64((corpus.bytes.count - length) / 512)) * 512
                    bytes = Array(corpus.bytes[start..<start + length])
                }
                try client.write(bytes, at: base + offset)
                model.replaceSubrange(offset..<offset + length, with: bytes)
                counts["write", default: 0] += 1
            case 4:
                try client.trim(count: length, at: base + offset)
                // The device frees whole pages only: they read as zeroes; the
                // partial pages at the edges keep their bytes.
                let first = (offset + 4095) / 4096 * 4096
                let end = (offset + length) / 4096 * 4096
                if first < end { model.replaceSubrange(first..<end, with: repeatElement(0, count: end - first)) }
                counts["trim", default: 0] += 1
            case 5:
                // With or without NO_HOLE: zero pages, or freed pages.
                let noHole = random.next() % 2 == 0 ? UInt32(LIBNBD_CMD_FLAG_NO_HOLE) : 0
                try client.zero(count: length, at: base + offset, flags: noHole)
                model.replaceSubrange(offset..<offset + length, with: repeatElement(0, count: length))
                counts["zero", default: 0] += 1
            default:
                let data = try client.read(count: length, at: base + offset)
                if let at = firstDifference(data, model[offset..<offset + length]) {
                    throw Mismatch(
                        description: "read of \(length) at \(base + offset): byte \(at) differs (seed \(seed))")
                }
                counts["read", default: 0] += 1
            }
        }
        let whole = try client.read(count: size, at: base)
        if let at = firstDifference(whole, model) {
            throw Mismatch(description: "final read of the region: byte \(base + at) differs (seed \(seed))")
        }
        return counts
    }

    struct Mismatch: Error, CustomStringConvertible {
        let description: String
    }
}
