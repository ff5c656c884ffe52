/// What one compaction pass did.
public struct CompactionResult: Sendable, Equatable {
    /// Frames given back by emptied zspages (the kernel's pages_compacted).
    public var framesFreed = 0
    public var objectsMoved = 0
    /// Objects left in place because someone held their pin.
    public var objectsSkipped = 0
    public var bytesMoved = 0
    /// False when the pass stopped at its byte budget with work left.
    public var finished = true

    public init() {}

    public mutating func add(_ other: CompactionResult) {
        framesFreed += other.framesFreed
        objectsMoved += other.objectsMoved
        objectsSkipped += other.objectsSkipped
        bytesMoved += other.bytesMoved
        finished = finished && other.finished
    }
}

/// Memory the pool holds beyond what its objects need, by what would free it.
public struct Reclaimable: Sendable, Equatable {
    /// Frames of zspages that compaction could empty, in bytes.
    public var compactableBytes: Int
    /// Free frames inside resident blocks, in bytes: memory the process
    /// holds that only frame migration (emptying whole blocks) gives back.
    public var strandedBytes: Int

    public var totalBytes: Int { compactableBytes + strandedBytes }
}

extension ZSPool {
    /// zs_compact: in every class, moves objects out of the least-used
    /// zspages into the most-used ones and frees the zspages it empties.
    ///
    /// `movingAtMost` bounds the bytes copied by this call: it stops after
    /// the zspage that crosses the budget (with `finished` false), and the
    /// next call goes on from the classes that still have work. So a caller
    /// can spread a large compaction over time.
    @discardableResult
    public func compact(movingAtMost budget: Int = .max) -> CompactionResult {
        var total = CompactionResult()
        for state in classStates {
            guard !state.spec.isHuge else {
                // Nothing to move in a class of one object per zspage; its
                // spare is the one frame a pass can give back. (In other
                // classes the spare is the emptiest zspage, freed first.)
                total.framesFreed += state.lists.withLock { lists in
                    guard let spare = lists.spare else { return 0 }
                    destroyZspage(spare, &lists)
                    return state.spec.framesPerZspage
                }
                continue
            }
            guard total.bytesMoved < budget else {
                total.finished = false
                break
            }
            total.add(compact(state, movingAtMost: budget - total.bytesMoved))
        }
        counters.pagesCompacted.add(total.framesFreed, ordering: .relaxed)
        counters.objectsCompacted.add(total.objectsMoved, ordering: .relaxed)
        counters.compactionSkips.add(total.objectsSkipped, ordering: .relaxed)
        return total
    }

    /// One class: a step per source zspage, each under the class lock, so that
    /// allocations and frees in the class wait for one zspage's worth of
    /// copying at most.
    private func compact(_ state: SizeClassState, movingAtMost budget: Int) -> CompactionResult {
        var result = CompactionResult()
        // Sources that kept a pinned object: not chosen again in this pass.
        var keptSources: Set<UInt32> = []
        while true {
            guard result.bytesMoved < budget else {
                result.finished = !state.lists.withLock { Self.canFreeAZspage($0, spec: state.spec) }
                return result
            }
            let progressed = state.lists.withLock { lists -> Bool in
                guard Self.canFreeAZspage(lists, spec: state.spec) else { return false }
                guard let source = emptiestZspage(lists, excluding: keptSources) else { return false }
                drain(source, spec: state.spec, &lists, into: &result)
                if zspages.record(source).inuse == 0 {
                    destroyZspage(source, &lists)
                    result.framesFreed += state.spec.framesPerZspage
                } else {
                    keptSources.insert(source)
                }
                return true
            }
            if !progressed { return result }
        }
    }

    /// zs_can_compact: whether the class's free slots add up to a whole zspage.
    private static func canFreeAZspage(_ lists: ClassLists, spec: SizeClassSpec) -> Bool {
        freeableZspages(lists, spec: spec) > 0
    }

    /// How many whole zspages the class's free slots add up to: what
    /// compaction could free at best (zsmalloc's zs_can_compact).
    static func freeableZspages(_ lists: ClassLists, spec: SizeClassSpec) -> Int {
        (lists.zspageCount * spec.objectsPerZspage - lists.objectsUsed) / spec.objectsPerZspage
    }

