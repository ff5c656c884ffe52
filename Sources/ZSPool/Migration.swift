/// What happened to one frame asked to migrate (zs_page_migrate's outcomes).
public enum FrameMigrationOutcome: Sendable, Equatable {
    /// The contents now live in this frame; the old one is free.
    case migrated(to: UInt32)
    /// A reader held the zspage (zsmalloc's -EAGAIN): try again later.
    case busy
    /// The frame is no longer in use (zsmalloc's -EINVAL after RCU free).
    case notInUse
    /// The target block has no free frame.
    case targetFull
}

/// What one frame-migration pass did.
public struct MigrationResult: Sendable, Equatable {
    public var framesMigrated = 0
    /// Frames left in place because their zspage was busy.
    public var framesSkipped = 0
    /// Blocks emptied and given back to the kernel.
    public var blocksReleased = 0
    /// False when the pass stopped at its frame budget with work left.
    public var finished = true

    public init() {}

    public mutating func add(_ other: MigrationResult) {
        framesMigrated += other.framesMigrated
        framesSkipped += other.framesSkipped
        blocksReleased += other.blocksReleased
        finished = finished && other.finished
    }
}

extension ZSPool {
    /// Moves `frame`'s contents into a free frame of `block`, relinks its
    /// zspage and frees the old frame. Objects do not notice: handles name
    /// the zspage, and the zspage's frame list is updated under its write
    /// lock, which no reader holds meanwhile.
    func migrate(frame: UInt32, toBlock block: Int) -> FrameMigrationOutcome {
        // The owner recorded by the arena names the class whose lock guards
        // the frame; check it again under that lock, as the zspage may have
        // been freed (and its id reused) in between.
        guard let owner = arena.owner(of: frame) else { return .notInUse }
        let state = classStates[Int(owner.classIndex)]
        return state.lists.withLock { _ -> FrameMigrationOutcome in
            guard arena.owner(of: frame) == owner else { return .notInUse }
            let zspage = owner.zspage
            guard zspages.tryWriteLock(zspage) else { return .busy }
            defer { zspages.writeUnlock(zspage) }
            guard let target = arena.allocateMigrationTarget(inBlock: block) else {
                return .targetFull
            }
            // Copy, then switch, then free: the owner words, which outlive
            // the process, name the target only once its copy is whole.
            arena.address(of: target).copyMemory(from: arena.address(of: frame), byteCount: FrameArena.frameSize)
            zspages.record(zspage).frames[Int(owner.index)] = target
            arena.completeMigration(from: frame, to: target, owner: owner)
            return .migrated(to: target)
        }
    }

    /// Drains the sparsest resident blocks into the densest ones, frame by
    /// frame, so that emptied blocks go back to the kernel. Stops when the
    /// frames of the next-sparsest block no longer fit in denser blocks.
    ///
    /// `migratingAtMost` bounds the frames moved by this call; past it the
    /// call returns with `finished` false, and the next call picks the
    /// sparsest block again. Either way empty blocks are released.
    @discardableResult
    public func migrateFrames(atMost budget: Int = .max) -> MigrationResult {
        var result = MigrationResult()
        let releasedBefore = arena.releasedBlockCount
        var keptBlocks: Set<Int> = []
        // Each round empties or keeps one block; the bound only guards against
        // concurrent allocations refilling blocks faster than they drain.
        for _ in 0..<(2 * arena.blockCount) {
            guard result.framesMigrated < budget else {
                result.finished = false
                break
            }
            let (usage, current) = arena.residentBlockUsage()
            let partial = usage.filter { $0.usedFrames > 0 && $0.usedFrames < FrameArena.framesPerBlock }
                .sorted { ($0.usedFrames, $0.block) < ($1.usedFrames, $1.block) }
            guard
                let sourcePosition = partial.firstIndex(where: { !keptBlocks.contains($0.block) && $0.block != current }
                )
            else { break }
            let source = partial[sourcePosition]
            // Destinations: every block denser than the source, fullest first.
            var destinations = partial[(sourcePosition + 1)...].reversed().map(\.block)
            let room = partial[(sourcePosition + 1)...].reduce(0) { $0 + FrameArena.framesPerBlock - $1.usedFrames }
            guard room >= source.usedFrames, !destinations.isEmpty else { break }
            var emptied = true
            for frame in arena.usedFrames(inBlock: source.block) {
                var outcome = FrameMigrationOutcome.targetFull
                while outcome == .targetFull, let destination = destinations.first {
                    outcome = migrate(frame: frame, toBlock: destination)
                    if outcome == .targetFull { destinations.removeFirst() }
                }
                switch outcome {
                case .migrated: result.framesMigrated += 1
                case .busy:
                    result.framesSkipped += 1
                    emptied = false
                case .notInUse: break
                case .targetFull: emptied = false
                }
            }
            if !emptied { keptBlocks.insert(source.block) }
        }
        arena.releaseEmptyBlocks()
        result.blocksReleased = arena.releasedBlockCount - releasedBefore
        counters.framesMigrated.add(result.framesMigrated, ordering: .relaxed)
        counters.migrationSkips.add(result.framesSkipped, ordering: .relaxed)
        return result
    }
}
