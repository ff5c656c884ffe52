import Testing
import ZNBDFigures
import TestSupport
import ZNBDSystem
@testable import ZSPool

/// What the pool keeps beside its objects: spare zspages, the zspages' slot
/// and frame lists, and the per-CPU caches of ids.
@Suite("ZSPool metadata: spares, zspage lists, id caches")
struct PoolMetadataTests {
    @Test("a class of few objects per zspage keeps one empty spare while it has objects, and none once empty")
    func spareZspage() throws {
        let pool = try ZSPool(.init(capacityBytes: 16 << 20))
        let spec = pool.sizeClasses.classes[pool.sizeClasses.classIndex(forSize: 2048)]
        #expect(spec.objectsPerZspage == 2 && spec.framesPerZspage == 1 && spec.keepsSpareZspage)
        let frame = ZSPool.frameSize
        let handles = try (0..<6).map { _ in try pool.allocate(size: 2048) }
        #expect(pool.usedBytes == 3 * frame)
        // Emptying one zspage keeps it, on the empty list; emptying a second
        // frees that one, as a class keeps one spare at most.
        #expect(pool.free(handles[0]) && pool.free(handles[1]))
        #expect(pool.usedBytes == 3 * frame)
        #expect(pool.figures().classes[spec.index].zspagesByFullness[FullnessGroup.empty] == 1)
        #expect(pool.free(handles[2]) && pool.free(handles[3]))
        #expect(pool.usedBytes == 2 * frame)
        try pool.validate()
        // The spare is used before a new zspage is made.
        let again = try pool.allocate(size: 2048)
        #expect(pool.usedBytes == 2 * frame)
        // A class whose last object goes holds nothing, spare included.
        for handle in [handles[4], handles[5], again] { #expect(pool.free(handle)) }
        #expect(pool.usedBytes == 0)
        try pool.validate()
    }

    @Test("compaction gives a spare back, in the huge class too; classes of many objects per zspage keep none")
    func compactionFreesSpares() throws {
        let pool = try ZSPool(.init(capacityBytes: 16 << 20))
        let frame = ZSPool.frameSize
        let raw = try (0..<3).map { _ in try pool.allocate(size: 4096) }
        #expect(pool.free(raw[0]))
        #expect(pool.usedBytes == 3 * frame, "the huge class keeps its emptied frame as a spare")
        let result = pool.compact()
        #expect(result.framesFreed == 1)
        #expect(pool.usedBytes == 2 * frame)
        try pool.validate()

        let spec = pool.sizeClasses.classes[pool.sizeClasses.classIndex(forSize: 512)]
        #expect(!spec.keepsSpareZspage)
        let small = try (0..<(spec.objectsPerZspage + 1)).map { _ in try pool.allocate(size: 512) }
        let before = pool.usedBytes
        for handle in small.dropLast() { #expect(pool.free(handle)) }
        #expect(
            pool.usedBytes == before - spec.framesPerZspage * frame,
            "an emptied zspage of \(spec.objectsPerZspage) objects is freed at once")
        for handle in raw.dropFirst() + small.suffix(1) { #expect(pool.free(handle)) }
        #expect(pool.usedBytes == 0)
        try pool.validate()
    }

    @Test("one-frame zspages of one or two objects keep their lists in the record; others on the heap, counted")
    func zspageLists() throws {
        let pool = try ZSPool(.init(capacityBytes: 16 << 20))
        let inRecord = try [2048, 4096].map { try pool.allocate(size: $0) }
        for (handle, size) in zip(inRecord, [2048, 4096]) { try pool.write(handle, size: size, seed: UInt64(size)) }
        #expect(pool.figures()[.zspageListBytes] == 0)
        let spec = pool.sizeClasses.classes[pool.sizeClasses.classIndex(forSize: 1000)]
        let onHeap = try pool.allocate(size: 1000)
        try pool.write(onHeap, size: 1000, seed: 7)
        #expect(pool.figures()[.zspageListBytes] == (spec.objectsPerZspage + spec.framesPerZspage) * 4)
        for (handle, size) in zip(inRecord, [2048, 4096]) {
            #expect(try pool.holds(handle, size: size, seed: UInt64(size)))
        }
        #expect(try pool.holds(onHeap, size: 1000, seed: 7))
        try pool.validate()
        for handle in inRecord + [onHeap] { #expect(pool.free(handle)) }
        #expect(pool.figures()[.zspageListBytes] == 0)
    }

    @Test(
        "ids cached on one CPU are still handed out, once each, when another CPU runs the table dry",
        .enabled(
            if: CurrentCPU.allowedCPUs().count >= 2,
            "needs two CPUs it may run on: ids parked in one CPU's cache, asked for on another"))
    func idCachesAcrossCPUs() throws {
        let cpus = CurrentCPU.allowedCPUs()
        let table = try ChunkedTable(capacity: 64, chunkShift: 4, chunkBytes: 4096, placement: .anonymous, name: "ids")
        let outcome = Locked<(pinned: Bool, ids: [UInt32], liveAtEnd: Int)>((false, [], 0))
        runOnThreads(1) { _ in
            // On one CPU, one id out and back: its cache now holds a batch.
            guard CurrentCPU.pinCallingThread(to: cpus[0]) else { return }
            guard let first = table.allocateId() else { return }
            table.releaseId(first)
            // On another, everything: the shared ids, then the parked ones.
            guard CurrentCPU.pinCallingThread(to: cpus[1]) else { return }
            var ids: [UInt32] = []
            while let id = table.allocateId() { ids.append(id) }
            let live = table.usage().live
            outcome.withLock { $0 = (true, ids, live) }
        }
        let (pinned, ids, liveAtEnd) = outcome.withLock { $0 }
        try #require(pinned, "could not pin a thread to CPU \(cpus[0]) and then CPU \(cpus[1])")
        #expect(ids.count == 64 && Set(ids).count == 64, "\(ids.count) ids, \(Set(ids).count) distinct, of 64")
        #expect(liveAtEnd == 64)
        for id in ids { table.releaseId(id) }
        #expect(table.usage().live == 0)
    }
}