    /// What compaction and migration could give back now: frames in zspages
    /// that compaction could empty, and free frames in resident blocks that
    /// migration could let go. Takes each class lock in turn, then the
    /// arena's; cheap enough to poll every second.
    public func reclaimable() -> Reclaimable {
        var compactable = 0
        for state in classStates {
            // In the huge class only the spare is freeable (compact() frees it).
            compactable +=
                state.lists.withLock {
                    state.spec.isHuge ? ($0.spare == nil ? 0 : 1) : Self.freeableZspages($0, spec: state.spec)
                } * state.spec.framesPerZspage
        }
        let (residentFrames, usedFrames) = arena.residency()
        return Reclaimable(
            compactableBytes: compactable * FrameArena.frameSize,
            strandedBytes: max(0, residentFrames - usedFrames) * FrameArena.frameSize)
    }

    private func emptiestZspage(_ lists: ClassLists, excluding kept: Set<UInt32>) -> UInt32? {
        for group in FullnessGroup.empty..<FullnessGroup.full {
            var cursor = lists.heads[group]
            while cursor != ZSPageTable.none {
                if !kept.contains(cursor) { return cursor }
                cursor = zspages.record(cursor).next
            }
        }
        return nil
    }

    private func fullestZspage(_ lists: ClassLists, otherThan source: UInt32) -> UInt32? {
        for group in stride(from: FullnessGroup.full - 1, through: FullnessGroup.empty, by: -1) {
            var cursor = lists.heads[group]
            while cursor != ZSPageTable.none {
                if cursor != source { return cursor }
                cursor = zspages.record(cursor).next
            }
        }
        return nil
    }

    /// Moves every object of `source` it can pin into the fullest other
    /// zspages. Caller holds the class lock.
    private func drain(
        _ source: UInt32, spec: SizeClassSpec, _ lists: inout ClassLists, into result: inout CompactionResult
    ) {
        let sourceRecord = zspages.record(source)
        let sourceSlots = sourceRecord.slots.unsafelyUnwrapped
        for index in 0..<spec.objectsPerZspage where sourceRecord.inuse > 0 {
            let slot = sourceSlots[index]
            guard slot & ZSPageTable.allocatedSlot != 0 else { continue }
            guard let destination = fullestZspage(lists, otherThan: source) else { return }
            let handleId = slot & ~ZSPageTable.allocatedSlot
            guard handles.tryPin(id: handleId) != nil else {
                result.objectsSkipped += 1
                continue
            }
            let destinationRecord = zspages.record(destination)
            let destinationSlots = destinationRecord.slots.unsafelyUnwrapped
            let target = Int(destinationRecord.freeHead)
            copyObject(from: sourceRecord, index: index, to: destinationRecord, index: target, size: spec.size)
            destinationRecord.freeHead = destinationSlots[target]
            destinationSlots[target] = slot
            destinationRecord.inuse += 1
            sourceSlots[index] = sourceRecord.freeHead
            sourceRecord.freeHead = UInt32(index)
            sourceRecord.inuse -= 1
            handles.relocate(id: handleId, to: ObjectLocation(zspage: destination, index: target))
            handles.unpin(id: handleId)
            regroup(destination, &lists)
            regroup(source, &lists)
            result.objectsMoved += 1
            result.bytesMoved += spec.size
        }
    }

    /// Copies one whole object slot between zspages, piecewise where either
    /// spans two frames.
    private func copyObject(
        from source: ZSPageRecord, index sourceIndex: Int,
        to destination: ZSPageRecord, index destinationIndex: Int, size: Int
    ) {
        withUnsafeTemporaryAllocation(byteCount: size, alignment: 16) { staging in
            let (first, second) = segments(source, index: sourceIndex, size: size, count: size)
            staging.copyMemory(from: UnsafeRawBufferPointer(first))
            if let second {
                UnsafeMutableRawBufferPointer(rebasing: staging[first.count...])
                    .copyMemory(from: UnsafeRawBufferPointer(second))
            }
            let (to, toSecond) = segments(destination, index: destinationIndex, size: size, count: size)
            to.copyMemory(from: UnsafeRawBufferPointer(rebasing: staging[..<to.count]))
            if let toSecond {
                toSecond.copyMemory(from: UnsafeRawBufferPointer(rebasing: staging[to.count...]))
            }
        }
    }
}
