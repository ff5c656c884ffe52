import SystemPackage
import ZNBDSystem

/// A state that does not hold together, found while resuming it: a page
/// names a handle the table does not hold, or a handle names a place no
/// zspage has. Never mended by guessing: the caller refuses the state.
public struct PoolStateDamaged: Error, CustomStringConvertible, Equatable {
    public let description: String

    /// Damage found here, or by the device in its own tables (a slot it
    /// cannot read), which is refused the same way.
    public init(_ description: String) { self.description = description }

    /// A table of the state that could not be read back.
    public init(reading what: String, _ error: any Error) { description = "cannot read \(what): \(error)" }
}

/// What resuming a pool's state found and mended.
public struct PoolResumption: Sendable, Equatable {
    /// zspages and objects resumed.
    public var zspages = 0
    public var objects = 0
    /// Objects no page named, freed: allocated by a write, or left by a
    /// free or an overwrite, that a kill cut short.
    public var objectsFreed = 0
    /// Frames dropped: the second of two a kill caught migrating (both
    /// whole copies), and the frames of a zspage a kill caught being made
    /// or destroyed.
    public var framesFreed = 0
    /// zspages with no object left, freed.
    public var emptyZspagesFreed = 0

    public init() {}
}

extension ZSPool {
    /// Whether every one of the pool's regions is a file an earlier process
    /// made (`resume` needs them all; one made new now means a file of the
    /// state went missing).
    public var hasStateToResume: Bool { arena.isResumable && handles.isResumable }

