// Maintenance: the thread that gives freed memory back on its own.
//
// Discard, write-zeroes and overwrites free pool objects at once, but the
// frames around them stay: a zspage with one live object keeps all its
// frames, and a 2 MiB block with one live frame stays resident. zsmalloc
// frees such frames when someone writes to zram's `compact` attribute, or
// when the kernel's shrinker asks under memory pressure. DeviceMaintenance
// does both without being asked:
//
// - compaction (ZSPool.compact): objects move out of the emptiest zspages of
//   each class into the fullest, and emptied zspages free their frames;
// - migration (ZSPool.migrateFrames): frames move out of the sparsest resident
//   blocks into the densest, and emptied blocks go back to the kernel;
// - then glibc's free heap is trimmed (at most every `heapTrimInterval`,
//   always on pressure and manual passes).
//
// WHEN (the triggers, checked every `pollInterval`):
// - discard: a burst of discards or write-zeroes freed `discardBurstObjects`
//   or more objects, and has been quiet for `discardQuiet` (or has gone on
//   for `discardMaximumDelay`): an fstrim is followed by a pass within a
//   second or so.
// - waste: every second, what a pass could give back (ZSPool.reclaimable:
//   compactable zspages, and free frames in resident blocks when migration
//   is on) exceeds `wasteThreshold` (by default max(10% of pool memory,
//   16 MiB)) above what the last pass could not give back.
// - pressure: the kernel's memory-pressure trigger (PSI) fired: a pass at
//   once, without rests (the analogue of zsmalloc's shrinker).
// - manual: `znbdctl compact` (runPass(.manual) from the control thread).
// A burst of recompression (below) counts as a burst of discards: each page
// stored again frees its old object and leaves a hole.
//
// RECOMPRESSION (with a recompression codec and `recompressIdleAge`): every
// `pollInterval` the thread takes one slice of the device, resuming where
// the last stopped: at most `recompressScanSlots` slots looked at and
// `recompressPagesPerSecond` × the interval pages compressed again, of the
// pages not read or written for the age (Recompression.swift). A sweep of a
// device of idle pages thus costs a steady, bounded share of one core.
//
// HOW HARD: a pass works in slices of `sliceBytes` (objects copied, or
// frames migrated) and rests between them so that it takes `dutyCycle` of
// the time; manual and pressure passes do not rest. Compaction and
// migration only *try* the pins and zspage locks that I/O holds, and hold a
// class lock for one zspage at a time, so foreground I/O is never blocked
// for long (ZSPool.swift).
//
// LOCKS: one pass at a time, under `passLock` (LockLevel.maintenance, above
// everything the pass takes). The thread sleeps in poll(2) on a pipe and
// the PSI trigger (ZNBDSystem.Sleeper).

import Synchronization
public import SystemPackage
public import ZNBDFigures
import ZNBDSystem
public import ZSPool

/// Why a maintenance pass ran.
public enum MaintenanceTrigger: String, Sendable, CaseIterable, Equatable {
    case waste, discard, pressure, manual
}

/// When and how hard the maintenance thread works.
public struct MaintenancePolicy: Sendable {
    /// Whether the thread runs at all (`--compaction auto|off`). Manual
    /// passes work either way.
    public var automatic = true
    /// Frame migration after compaction (`--migration auto|off`).
    public var migrationEnabled = true
    /// Reclaimable bytes that start a pass; nil: max(10% of pool memory, 16 MiB).
    public var wasteThreshold: Int?
    public var pollInterval: Duration = .milliseconds(100)
    public var wasteCheckInterval: Duration = .seconds(1)
    public var discardBurstObjects = 256
    public var discardQuiet: Duration = .milliseconds(200)
    public var discardMaximumDelay: Duration = .seconds(2)
    /// Work between rests: bytes of objects copied, or of frames migrated.
    public var sliceBytes = 4 << 20
    /// The share of a pass's time spent working (0 < d ≤ 1).
    public var dutyCycle = 0.5
    /// The least time between two trims of the C heap (malloc_trim locks
    /// every malloc arena while it walks them); pressure passes always trim.
    public var heapTrimInterval: Duration = .seconds(10)
    /// Listen for the kernel's memory pressure (PSI).
    public var pressure = true
    /// Recompress pages not read or written for this long with the device's
    /// recompression codec (`--recompress-idle-age`); nil: only on request.
    public var recompressIdleAge: Duration?
    /// The most pages the thread compresses again per second.
    public var recompressPagesPerSecond = 2048
    /// The most slots one slice looks at, so that a slice stays short on a
    /// large device with few idle pages.
    public var recompressScanSlots = 1 << 16

