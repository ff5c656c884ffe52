import BlockDevice
import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import ZRAM
import ZNBDFigures
import ZNBDSystem
@testable import ZSPool

#if canImport(Glibc)
    import Glibc
#endif

/// A device made again on the state directory an earlier one left resumes
/// it: every page reads back, the figures are recounted to the same values,
/// and what a kill can leave behind (held locks, leaked objects, a
/// migration's second frame, a state half made) is mended and counted,
/// while a state that does not fit is refused and left alone.
@Suite("ZRAM: resuming a state directory")
struct StateResumeTests {
    static let pages = 4096

    static func configuration(
        _ directory: String, pages: Int = pages, maxChain: Int = 8
    )
        -> CompressedBlockDevice.Configuration
    {
        .init(byteCount: pages * pageSize, maxChain: maxChain, placement: .directory(directory))
    }

    /// Fills a device in `directory` with a random mix of pages, trims and
    /// zeroes (compaction and migration between), and returns the model.
    static func fill(_ directory: String, seed: UInt64) throws -> ModelDisk {
        let device = try CompressedBlockDevice(configuration(directory))
        let model = ModelDisk(byteCount: pages * pageSize)
        var random = SeededRandom(seed: seed)
        try device.randomWorkload(model, rounds: 4000, unit: pageSize, subPage: false, random: &random)
        return model
    }

    static func expectSameContent(_ device: CompressedBlockDevice, _ model: ModelDisk) throws {
        for page in stride(from: 0, to: pages, by: 64) {
            let read = try device.read(count: 64 * pageSize, at: page * pageSize)
            let expected = model.expected(offset: page * pageSize, length: 64 * pageSize)
            #expect(firstDifference(read, expected) == nil, "pages \(page)... differ after resuming")
        }
    }

    static let recounted: [DeviceFigure] = [
        .origDataSize, .comprDataSize, .memUsedTotal, .samePages, .hugePages, .diskSize,
    ]

    @Test("every page reads back, the figures are recounted alike, writes go on, and the pool validates")
    func resumesEverything() throws {
        let directory = try StatePlacementTests.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var figures: [DeviceFigure: Int] = [:]
        let model: ModelDisk
        do {
            model = try Self.fill(directory, seed: 0x5245_5355_4D45)
            let device = try CompressedBlockDevice(Self.configuration(directory))
            #expect(device.resumption?.starts == 2)
            let first = device.figures()
            for figure in Self.recounted { figures[figure] = first[figure] }
            try device.validate()
        }
        let device = try CompressedBlockDevice(Self.configuration(directory))
        let resumption = try #require(device.resumption)
        #expect(resumption.starts == 3)
        #expect(resumption.pool.objectsFreed == 0 && resumption.pool.framesFreed == 0)
        #expect(resumption.pool.objects > 1000)
        let again = device.figures()
        for figure in Self.recounted {
            #expect(again[figure] == figures[figure], "\(figure) was \(figures[figure]!), is \(again[figure])")
        }
        try Self.expectSameContent(device, model)
        try device.validate()
        // And on: the resumed pool takes new writes, frees and moves objects.
        let corpus = try Corpus.pages(64)
        for page in 0..<Self.pages where page % 3 == 0 {
            let data = Array(corpus[page % corpus.count])
            try device.write(data, at: page * pageSize)
            model.store(data, at: page * pageSize)
        }
        try device.discard(offset: 0, length: Self.pages * pageSize / 2)
        model.discard(offset: 0, length: Self.pages * pageSize / 2)
        device.pool.compact()
        device.pool.migrateFrames()
        try Self.expectSameContent(device, model)
        try device.validate()
    }