    /// Rebuilds the pool from what outlives a process (docs/STATE-DESIGN.md):
    /// the frame owners say which zspages exist, of which class, on which
    /// frames; the handle table says which objects exist and where; the
    /// caller's `referencedHandles` (every handle a device page names) say
    /// which objects are wanted. Everything else (zspage records, slot and
    /// free lists, class lists, the arena's bitmaps and residency, id
    /// allocators) is derived here. Locks a dead process held are cleared.
    ///
    /// Mended, and counted: objects nobody names are freed; a zspage left
    /// incomplete, a migration's second copy and an empty zspage give their
    /// frames back; blocks with no frame in use are released. Refused with
    /// PoolStateDamaged: a named handle that is not held, or held at a place
    /// that does not exist or that another handle holds; a refused state's
    /// files are left as they were found (only the derived records, which
    /// live in this process, were built). No object is read.
    public func resume(referencedHandles: [ZSHandle]) throws(PoolStateDamaged) -> PoolResumption {
        var report = PoolResumption()
        let classes = sizeClasses.classes

        // The wanted handles, by id: the generation each page names.
        let idBound = Int(referencedHandles.lazy.map(\.id).max() ?? 0) + 1
        guard idBound <= handles.idCapacity else {
            throw PoolStateDamaged("a page names handle id \(idBound - 1), past the table's \(handles.idCapacity)")
        }
        var wanted = [UInt32](repeating: 0, count: referencedHandles.isEmpty ? 0 : idBound)
        for handle in referencedHandles {
            guard handle.generation != 0 else { throw PoolStateDamaged("a page names \(handle), never a handle") }
            guard wanted[Int(handle.id)] == 0 else { throw PoolStateDamaged("two pages name handle id \(handle.id)") }
            wanted[Int(handle.id)] = UInt32(handle.generation)
        }

        // zspages from the frame owners.
        let owners: [(frame: UInt32, owner: FrameArena.FrameOwner)]
        do {
            owners = try arena.writtenOwners()
        } catch {
            throw PoolStateDamaged("cannot read the frame owners: \(error)")
        }
        var frameLists: [UInt32: (classIndex: Int, frames: [UInt32])] = [:]
        for (frame, owner) in owners {
            let classIndex = Int(owner.classIndex)
            let index = Int(owner.index)
            guard classIndex < classes.count, index < classes[classIndex].framesPerZspage,
                Int(owner.firstObjectOffset) == classes[classIndex].firstObjectOffsets[index],
                Int(owner.zspage) < arena.frameCount
            else {
                report.framesFreed += 1
                continue
            }
            var list =
                frameLists[owner.zspage]
                ?? (classIndex, [UInt32](repeating: FrameArena.noFrame, count: classes[classIndex].framesPerZspage))
            // A second frame at one place is a migration's copy: either is whole.
            guard list.classIndex == classIndex, list.frames[index] == FrameArena.noFrame else {
                report.framesFreed += 1
                continue
            }
            list.frames[index] = frame
            frameLists[owner.zspage] = list
        }
        for (zspage, list) in frameLists where list.frames.contains(FrameArena.noFrame) {
            report.framesFreed += list.frames.count { $0 != FrameArena.noFrame }
            frameLists[zspage] = nil
        }

        // Their records, every object slot free for now.
        let zspageIds = frameLists.keys.sorted()
        do {
            try zspages.resumeChunks(coveringIds: Int(zspageIds.last.map { $0 + 1 } ?? 0))
        } catch {
            throw PoolStateDamaged("cannot make the zspage records: \(error)")
        }
        for zspage in zspageIds {
            let list = frameLists[zspage].unsafelyUnwrapped
            let spec = classes[list.classIndex]
            let record = zspages.record(zspage)
            _ = record.makeLists(objects: spec.objectsPerZspage, frames: spec.framesPerZspage)
            for (index, frame) in list.frames.enumerated() { record.frames[index] = frame }
            record.slots.unsafelyUnwrapped.update(repeating: 0, count: spec.objectsPerZspage)
            record.classIndex = UInt16(list.classIndex)
            record.inuse = 0
        }

        // The objects, from the handle table.
        let handleScan = try handles.scanForResume { (handle, location) throws(PoolStateDamaged) -> Bool in
            let id = Int(handle.id)
            guard id < wanted.count, wanted[id] == UInt32(handle.generation) else {
                report.objectsFreed += 1
                return false
            }
            guard let list = frameLists[location.zspage], location.index < classes[list.classIndex].objectsPerZspage
            else {
                throw PoolStateDamaged(
                    "\(handle) names object \(location.index) of zspage \(location.zspage), which does not exist")
            }
            let record = zspages.record(location.zspage)
            let slots = record.slots.unsafelyUnwrapped
            guard slots[location.index] & ZSPageTable.allocatedSlot == 0 else {
                throw PoolStateDamaged(
                    "\(handle) and handle id \(slots[location.index] & ~ZSPageTable.allocatedSlot) name one object")
            }
            slots[location.index] = ZSPageTable.allocatedSlot | handle.id
            record.inuse += 1
            wanted[id] = 0
            return true
        }
        if let id = wanted.firstIndex(where: { $0 != 0 }) {
            throw PoolStateDamaged("a page names handle#\(id).\(wanted[id]), which the handle table does not hold")
        }
        // Not refused: from here on the state files change.
        handles.applyResume(handleScan)

        // Free lists, class lists, and the frames kept.
        var keptFrames: [UInt32] = []
        var liveZspages: [UInt32] = []
        for zspage in zspageIds {
            let record = zspages.record(zspage)
            let state = classStates[Int(record.classIndex)]
            let objects = Int(record.objectsPerZspage)
            guard record.inuse > 0 else {
                report.emptyZspagesFreed += 1
                record.freeLists()
                continue
            }
            let slots = record.slots.unsafelyUnwrapped
            var freeHead = ZSPageTable.endOfFreeList
            for index in stride(from: objects - 1, through: 0, by: -1)
            where slots[index] & ZSPageTable.allocatedSlot == 0 {
                slots[index] = freeHead
                freeHead = UInt32(index)
            }
            record.freeHead = freeHead
            state.lists.withLock { lists in
                lists.zspageCount += 1
                lists.objectsUsed += Int(record.inuse)
                lists.listBytes += record.heapBytes
                lists.insert(
                    zspage, group: FullnessGroup.of(inuse: Int(record.inuse), objects: objects), table: zspages)
            }
            let frames = record.frames
            for index in 0..<frames.count { keptFrames.append(frames[index]) }
            liveZspages.append(zspage)
            report.zspages += 1
            report.objects += Int(record.inuse)
        }
        zspages.resumeIds(live: liveZspages, usedIds: Int(zspageIds.last.map { $0 + 1 } ?? 0))
        do {
            try arena.resume(keeping: keptFrames.sorted())
        } catch {
            throw PoolStateDamaged("cannot keep the arena's blocks: \(error)")
        }
        return report
    }
}