    public init() {}

    /// No thread: passes only when asked (`--compaction off`).
    public static var manualOnly: MaintenancePolicy {
        var policy = MaintenancePolicy()
        policy.automatic = false
        return policy
    }

    /// Everything at once, all the time: for stress tests.
    public static var aggressive: MaintenancePolicy {
        var policy = MaintenancePolicy()
        policy.wasteThreshold = 0
        policy.pollInterval = .milliseconds(1)
        policy.wasteCheckInterval = .milliseconds(1)
        policy.discardBurstObjects = 1
        policy.discardQuiet = .zero
        policy.sliceBytes = 64 << 10
        policy.dutyCycle = 1
        return policy
    }

    func threshold(poolBytes: Int) -> Int {
        wasteThreshold ?? max(poolBytes / 10, 16 << 20)
    }
}

/// What one pass did.
public struct MaintenancePass: Sendable, Equatable {
    public var trigger: MaintenanceTrigger
    public var compaction = CompactionResult()
    public var migration = MigrationResult()
    /// Whether malloc_trim gave heap memory back.
    public var heapTrimmed = false
    public var duration: Duration = .zero
    public var poolBytesBefore = 0
    public var poolBytesAfter = 0
}

/// The maintenance thread's settings and running totals.
public struct MaintenanceFigures: Sendable, Equatable {
    public var automatic: Bool
    public var migrationEnabled: Bool
    /// The PSI file the pressure trigger is set on, or nil without one.
    public var pressureSource: String?
    /// Passes by trigger, what compaction and migration did in all of them,
    /// heap trims, time spent, recompression sweeps.
    public var totals: Figures<MaintenanceFigure>
    public var lastPass: MaintenancePass?
    /// The age after which the thread recompresses pages; nil: it does not.
    public var recompressIdleAge: Duration?
    /// What the thread's recompression slices did.
    public var recompression: Figures<RecompressionFigure>
}

/// What the thread adds up, under its lock; `figures()` turns it into
/// MaintenanceFigures.
private struct MaintenanceTotals {
    var figures: MaintenanceFigures
    /// Kept exact here (a slice can take less than a millisecond); the
    /// figure is in whole milliseconds.
    var timeSpent: Duration = .zero

    mutating func record(_ pass: MaintenancePass) {
        figures.totals[.passes, pass.trigger.rawValue] += 1
        figures.totals[.pagesCompacted] += pass.compaction.framesFreed
        figures.totals[.objectsMoved] += pass.compaction.objectsMoved
        figures.totals[.bytesMoved] += pass.compaction.bytesMoved
        figures.totals[.objectsSkipped] += pass.compaction.objectsSkipped
        figures.totals[.framesMigrated] += pass.migration.framesMigrated
        figures.totals[.framesSkipped] += pass.migration.framesSkipped
        figures.totals[.blocksReleased] += pass.migration.blocksReleased
        if pass.heapTrimmed { figures.totals[.heapTrims] += 1 }
        timeSpent += pass.duration
        figures.lastPass = pass
    }

    mutating func record(_ slice: RecompressionResult, sweepDone: Bool, spent: Duration) {
        figures.recompression.add(slice.figures)
        if sweepDone { figures.totals[.recompressionSweeps] += 1 }
        timeSpent += spent
    }

    /// A copy to read after the lock (Figures.detached says why it must
    /// share no storage with the totals).
    var snapshot: MaintenanceFigures {
        var snapshot = figures
        snapshot.totals = figures.totals.detached()
        snapshot.recompression = figures.recompression.detached()
        snapshot.totals[.timeSpent] = Int(timeSpent / .milliseconds(1))
        return snapshot
    }
}

public final class DeviceMaintenance: Sendable {
    public let device: CompressedBlockDevice
    public let policy: MaintenancePolicy
    private let sleeper: Sleeper
    private let passLock = Locked((), level: .maintenance)
    private let totals: Locked<MaintenanceTotals>
    private let stopping = Atomic<Bool>(false)
    /// A pass that must not wait is queued behind one that rests: stop resting.
    private let hurry = Atomic<Bool>(false)
    /// A manual recompression run is under way.
    private let manualRecompression = Atomic<Bool>(false)
    private let thread = Locked<BackgroundThread?>(nil)
    /// When the heap was last trimmed; under `passLock`.
    private let lastHeapTrim = Locked<ContinuousClock.Instant?>(nil)