    @Test("a state of another size or max chain is refused in one line and kept as it was")
    func refusesAnotherGeometry() throws {
        let directory = try StatePlacementTests.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let model = try Self.fill(directory, seed: 0x4745_4F4D)
        #expect {
            _ = try CompressedBlockDevice(Self.configuration(directory, pages: Self.pages * 2))
        } throws: { error in
            "\(error)".contains("holds a device of \(Self.pages * pageSize) bytes, not \(2 * Self.pages * pageSize)")
        }
        #expect {
            _ = try CompressedBlockDevice(Self.configuration(directory, maxChain: 4))
        } throws: { error in
            "\(error)".contains("max chain 8, not 4")
        }
        let device = try CompressedBlockDevice(Self.configuration(directory))
        try Self.expectSameContent(device, model)
    }

    @Test("a state with a file gone is refused, again and again, and nothing is made in its place")
    func refusesAMissingFile() throws {
        let directory = try StatePlacementTests.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.fill(directory, seed: 0x4D49_5353)
        for name in ["slots", "handles"] {
            let kept = directory + "/" + name + ".kept"
            #expect(rename(directory + "/" + name, kept) == 0)
            // Twice: a refused start (and systemd's restart of it) must not
            // make the file and resume the state as empty the next time.
            for _ in 0..<2 {
                #expect {
                    _ = try CompressedBlockDevice(Self.configuration(directory))
                } throws: { error in
                    "\(error)".contains("cannot be resumed: its file \(name) is missing")
                }
            }
            #expect(!FileManager.default.fileExists(atPath: directory + "/" + name))
            #expect(rename(kept, directory + "/" + name) == 0)
        }
        #expect(rename(directory + "/header", directory + "/header.kept") == 0)
        #expect {
            _ = try CompressedBlockDevice(Self.configuration(directory))
        } throws: { error in
            "\(error)".contains("its header is missing while slots is there")
        }
        #expect(rename(directory + "/header.kept", directory + "/header") == 0)
        let device = try CompressedBlockDevice(Self.configuration(directory))
        #expect(device.resumption != nil)
    }

    @Test("a state killed while being made (no magic in its header) is made again from nothing")
    func halfMadeStateStartsEmpty() throws {
        let directory = try StatePlacementTests.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.fill(directory, seed: 0x4841_4C46)
        let header = try FileDescriptor.open(directory + "/" + StateHeader.fileName, .readWrite)
        _ = try header.writeAll(toAbsoluteOffset: 0, [UInt8](repeating: 0, count: 8))
        try header.close()
        let device = try CompressedBlockDevice(Self.configuration(directory))
        #expect(device.resumption == nil)
        #expect(device.figures()[.origDataSize] == 0)
        #expect(try device.read(count: 64 * pageSize, at: 0) == [UInt8](repeating: 0, count: 64 * pageSize))
        withExtendedLifetime(device) {}
        let again = try CompressedBlockDevice(Self.configuration(directory))
        #expect(again.resumption?.starts == 2)
    }

    /// Reads and writes one 64-bit word of a state file.
    static func patchWord(_ path: String, at offset: Int, _ change: (UInt64) -> UInt64) throws {
        let file = try FileDescriptor.open(path, .readWrite)
        defer { try? file.close() }
        var word: UInt64 = 0
        _ = try withUnsafeMutableBytes(of: &word) { try file.read(fromAbsoluteOffset: Int64(offset), into: $0) }
        word = change(word)
        _ = try withUnsafeBytes(of: &word) { try file.write(toAbsoluteOffset: Int64(offset), $0) }
    }

    @Test("what a kill leaves is mended and counted: held locks, an object no page names, a migration's copy")
    func mendsWhatAKillLeaves() throws {
        let directory = try StatePlacementTests.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let corpus = try Corpus.pages(64)
        var lockedPage = 0
        var copiedFrame: (from: UInt32, to: UInt32)?
        do {
            let device = try CompressedBlockDevice(Self.configuration(directory))
            for page in 0..<64 { try device.write(Array(corpus[page]), at: page * pageSize) }
            // An object allocated, whose page was never switched to it:
            // what a kill between the two leaves.
            _ = try device.pool.allocate(size: 1000)
            let used = device.pool.arena.usedFrames(inBlock: 0)
            let free = try #require((0..<UInt32(FrameArena.framesPerBlock)).first { !used.contains($0) })
            copiedFrame = (try #require(used.first), free)
            lockedPage = 17
        }
        // A frame caught between its copy and the free of its source: both
        // name one place in one zspage, with the same bytes.
        let (source, target) = copiedFrame!
        let arena = try FileDescriptor.open(directory + "/arena", .readWrite)
        var bytes = [UInt8](repeating: 0, count: pageSize)
        _ = try bytes.withUnsafeMutableBytes {
            try arena.read(fromAbsoluteOffset: Int64(Int(source) * pageSize), into: $0)
        }
        _ = try arena.writeAll(toAbsoluteOffset: Int64(Int(target) * pageSize), bytes)
        try arena.close()
        var owner: UInt64 = 0
        try Self.patchWord(directory + "/frame-owners", at: Int(source) * 8) { word in
            owner = word
            return word
        }
        try Self.patchWord(directory + "/frame-owners", at: Int(target) * 8) { _ in owner }
        // Locks the dead process held: a slot lock and a handle pin.
        try Self.patchWord(directory + "/slots", at: lockedPage * SlotTable.slotBytes) { $0 | SlotTable.lockBit }
        try Self.patchWord(directory + "/handles", at: 8) { $0 | HandleTable.pinBit }

        let device = try CompressedBlockDevice(Self.configuration(directory))
        // Checked in the file first: a lock left held would hang what follows.
        var slotWord: UInt64 = 0
        var handleWord: UInt64 = 0
        try Self.patchWord(directory + "/slots", at: lockedPage * SlotTable.slotBytes) {
            slotWord = $0; return $0
        }
        try Self.patchWord(directory + "/handles", at: 8) {
            handleWord = $0; return $0
        }
        try #require(slotWord & SlotTable.lockBit == 0, "the slot lock a dead process held is still set")
        try #require(handleWord & HandleTable.pinBit == 0, "the pin a dead process held is still set")
        let resumption = try #require(device.resumption)
        #expect(resumption.pool.objectsFreed == 1)
        #expect(resumption.pool.framesFreed == 1)
        #expect(device.pool.arena.owner(of: target) == nil || device.pool.arena.owner(of: source) == nil)
        for page in 0..<64 {
            #expect(try device.read(count: pageSize, at: page * pageSize) == Array(corpus[page]), "page \(page)")
        }
        try device.validate()
        // The lock and the pin are free: the page is written and freed.
        try device.write(Array(corpus[0]), at: lockedPage * pageSize)
        try device.discard(offset: 0, length: 64 * pageSize)
        try device.validate()
    }

    @Test("a page that names a handle the table does not hold is refused as damage, not mended by guessing")
    func refusesDamage() throws {
        let directory = try StatePlacementTests.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let device = try CompressedBlockDevice(Self.configuration(directory))
            try device.write(Array(try Corpus.pages(1)[0]), at: 5 * pageSize)
        }
        // Clear the handle's entry: the page's handle is then not held.
        try Self.patchWord(directory + "/handles", at: 0) { _ in 0 }
        #expect {
            _ = try CompressedBlockDevice(Self.configuration(directory))
        } throws: { error in
            "\(error)".contains("cannot be resumed") && "\(error)".contains("which the handle table does not hold")
        }
    }
    /// Every file of a state directory, byte for byte.
    static func contents(of directory: String) throws -> [String: Data] {
        var files: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
            files[name] = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name))
        }
        return files
    }

    @Test("a slot this build cannot read is refused, and a refused state is left byte for byte as it was found")
    func refusesAnUnreadableSlotAndLeavesItAlone() throws {
        let directory = try StatePlacementTests.stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let corpus = try Corpus.pages(8)
        do {
            let device = try CompressedBlockDevice(Self.configuration(directory))
            for page in 0..<8 { try device.write(Array(corpus[page]), at: page * pageSize) }
        }
        // Page 3's lock held by the dead process (resume would clear it),
        // page 5's object written by an algorithm no build has (3).
        try Self.patchWord(directory + "/slots", at: 3 * SlotTable.slotBytes) { $0 | SlotTable.lockBit }
        try Self.patchWord(directory + "/slots", at: 5 * SlotTable.slotBytes) {
            $0 & ~SlotTable.hugeBit | SlotTable.algorithmMask
        }
        let before = try Self.contents(of: directory)
        #expect {
            _ = try CompressedBlockDevice(Self.configuration(directory))
        } throws: { error in
            "\(error)".contains("cannot be resumed") && "\(error)".contains("slot 5 holds an object")
        }
        #expect(try Self.contents(of: directory) == before, "a refused start changed the state's files")

        // Damage the pool finds (page 0's handle is not held), with a pin
        // held on page 1's handle that resume would clear: refused, and
        // again nothing changes.
        try Self.patchWord(directory + "/slots", at: 5 * SlotTable.slotBytes) {
            $0 & ~SlotTable.algorithmMask
        }
        try Self.patchWord(directory + "/handles", at: 0) { _ in 0 }
        try Self.patchWord(directory + "/handles", at: 8) { $0 | HandleTable.pinBit }
        let beforePool = try Self.contents(of: directory)
        #expect {
            _ = try CompressedBlockDevice(Self.configuration(directory))
        } throws: { error in
            "\(error)".contains("which the handle table does not hold")
        }
        #expect(try Self.contents(of: directory) == beforePool, "a refused start changed the state's files")
    }
}
