import Foundation
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// What every acknowledged operation of a connection left on its pages,
/// and what the one in flight when the daemon died may have left.
///
/// Each connection owns its own pages and has one request in flight at a
/// time, so a page's content is known exactly: the last acknowledged
/// operation's, or, for the pages under a request the kill cut off, that or
/// the request's (the block device promises no more: the old content or
/// the new, never a mix and never anything else).
final class CrashModel: @unchecked Sendable {
    // @unchecked: connection c touches only the pages of its own region,
    // from one thread at a time, in fixed buffers (a Swift array written
    // from several threads would race on its own header, even at disjoint
    // indices); verification runs with no client.
    static let pageSize = 4096
    /// No operation in flight over a page.
    static let none = UInt32.max
    let pages: Int
    let connections: Int
    /// Per page: the operation whose content it holds (0: zeroes).
    private let acknowledged: UnsafeMutableBufferPointer<UInt32>
    /// Per page: the operation in flight over it at the kill, or `none`.
    private let inFlight: UnsafeMutableBufferPointer<UInt32>
    private let nextOperation = Atomic<UInt32>(1)

    init(pages: Int, connections: Int) {
        self.pages = pages
        self.connections = connections
        acknowledged = .allocate(capacity: pages)
        acknowledged.initialize(repeating: 0)
        inFlight = .allocate(capacity: pages)
        inFlight.initialize(repeating: Self.none)
    }

    deinit {
        acknowledged.deallocate()
        inFlight.deallocate()
    }

    func region(of connection: Int) -> Range<Int> {
        let share = pages / connections
        return connection * share..<(connection + 1) * share
    }

    func newOperation() -> UInt32 { nextOperation.add(1, ordering: .relaxed).newValue }

    /// The bytes operation `operation` writes to `page`: by the operation's
    /// number, a page of one repeated word (no pool object), random bytes
    /// (stored raw) or text-like bytes (compressed). 0 is zeroes.
    static func content(operation: UInt32, page: Int) -> [UInt8] {
        guard operation != 0 else { return [UInt8](repeating: 0, count: pageSize) }
        var generator = SeededRandom(seed: UInt64(operation) << 32 | UInt64(page))
        switch operation % 4 {
        case 0:
            let word = UInt64(operation) << 32 | UInt64(page)
            return (0..<pageSize).map { UInt8(truncatingIfNeeded: word >> (8 * ($0 % 8))) }
        case 1:
            return (0..<pageSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
        default:
            let words = ["page", "\(page)", "operation", "\(operation)", "znbd", "crash", "model", "zram"]
            var text: [UInt8] = []
            while text.count < pageSize {
                text += Array((words.randomElement(using: &generator)! + " ").utf8)
            }
            return Array(text.prefix(pageSize))
        }
    }

    func begin(_ operation: UInt32, pages range: Range<Int>) {
        for page in range { inFlight[page] = operation }
    }

    func acknowledge(_ operation: UInt32, pages range: Range<Int>) {
        for page in range {
            acknowledged[page] = operation
            inFlight[page] = Self.none
        }
    }

    /// Checks every page against the model through `read(offset, count)`,
    /// then settles the pages a kill left open on what they hold. Returns
    /// the pages that hold neither the acknowledged content nor the one in
    /// flight.
    func verify(_ read: (Int, Int) throws -> [UInt8]) throws -> [String] {
        var wrong: [String] = []
        let batch = 256
        for first in stride(from: 0, to: pages, by: batch) {
            let bytes = try read(first * Self.pageSize, batch * Self.pageSize)
            for page in first..<first + batch {
                let held = bytes[(page - first) * Self.pageSize..<(page - first + 1) * Self.pageSize]
                let candidates = [acknowledged[page]] + (inFlight[page] == Self.none ? [] : [inFlight[page]])
                guard
                    let match = candidates.first(where: { held.elementsEqual(Self.content(operation: $0, page: page)) })
                else {
                    if wrong.count < 10 {
                        wrong.append("page \(page): neither operation \(candidates.map(String.init))")
                    }
                    continue
                }
                acknowledged[page] = match
                inFlight[page] = Self.none
            }
        }
        return wrong
    }
}

/// SIGKILL at a random instant, under three connections writing, trimming
/// and zeroing with maintenance at its most aggressive, and the daemon
/// started again on the same state: every acknowledged operation reads
/// back (issue 24's crash loop; tools/crash-loop runs it long).
@Suite("znbd: a SIGKILL at any instant loses no acknowledged write", .serialized)
struct CrashTests {
    static let kills = Int(ProcessInfo.processInfo.environment["ZNBD_CRASH_KILLS"] ?? "") ?? 6