    /// Sets up maintenance of `device`; `start()` runs the thread. Without a
    /// memory-pressure trigger (no PSI here, or no permission) the other
    /// triggers still work: `figures().pressureSource` says which it is.
    public init(device: CompressedBlockDevice, policy: MaintenancePolicy) throws(Errno) {
        self.device = device
        self.policy = policy
        let pressure = policy.pressure ? try? MemoryPressureTrigger() : nil
        sleeper = try Sleeper(pressure: pressure)
        var passes = Figures<MaintenanceFigure>()
        for trigger in MaintenanceTrigger.allCases { passes[.passes, trigger.rawValue] = 0 }
        totals = Locked(
            MaintenanceTotals(
                figures: MaintenanceFigures(
                    automatic: policy.automatic, migrationEnabled: policy.migrationEnabled,
                    pressureSource: pressure?.path, totals: passes, lastPass: nil,
                    recompressIdleAge: device.recompressionAlgorithm == nil ? nil : policy.recompressIdleAge,
                    recompression: Figures())))
    }

    /// Starts the thread, when the policy is automatic.
    public func start() {
        guard policy.automatic else { return }
        thread.withLock { thread in
            guard thread == nil else { return }
            thread = BackgroundThread(name: "znbd-maintain") { [self] in run() }
        }
    }

    /// Stops the thread (a pass under way ends after its current slice).
    public func stop() {
        stopping.store(true, ordering: .releasing)
        sleeper.wake()
        thread.withLock { thread in
            thread?.join()
            thread = nil
        }
    }

    public func figures() -> MaintenanceFigures {
        totals.withLock { $0.snapshot }
    }

    // MARK: The thread

    /// Objects freed with nothing, or something smaller, in their place.
    private var objectsFreed: Int { device.objectsFreedWithoutReplacement + device.objectsRecompressed }

    private func run() {
        var recompression = RecompressionCursor()
        var discardedAtLastPass = objectsFreed
        var discardedSeen = discardedAtLastPass
        var lastDiscardChange = ContinuousClock.now
        var burstStart: ContinuousClock.Instant?
        var nextWasteCheck = ContinuousClock.now + policy.wasteCheckInterval
        var unreclaimedAfterLastPass = 0
        while !stopping.load(ordering: .acquiring) {
            let reason = sleeper.sleep(for: policy.pollInterval)
            guard !stopping.load(ordering: .acquiring) else { return }
            let now = ContinuousClock.now
            var trigger: MaintenanceTrigger?
            if reason == .pressure { trigger = .pressure }

            let discarded = objectsFreed
            if discarded != discardedSeen {
                discardedSeen = discarded
                lastDiscardChange = now
                if burstStart == nil { burstStart = now }
            }
            let burst = burstStart != nil && discarded - discardedAtLastPass >= policy.discardBurstObjects
            if trigger == nil, burst, let start = burstStart,
                now - lastDiscardChange >= policy.discardQuiet || now - start >= policy.discardMaximumDelay
            {
                trigger = .discard
            }
            // A burst still under way will start its own pass when it ends.
            if trigger == nil, !burst, now >= nextWasteCheck {
                nextWasteCheck = now + policy.wasteCheckInterval
                let reclaimable = reclaimableBytes()
                if reclaimable > unreclaimedAfterLastPass + policy.threshold(poolBytes: device.memUsedTotal) {
                    trigger = .waste
                }
            }
            guard let trigger else {
                recompressSlice(&recompression)
                continue
            }
            runPass(trigger)
            discardedAtLastPass = objectsFreed
            discardedSeen = discardedAtLastPass
            burstStart = nil
            unreclaimedAfterLastPass = reclaimableBytes()
        }
    }

    /// Where the thread's recompression resumes.
    private struct RecompressionCursor {
        var page = 0
    }

    /// One slice of recompression of pages idle for the policy's age.
    private func recompressSlice(_ cursor: inout RecompressionCursor) {
        guard let age = policy.recompressIdleAge, device.recompressionAlgorithm != nil else { return }
        let perSlice = Double(policy.recompressPagesPerSecond) * (policy.pollInterval / .seconds(1))
        let request = RecompressionRequest(type: .idle, maxPages: max(1, Int(perSlice)), idleAge: age)
        let pageCount = device.pageCount
        let end = min(pageCount, cursor.page + policy.recompressScanSlots)
        let clock = ContinuousClock()
        let start = clock.now
        let (result, next) = passLock.withLock { _ in device.recompress(request, pages: cursor.page..<end) }
        let sweepDone = next >= pageCount
        cursor.page = sweepDone ? 0 : next
        let spent = clock.now - start
        totals.withLock { $0.record(result, sweepDone: sweepDone, spent: spent) }
    }

