import Foundation
import Synchronization
import Testing
import TestSupport
import ZNBDSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Levels for the lock-order tests, in the shape of the real ones (ZRAM's
/// and ZSPool's LockLevels.swift): an outer spin lock, two mutexes, a leaf.
extension LockLevel {
    fileprivate static let outer = LockLevel(order: 1, name: "outer")
    fileprivate static let spin = LockLevel(order: 2, name: "spin")
    fileprivate static let middle = LockLevel(order: 3, name: "middle")
    fileprivate static let inner = LockLevel(order: 4, name: "inner")
}

@Suite("ZNBDSystem: mappings, spin locks and the lock order")
struct ZNBDSystemTests {
    /// RLIMIT_MEMLOCK's soft limit in bytes (Int.max when unlimited).
    static var memoryLockLimit: Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0 else { return 0 }
        return Int(clamping: limit.rlim_cur)  // RLIM_INFINITY is all ones: Int.max
    }

    @Test("an anonymous mapping is aligned, reads zero, and reads zero again after discard")
    func anonymousMapping() throws {
        let mapping = try AnonymousMapping(byteCount: 3 * pageSize + 1, alignment: 2 << 20)
        #expect(Int(bitPattern: mapping.base) % (2 << 20) == 0)
        #expect(mapping.byteCount == 4 * pageSize)
        let bytes = UnsafeMutableRawBufferPointer(start: mapping.base, count: mapping.byteCount)
        #expect(bytes.allSatisfy { $0 == 0 })
        bytes.initializeMemory(as: UInt8.self, repeating: 0xA5)
        mapping.discard(offset: pageSize, count: 2 * pageSize)
        #expect(bytes[..<pageSize].allSatisfy { $0 == 0xA5 })
        #expect(bytes[pageSize..<(3 * pageSize)].allSatisfy { $0 == 0 })
        #expect(bytes[(3 * pageSize)...].allSatisfy { $0 == 0xA5 })
    }

    // The sanitizers' runtime replaces mlock with a no-op that returns 0.
    @Test(
        "discard gives locked pages back too (the daemon runs under mlockall)",
        .enabled(
            if: getenv("ZNBD_SANITIZER") == nil, "under a sanitizer mlock locks nothing: no locked page to discard"),
        .enabled(
            if: ZNBDSystemTests.memoryLockLimit >= 16 * pageSize,
            "RLIMIT_MEMLOCK is \(ZNBDSystemTests.memoryLockLimit) bytes here, under the 16 pages this test locks"))
    func discardOfLockedPages() throws {
        let pages = 16
        let mapping = try AnonymousMapping(byteCount: pages * pageSize)
        try #require(mlock(mapping.base, mapping.byteCount) == 0, "mlock of \(pages) pages: errno \(errno)")
        defer { munlock(mapping.base, mapping.byteCount) }
        let bytes = UnsafeMutableRawBufferPointer(start: mapping.base, count: mapping.byteCount)
        bytes.initializeMemory(as: UInt8.self, repeating: 0x5A)
        // What makes this case: the kernel refuses MADV_DONTNEED on locked pages.
        #expect(madvise(mapping.base, pageSize, MADV_DONTNEED) == -1 && errno == EINVAL)

        mapping.discard(offset: 4 * pageSize, count: 8 * pageSize)
        var resident = [UInt8](repeating: 0, count: pages)
        #expect(mincore(mapping.base, mapping.byteCount, &resident) == 0)
        let residentPages = resident.map { $0 & 1 }
        #expect(residentPages == [1, 1, 1, 1] + Array(repeating: 0, count: 8) + [1, 1, 1, 1])
        #expect(bytes[..<(4 * pageSize)].allSatisfy { $0 == 0x5A })
        #expect(bytes[(4 * pageSize)..<(12 * pageSize)].allSatisfy { $0 == 0 })
        #expect(bytes[(12 * pageSize)...].allSatisfy { $0 == 0x5A })
    }

    @Test("a bit spin lock keeps the word's other bits, refuses what `admit` refuses, and excludes")
    func bitSpinLock() {
        let word = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 1)
        word.initialize(to: Atomic(0x1234))
        defer { word.deallocate() }
        let lock = BitSpinLock(word: word, bit: 1 << 63, level: .unchecked)
        #expect(lock.lock() == 0x1234)
        #expect(lock.tryLock() == nil, "held")
        lock.unlock(storing: 0x99)
        #expect(word.pointee.load(ordering: .relaxed) == 0x99)
        #expect(lock.lock(admitting: { $0 != 0x99 }) == nil, "refused, nothing taken")
        #expect(lock.tryLock() == 0x99)
        lock.unlock()

        // Two threads add under the lock, through the word's data bits.
        runOnThreads(2) { _ in
            for _ in 0..<100_000 {
                let value = lock.lock()
                lock.unlock(storing: value + 1)
            }
        }
        #expect(word.pointee.load(ordering: .relaxed) == 0x99 + 200_000)
    }

    @Test("a reader/writer spin lock: readers share, the writer only tries")
    func readerWriterSpinLock() {
        let word = UnsafeMutablePointer<Atomic<Int32>>.allocate(capacity: 1)
        word.initialize(to: Atomic(0))
        defer { word.deallocate() }
        let lock = ReaderWriterSpinLock(word: word, level: .unchecked)
        lock.lockShared()
        lock.lockShared()
        #expect(!lock.tryLockExclusive())
        lock.unlockShared()
        lock.unlockShared()
        #expect(lock.tryLockExclusive())
        #expect(!lock.tryLockExclusive())
        lock.unlockExclusive()
        #expect(word.pointee.load(ordering: .relaxed) == 0)
    }

    @Test("the lock order allows waits downwards, tries anywhere, and ranked nesting")
    func lockOrderAllows() {
        let outer = Locked(0, level: .outer)
        let middle = Locked(0, level: .middle)
        let inner = Locked(0, level: .inner)
        let first = Locked(0, level: .middle, rank: 1)
        let second = Locked(0, level: .middle, rank: 2)
        outer.withLock { _ in middle.withLock { _ in inner.withLock { _ in } } }
        first.withLock(ordered: true) { _ in second.withLock(ordered: true) { _ in } }
        // A try of a lower level never waits, so it is allowed.
        let word = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 1)
        word.initialize(to: Atomic(0))
        defer { word.deallocate() }
        let spin = BitSpinLock(word: word, bit: 1, level: .spin)
        inner.withLock { _ in
            #expect(spin.tryLock() != nil)
            #expect(LockOrder.heldCount == (LockOrder.isChecking ? 2 : 0))
            spin.unlock()
        }
        #expect(LockOrder.heldCount == 0)
    }

    @Test("waiting for a lock above one held traps in checked builds", .enabled(if: LockOrder.isChecking))
    func lockOrderTraps() async {
        await #expect(processExitsWith: .failure) {
            let middle = Locked(0, level: .middle)
            let outer = Locked(0, level: .outer)
            middle.withLock { _ in outer.withLock { _ in } }
        }
        await #expect(processExitsWith: .failure) {
            let first = Locked(0, level: .middle, rank: 1)
            let second = Locked(0, level: .middle, rank: 2)
            first.withLock { _ in second.withLock { _ in } }  // same level, not ordered
        }
        await #expect(processExitsWith: .failure) {
            let word = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 1)
            word.initialize(to: Atomic(0))
            BitSpinLock(word: word, bit: 1, level: .spin).unlock()  // never taken
        }
    }
}
