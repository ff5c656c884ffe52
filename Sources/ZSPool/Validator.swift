extension ZSPool {
    /// Walks every structure of the pool and checks that they agree: fullness
    /// lists, slot tables and free lists, handle entries, frame ownership and
    /// the arena's bitmaps. Holds every class lock (in class order) and the
    /// arena lock while it runs, so it sees one consistent state.
    ///
    /// `checkObject`, when given, is called with every live object's handle
    /// and its whole slot's bytes, and returns whether they are intact.
    public func validate(checkObject: ((ZSHandle, UnsafeRawBufferPointer) -> Bool)? = nil) throws(PoolCorruption) {
        try withAllClassLocks { (lists: [UnsafeMutablePointer<ClassLists>]) throws(PoolCorruption) in
            let owners = try arena.validate()
            var framesSeen: Set<UInt32> = []
            var totalObjects = 0
            var totalZspages = 0
            for (classIndex, state) in classStates.enumerated() {
                let spec = state.spec
                let classLists = lists[classIndex].pointee
                var zspageCount = 0
                var objectCount = 0
                for group in 0..<FullnessGroup.count {
                    let members = classLists.members(of: group, table: zspages)
                    guard members.count == classLists.groupCounts[group] else {
                        throw PoolCorruption(
                            "class \(spec.size): list \(group) has \(members.count), count says \(classLists.groupCounts[group])"
                        )
                    }
                    for zspage in members {
                        try validate(
                            zspage: zspage, group: group, spec: spec, owners: owners, framesSeen: &framesSeen,
                            checkObject: checkObject)
                        zspageCount += 1
                        objectCount += Int(zspages.record(zspage).inuse)
                    }
                }
                guard zspageCount == classLists.zspageCount, objectCount == classLists.objectsUsed else {
                    throw PoolCorruption(
                        "class \(spec.size): lists hold \(zspageCount) zspages / \(objectCount) objects, counters say \(classLists.zspageCount) / \(classLists.objectsUsed)"
                    )
                }
                totalObjects += objectCount
                totalZspages += zspageCount
            }
            guard framesSeen.count == owners.count else {
                throw PoolCorruption("\(owners.count) frames in use but zspages hold \(framesSeen.count)")
            }
            let liveHandles = handles.usage().liveHandles
            guard liveHandles == totalObjects else {
                throw PoolCorruption("\(liveHandles) live handles for \(totalObjects) objects")
            }
            guard zspages.liveCount == totalZspages else {
                throw PoolCorruption("\(zspages.liveCount) zspage ids live for \(totalZspages) listed zspages")
            }
        }
    }

    private func validate(
        zspage: UInt32, group: Int, spec: SizeClassSpec, owners: [UInt32: FrameArena.FrameOwner],
        framesSeen: inout Set<UInt32>, checkObject: ((ZSHandle, UnsafeRawBufferPointer) -> Bool)?
    ) throws(PoolCorruption) {
        let record = zspages.record(zspage)
        let name = "zspage \(zspage) (class \(spec.size))"
        let objects = spec.objectsPerZspage
        guard Int(record.classIndex) == spec.index, Int(record.group) == group,
            Int(record.frameCount) == spec.framesPerZspage,
            Int(record.objectsPerZspage) == objects,
            FullnessGroup.of(inuse: Int(record.inuse), objects: objects) == group,
            let slots = record.slots
        else { throw PoolCorruption("\(name): header disagrees with its class or list") }
        // Frames: each owned by this zspage at its index, with the class's
        // first-object offset, and in no other zspage.
        for index in 0..<spec.framesPerZspage {
            let frame = record.frames[index]
            let expected = FrameArena.FrameOwner(
                zspage: zspage, classIndex: UInt16(spec.index), index: UInt8(index),
                firstObjectOffset: UInt16(spec.firstObjectOffsets[index]))
            guard owners[frame] == expected else {
                throw PoolCorruption(
                    "\(name): frame \(frame) at \(index) has owner \(String(describing: owners[frame]))")
            }
            guard framesSeen.insert(frame).inserted else { throw PoolCorruption("frame \(frame) in two zspages") }
        }
        // Slots: live ones point back through their handle; the free list
        // stays in bounds, has no cycle, and covers every other slot.
        var live = 0
        var isFree = [Bool](repeating: false, count: objects)
        var cursor = record.freeHead
        var freeCount = 0
        while cursor != ZSPageTable.endOfFreeList {
            guard Int(cursor) < objects, slots[Int(cursor)] & ZSPageTable.allocatedSlot == 0, !isFree[Int(cursor)]
            else { throw PoolCorruption("\(name): free list broken at \(cursor)") }
            isFree[Int(cursor)] = true
            freeCount += 1
            cursor = slots[Int(cursor)]
        }
        for index in 0..<objects where slots[index] & ZSPageTable.allocatedSlot != 0 {
            live += 1
            let id = slots[index] & ~ZSPageTable.allocatedSlot
            guard let entry = handles.peek(id: id), entry.location == ObjectLocation(zspage: zspage, index: index)
            else { throw PoolCorruption("\(name): slot \(index) names handle \(id), which points elsewhere") }
            if let checkObject {
                let (first, second) = segments(record, index: index, size: spec.size, count: spec.size)
                let intact = withUnsafeTemporaryAllocation(byteCount: spec.size, alignment: 16) { copy in
                    copy.copyMemory(from: UnsafeRawBufferPointer(first))
                    if let second {
                        UnsafeMutableRawBufferPointer(rebasing: copy[first.count...]).copyMemory(
                            from: UnsafeRawBufferPointer(second))
                    }
                    return checkObject(entry.handle, UnsafeRawBufferPointer(copy))
                }
                guard intact else {
                    throw PoolCorruption("\(name): object \(entry.handle) at slot \(index) is not intact")
                }
            }
        }
        guard live == Int(record.inuse), freeCount == objects - live else {
            throw PoolCorruption(
                "\(name): \(live) live and \(freeCount) free slots, inuse \(record.inuse) of \(objects)")
        }
    }

    /// Runs `body` holding every class lock, taken in class order (the only
    /// place that holds two: ranked, so the lock-order check allows it).
    private func withAllClassLocks(
        _ body: ([UnsafeMutablePointer<ClassLists>]) throws(PoolCorruption) -> Void
    ) throws(PoolCorruption) {
        func lock(from index: Int, _ held: [UnsafeMutablePointer<ClassLists>]) throws(PoolCorruption) {
            guard index < classStates.count else {
                try body(held)
                return
            }
            try classStates[index].lists.withLock(ordered: true) {
                (lists: inout ClassLists) throws(PoolCorruption) -> Void in
                try withUnsafeMutablePointer(to: &lists) { (pointer) throws(PoolCorruption) -> Void in
                    try lock(from: index + 1, held + [pointer])
                }
            }
        }
        try lock(from: 0, [])
    }
}

/// A broken pool invariant found by `ZSPool.validate()`.
public struct PoolCorruption: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