    /// Recompresses the pages `request` selects over the whole device, now
    /// (`znbdctl recompress`). It works in slices of `recompressScanSlots`
    /// slots, each under the pass lock, so that the thread's passes (a
    /// pressure pass above all) run between them, and it ends early when
    /// the thread is stopped. One manual run at a time.
    public func recompress(_ request: RecompressionRequest) throws(RecompressionRefused) -> RecompressionResult {
        guard device.recompressionAlgorithm != nil else { throw .unavailable }
        guard manualRecompression.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            throw .busy
        }
        defer { manualRecompression.store(false, ordering: .releasing) }
        var result = RecompressionResult()
        var page = 0
        while page < device.pageCount, !stopping.load(ordering: .acquiring) {
            var slice = request
            if let maxPages = request.maxPages {
                guard result[.pagesTried] < maxPages else { break }
                slice.maxPages = maxPages - result[.pagesTried]
            }
            let end = min(device.pageCount, page + policy.recompressScanSlots)
            let (part, next) = passLock.withLock { _ in device.recompress(slice, pages: page..<end) }
            result.figures.add(part.figures)
            page = next
        }
        result.finished = page >= device.pageCount
        return result
    }

    private func reclaimableBytes() -> Int {
        let reclaimable = device.pool.reclaimable()
        return reclaimable.compactableBytes + (policy.migrationEnabled ? reclaimable.strandedBytes : 0)
    }

    // MARK: Passes

    /// Compacts, then (with migration on) moves frames out of sparse blocks
    /// and releases emptied blocks, then trims the C heap. Rests between
    /// slices unless `trigger` is manual or pressure, which also make a
    /// resting pass of the thread hurry so that this one need not wait.
    @discardableResult
    public func runPass(_ trigger: MaintenanceTrigger) -> MaintenancePass {
        let urgent = trigger == .manual || trigger == .pressure
        if urgent { hurry.store(true, ordering: .relaxed) }
        return passLock.withLock { _ in
            if urgent { hurry.store(false, ordering: .relaxed) }
            let clock = ContinuousClock()
            let start = clock.now
            var pass = MaintenancePass(trigger: trigger, poolBytesBefore: device.memUsedTotal)
            let frames = max(1, policy.sliceBytes / ZSPool.frameSize)
            // Compaction first: migration then moves only frames that stay.
            var compacted = false
            var migrated = !policy.migrationEnabled
            while !(compacted && migrated) {
                if stopping.load(ordering: .acquiring) && trigger != .manual { break }
                let sliceStart = clock.now
                if !compacted {
                    let slice = device.pool.compact(movingAtMost: policy.sliceBytes)
                    pass.compaction.add(slice)
                    compacted = slice.finished
                } else {
                    let slice = device.pool.migrateFrames(atMost: frames)
                    pass.migration.add(slice)
                    migrated = slice.finished
                }
                if !urgent && !(compacted && migrated) { rest(after: clock.now - sliceStart) }
            }
            pass.compaction.finished = compacted
            pass.migration.finished = migrated
            pass.heapTrimmed = lastHeapTrim.withLock { last in
                guard
                    trigger == .pressure || trigger == .manual
                        || last.map({ clock.now - $0 >= policy.heapTrimInterval }) ?? true
                else { return false }
                last = clock.now
                return HeapPolicy.trim()
            }
            pass.duration = clock.now - start
            pass.poolBytesAfter = device.memUsedTotal
            record(pass)
            return pass
        }
    }

    /// Rests long enough that work takes `dutyCycle` of the time, unless a
    /// pass that must not wait is queued or the kernel is short of memory.
    private func rest(after work: Duration) {
        guard policy.dutyCycle < 1, !hurry.load(ordering: .relaxed) else { return }
        let pause = work * ((1 - policy.dutyCycle) / policy.dutyCycle)
        if sleeper.sleep(for: max(pause, .microseconds(200))) == .pressure { hurry.store(true, ordering: .relaxed) }
    }

    private func record(_ pass: MaintenancePass) {
        totals.withLock { $0.record(pass) }
    }
}