    @Test(
        "killed under load (6 times; ZNBD_CRASH_KILLS), restarted on its state: every acknowledged operation is there")
    func killLoop() throws {
        let directory = try makeTemporaryDirectory("znbd-crash")
        let state = "/dev/shm/znbd-crash-\(UUID().uuidString.prefix(8))"
        defer {
            try? FileManager.default.removeItem(at: directory)
            try? FileManager.default.removeItem(atPath: state)
        }
        let model = CrashModel(pages: 16384, connections: 3)
        let arguments = [
            "--size", "64M", "--state-dir", state, "--waste-threshold", "1M", "--recompress-algorithm", "zstd",
            "--recompress-idle-age", "0", "--recompress-rate", "100000",
        ]
        var seed = SeededRandom(seed: UInt64(ProcessInfo.processInfo.environment["ZNBD_CRASH_SEED"] ?? "") ?? 0xC0FFEE)
        var acknowledgedTotal = 0
        for round in 0...Self.kills {
            let daemon = try DaemonProcess(arguments, directory: directory)
            defer { daemon.cleanUp() }
            try daemon.waitUntilServing()
            let verifier = try LibNBDClient(uri: daemon.uri)
            let wrong = try model.verify { offset, count in try verifier.read(count: count, at: offset) }
            #expect(wrong.isEmpty, "after kill \(round): \(wrong.joined(separator: "; "))\n\(daemon.logForFailure)")
            guard wrong.isEmpty else { return }
            if round > 0 {
                #expect(daemon.log.contains("resumed the state in \(state) (start \(round + 1))"), "\(daemon.log)")
            }
            guard round < Self.kills else { break }
            let killAfter = Double.random(in: 0.2...1.2, using: &seed)
            let seeds = (0..<3).map { _ in UInt64.random(in: 0...UInt64.max, using: &seed) }
            let acknowledged = Atomic<Int>(0)
            let failure = Mutex<String?>(nil)
            runOnThreads(4) { index in
                guard index < 3 else {
                    usleep(UInt32(killAfter * 1_000_000))
                    _ = daemon.signal(SIGKILL)
                    return
                }
                let count = Self.drive(model, connection: index, uri: daemon.uri, seed: seeds[index])
                switch count {
                case .success(let done): acknowledged.add(done, ordering: .relaxed)
                case .failure(let error): failure.withLock { $0 = "\(error)" }
                }
            }
            if let failure = failure.withLock({ $0 }) { Issue.record("a client could not start: \(failure)") }
            acknowledgedTotal += acknowledged.load(ordering: .relaxed)
        }
        #expect(acknowledgedTotal > Self.kills * 50, "only \(acknowledgedTotal) operations were acknowledged")
        print("crash loop: \(Self.kills) kills, \(acknowledgedTotal) operations acknowledged, every one read back")
    }

    /// One connection's load until the daemon dies: whole-page writes,
    /// trims and write-zeroes (with and without NO_HOLE) at random places of
    /// its region, one at a time. Returns how many were acknowledged, or why
    /// it could not connect.
    static func drive(_ model: CrashModel, connection: Int, uri: String, seed: UInt64) -> Result<Int, any Error> {
        let client: LibNBDClient
        do {
            client = try LibNBDClient(uri: uri)
        } catch {
            return .failure(error)
        }
        var random = SeededRandom(seed: seed)
        let region = model.region(of: connection)
        var done = 0
        while true {
            let count = Int.random(in: 1...16, using: &random)
            let first = Int.random(in: region.lowerBound...(region.upperBound - count), using: &random)
            let pages = first..<first + count
            let offset = first * CrashModel.pageSize
            let length = count * CrashModel.pageSize
            let operation = model.newOperation()
            do {
                switch Int.random(in: 0..<10, using: &random) {
                case 0:
                    model.begin(0, pages: pages)
                    try client.trim(count: length, at: offset)
                    model.acknowledge(0, pages: pages)
                case 1:
                    model.begin(0, pages: pages)
                    try client.zero(count: length, at: offset, flags: random.next() % 2 == 0 ? 0 : 0x02)
                    model.acknowledge(0, pages: pages)
                default:
                    var bytes: [UInt8] = []
                    for page in pages { bytes += CrashModel.content(operation: operation, page: page) }
                    model.begin(operation, pages: pages)
                    try client.write(bytes, at: offset)
                    model.acknowledge(operation, pages: pages)
                }
                done += 1
            } catch {
                return .success(done)
            }
        }
    }
}
