import BlockDevice
import Foundation
import PageCodec
import SystemPackage
import Testing
import TestSupport
@testable import ZRAM
import ZNBDSystem
import ZSPool

#if canImport(Glibc)
    import Glibc
#endif

/// A device whose tables live in files of a state directory on a tmpfs
/// (RegionPlacement.directory, docs/STATE-DESIGN.md) behaves as one in
/// anonymous memory, lays its slots out as documented, gives memory back
/// by punching holes, and answers a full tmpfs with "no space" rather than
/// a SIGBUS.
@Suite("ZRAM: a device whose tables are files of a state directory")
struct StatePlacementTests {
    /// A fresh directory on /dev/shm (a tmpfs), removed by the caller.
    static func stateDirectory() throws -> String {
        let path = "/dev/shm/znbd-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(path, 0o700) == 0 else { throw Errno(rawValue: errno) }
        return path
    }

    /// The bytes a file holds in memory (its allocated blocks).
    static func allocatedBytes(_ path: String) -> Int {
        var status = stat()
        guard stat(path, &status) == 0 else { return -1 }
        return Int(status.st_blocks) * 512
    }

    @Test("random writes, trims and zeroes with compaction and migration read back as the model's, and validate")
    func workloadMatchesModel() throws {
        let directory = try Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pages = 4096
        let device = try CompressedBlockDevice(
            .init(byteCount: pages * pageSize, placement: .directory(directory)))
        let model = ModelDisk(byteCount: pages * pageSize)
        var random = SeededRandom(seed: 0x5747_4154_4531)
        try device.randomWorkload(model, rounds: 6000, unit: 2048, subPage: true, random: &random)
        for page in stride(from: 0, to: pages, by: 16) {
            let read = try device.read(count: 16 * pageSize, at: page * pageSize)
            let expected = model.expected(offset: page * pageSize, length: 16 * pageSize)
            #expect(firstDifference(read, expected) == nil, "pages \(page)... differ from the model")
        }
        try device.validate()
        for name in ["slots", "arena", "frame-owners", "handles"] {
            #expect(FileManager.default.fileExists(atPath: directory + "/" + name), "no state file \(name)")
        }
    }

    @Test("a slot is (meta, value) at 16 × page in the slots file; untouched pieces of the table cost nothing")
    func slotLayoutInTheFile() throws {
        let directory = try Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // 64 MiB: four pieces of the slot table (64 KiB each).
        let device = try CompressedBlockDevice(
            .init(byteCount: 64 << 20, placement: .directory(directory)))
        #expect(Self.allocatedBytes(directory + "/slots") == 0)
        let page = 3 * SlotTable.slotsPerPiece + 5
        let fill: UInt64 = 0x0123_4567_89AB_CDEF
        try device.write(
            [UInt8](repeating: 0, count: pageSize).enumerated().map {
                UInt8(truncatingIfNeeded: fill >> (8 * ($0.offset % 8)))
            },
            at: page * pageSize)
        #expect(Self.allocatedBytes(directory + "/slots") == SlotTable.slotsPerPiece * SlotTable.slotBytes)
        // A read of a page in a piece never written touches nothing.
        #expect(try device.read(count: pageSize, at: 0) == [UInt8](repeating: 0, count: pageSize))
        #expect(Self.allocatedBytes(directory + "/slots") == SlotTable.slotsPerPiece * SlotTable.slotBytes)

        let file = try FileDescriptor.open(directory + "/slots", .readOnly)
        defer { try? file.close() }
        var words = [UInt64](repeating: 0, count: 2)
        _ = try words.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: Int64(page * 16), into: $0) }
        #expect(words[0] & SlotTable.sameBit != 0, "meta is the first word")
        #expect(words[0] & SlotTable.lockBit == 0, "the lock is let go")
        #expect(words[1] == fill, "value is the second word")
        withExtendedLifetime(device) {}
    }

    @Test("emptied blocks are punched out of the arena file, and their owners' page with them")
    func memoryGoesBack() throws {
        let directory = try Self.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pages = 16384
        let device = try CompressedBlockDevice(
            .init(byteCount: pages * pageSize, placement: .directory(directory)))
        let corpus = try Corpus.pages(256)
        for page in 0..<pages {
            try device.write(Array(corpus[page % corpus.count]), at: page * pageSize)
        }
        let full = Self.allocatedBytes(directory + "/arena")
        #expect(full >= device.pool.usedBytes)
        try device.discard(offset: 0, length: pages * pageSize)
        device.pool.compact()
        device.pool.migrateFrames()
        let after = Self.allocatedBytes(directory + "/arena")
        #expect(after <= ZSPool.blockSize, "arena file holds \(after) bytes after everything was discarded")
        #expect(Self.allocatedBytes(directory + "/frame-owners") <= pageSize)
        try device.validate()
    }

    static let mountMissing: String? = {
        if getuid() != 0 { return "mounting a small tmpfs needs root; not run" }
        return FileManager.default.isExecutableFile(atPath: "/usr/bin/mount") ? nil : "no /usr/bin/mount; not run"
    }()

    @Test(
        "a full tmpfs under the state: writes fail with no space, stored pages read back, room comes back after a trim",
        .enabled(if: mountMissing == nil, "\(mountMissing ?? "")"))
    func fullFilesystem() throws {
        let directory = try makeTemporaryDirectory("znbd-small-state").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mount = try runCommand(["mount", "-t", "tmpfs", "-o", "size=8m", "znbd-test", directory], timeout: 30)
        guard mount.status == 0 else {
            try Test.cancel("cannot mount a tmpfs here: \(mount.standardError)")
        }
        defer { _ = try? runCommand(["umount", directory], timeout: 30) }
        do {
            // 64 MiB of random pages into an 8 MiB filesystem.
            let pages = 16384
            let device = try CompressedBlockDevice(
                .init(byteCount: pages * pageSize, placement: .directory(directory)))
            var random = SeededRandom(seed: 0x46_554C_4C)
            var stored: [Int: [UInt8]] = [:]
            var refused = 0
            for page in 0..<pages {
                let data = (0..<pageSize).map { _ in UInt8.random(in: 0...255, using: &random) }
                do {
                    try device.write(data, at: page * pageSize)
                    stored[page] = data
                } catch BlockDeviceError.noSpace {
                    refused += 1
                    if refused == 64 { break }
                }
            }
            #expect(refused == 64, "the tmpfs never filled")
            #expect(stored.count > 256, "only \(stored.count) pages fit")
            for (page, data) in stored {
                #expect(try device.read(count: pageSize, at: page * pageSize) == data, "page \(page) changed")
            }
            #expect(device.figures()[.failedWritesNoSpace] == 64)
            // Trim half of what is stored; emptied blocks go back to the
            // tmpfs, and writes fit again.
            for page in stored.keys.sorted().prefix(stored.count / 2) {
                try device.discard(offset: page * pageSize, length: pageSize)
            }
            device.pool.compact()
            device.pool.migrateFrames()
            let again = (0..<pageSize).map { _ in UInt8.random(in: 0...255, using: &random) }
            try device.write(again, at: 0)
            #expect(try device.read(count: pageSize, at: 0) == again)
            try device.validate()
        }
    }
}
