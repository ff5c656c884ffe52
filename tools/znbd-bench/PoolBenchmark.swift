#if canImport(Glibc)
    import Glibc
#endif
import Dispatch
import Synchronization
import ZSPool

/// `znbd-bench pool [OPS_PER_THREAD]`: ZSPool's object operations beside
/// glibc malloc doing the same loop, then compaction and migration throughput.
/// `onlySize`: that size alone, without the compaction run.
func runPoolBenchmark(operationsPerThread: Int, onlySize: Int? = nil) {
    print("# pool: ns per operation (lower is better), working set 16384 objects per thread")
    print("size threads zspool_alloc_write_free malloc_alloc_write_free zspool_read")
    let sizes = onlySize.map { [$0] } ?? [1024, 2048, 4096]
    for size in sizes {
        for threads in [1, 2] {
            let pool: ZSPool
            do { pool = try ZSPool(.init(capacityBytes: 1 << 30)) } catch { fail("\(error)") }
            let churn = timeThreads(threads) { _ in poolChurn(pool, size: size, operations: operationsPerThread) }
            let reads = timeThreads(threads) { _ in poolReads(pool, size: size, operations: operationsPerThread) }
            let mallocChurn = timeThreads(threads) { _ in mallocChurnLoop(size: size, operations: operationsPerThread) }
            let perOperation = { (seconds: Double) in format(seconds * 1e9 / Double(operationsPerThread)) }
            print("\(size) \(threads) \(perOperation(churn)) \(perOperation(mallocChurn)) \(perOperation(reads))")
        }
    }
    if onlySize == nil { runCompactionBenchmark() }
}

private let workingSet = 16_384

/// Stores `workingSet` objects holding `payload`.
private func storeWorkingSet(_ pool: ZSPool, _ payload: UnsafeMutableRawBufferPointer) -> [ZSHandle] {
    var handles: [ZSHandle] = []
    handles.reserveCapacity(workingSet)
    do {
        for _ in 0..<workingSet {
            let handle = try pool.allocate(size: payload.count)
            try pool.write(handle, from: UnsafeRawBufferPointer(payload))
            handles.append(handle)
        }
    } catch {
        fail("working set: \(error)")
    }
    return handles
}

/// Each operation frees one object of the working set and stores a new one
/// in its place: allocate + write + free.
private func poolChurn(_ pool: ZSPool, size: Int, operations: Int) {
    let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    defer { payload.deallocate() }
    payload.initializeMemory(as: UInt8.self, repeating: 0x5A)
    var handles = storeWorkingSet(pool, payload)
    do {
        for operation in 0..<operations {
            let slot = (operation &* 7919) & (workingSet - 1)
            pool.free(handles[slot])
            let handle = try pool.allocate(size: size)
            try pool.write(handle, from: UnsafeRawBufferPointer(payload))
            handles[slot] = handle
        }
    } catch {
        fail("pool churn: \(error)")
    }
    for handle in handles { pool.free(handle) }
}

private func poolReads(_ pool: ZSPool, size: Int, operations: Int) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    defer { buffer.deallocate() }
    buffer.initializeMemory(as: UInt8.self, repeating: 0x33)
    let handles = storeWorkingSet(pool, buffer)
    do {
        for operation in 0..<operations {
            try pool.read(handles[(operation &* 7919) & (workingSet - 1)], into: buffer)
        }
    } catch {
        fail("pool reads: \(error)")
    }
    for handle in handles { pool.free(handle) }
}

private func mallocChurnLoop(size: Int, operations: Int) {
    let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    defer { payload.deallocate() }
    payload.initializeMemory(as: UInt8.self, repeating: 0x5A)
    var blocks = [UnsafeMutableRawPointer?](repeating: nil, count: workingSet)
    for slot in 0..<workingSet {
        guard let block = malloc(size) else { fail("malloc failed") }
        memcpy(block, payload.baseAddress!, size)
        blocks[slot] = block
    }
    for operation in 0..<operations {
        let slot = (operation &* 7919) & (workingSet - 1)
        free(blocks[slot])
        guard let block = malloc(size) else { fail("malloc failed") }
        memcpy(block, payload.baseAddress!, size)
        blocks[slot] = block
    }
    for block in blocks { free(block) }
}

/// Fill 256 MiB with objects of LZO-like sizes, free a random half, then
/// time compaction and migration.
private func runCompactionBenchmark() {
    let pool: ZSPool
    do { pool = try ZSPool(.init(capacityBytes: 384 << 20)) } catch { fail("\(error)") }
    var state: UInt64 = 12345
    func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return state >> 17
    }
    let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    defer { payload.deallocate() }
    payload.initializeMemory(as: UInt8.self, repeating: 0x11)
    var handles: [ZSHandle] = []
    var stored = 0
    do {
        while stored < 256 << 20 {
            let size = 600 + Int(next() % 3000)
            let handle = try pool.allocate(size: size)
            try pool.write(handle, from: UnsafeRawBufferPointer(rebasing: payload[..<size]))
            handles.append(handle)
            stored += size
        }
    } catch {
        fail("compaction fill: \(error)")
    }
    for index in stride(from: handles.count - 1, through: 1, by: -1) {
        handles.swapAt(index, Int(next() % UInt64(index + 1)))
    }
    for handle in handles[..<(handles.count / 2)] { pool.free(handle) }
    var start = monotonicSeconds()
    let compaction = pool.compact()
    let compactSeconds = monotonicSeconds() - start
    start = monotonicSeconds()
    let migration = pool.migrateFrames()
    let migrationSeconds = monotonicSeconds() - start
    let movedMiB = Double(compaction.bytesMoved) / 1_048_576
    let migratedMiB = Double(migration.framesMigrated * ZSPool.frameSize) / 1_048_576
    print(
        "# compaction: \(format(movedMiB)) MiB of objects moved in \(format(compactSeconds * 1000)) ms = \(format(movedMiB / compactSeconds)) MiB/s; \(compaction.framesFreed) frames freed"
    )
    print(
        "# migration: \(format(migratedMiB)) MiB of frames moved in \(format(migrationSeconds * 1000)) ms = \(format(migratedMiB / migrationSeconds)) MiB/s; \(migration.blocksReleased) blocks released"
    )
}
