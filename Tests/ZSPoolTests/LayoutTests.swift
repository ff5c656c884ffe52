import Synchronization
import Testing
@testable import ZSPool

/// The byte and bit layouts the pool computes by hand, checked against the
/// compiler's own figures: a field moved or resized without its neighbours
/// fails here, not as a corrupted record under load.
@Suite("ZSPool: hand-computed layouts")
struct LayoutTests {
    /// One field of a hand-laid-out run of memory: where it starts, how many
    /// bytes it takes, and the alignment its type needs.
    struct Field {
        var name: String
        var offset: Int
        var bytes: Int
        var alignment: Int

        init<T>(_ name: String, at offset: Int, _ type: T.Type, count: Int = 1) {
            self.name = name
            self.offset = offset
            bytes = MemoryLayout<T>.stride * count
            alignment = MemoryLayout<T>.alignment
        }

        init<T: ~Copyable>(atomic name: String, at offset: Int, _ type: T.Type, count: Int = 1) {
            self.name = name
            self.offset = offset
            bytes = MemoryLayout<T>.stride * count
            alignment = MemoryLayout<T>.alignment
        }
    }

    /// Each field aligned for its type, each starting where the one before
    /// ends, the last ending at `end`.
    static func expectPacked(_ fields: [Field], end: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        var position = 0
        for field in fields {
            #expect(
                field.offset == position, "\(field.name) at \(field.offset), expected \(position)",
                sourceLocation: sourceLocation)
            #expect(field.offset % field.alignment == 0, "\(field.name) misaligned", sourceLocation: sourceLocation)
            position = field.offset + field.bytes
        }
        #expect(position == end, "fields end at \(position), the layout says \(end)", sourceLocation: sourceLocation)
    }

    /// Bit fields of one word: none overlapping, each inside the word.
    static func expectDisjoint(
        _ fields: [(name: String, mask: UInt64)], sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var taken: UInt64 = 0
        for field in fields {
            #expect(field.mask != 0, "\(field.name) has no bits", sourceLocation: sourceLocation)
            #expect(taken & field.mask == 0, "\(field.name) overlaps an earlier field", sourceLocation: sourceLocation)
            taken |= field.mask
        }
    }

    @Test("zspage records: field arrays aligned and back to back in their chunk, 48 bytes a record")
    func zspageRecord() {
        typealias Layout = ZSPageRecord.Layout
        let count = Layout.count
        Self.expectPacked(
            [
                Field(atomic: "lock", at: Layout.lock, Atomic<Int32>.self, count: count),
                Field("classIndex", at: Layout.classIndex, UInt16.self, count: count),
                Field("inuse", at: Layout.inuse, UInt16.self, count: count),
                Field("objectsPerZspage", at: Layout.objectsPerZspage, UInt16.self, count: count),
                Field("frameCount", at: Layout.frameCount, UInt8.self, count: count),
                Field("group", at: Layout.group, UInt8.self, count: count),
                Field("freeHead", at: Layout.freeHead, UInt32.self, count: count),
                Field("previous", at: Layout.previous, UInt32.self, count: count),
                Field("next", at: Layout.next, UInt32.self, count: count),
                Field("slots", at: Layout.slots, UInt.self, count: count),
                Field("inline", at: Layout.inline, UInt32.self, count: count * ZSPageRecord.inlineWords),
            ], end: Layout.chunkBytes)
        #expect(Layout.chunkBytes == 48 * count, "ARCHITECTURE.md and ZSPageTable.swift say 48 bytes a record")
        // Each chunk is a mapping of its own (page-aligned), so a field
        // aligned within the chunk is aligned in memory.
    }

    @Test("id caches: a shard's lock, counts and ids aligned and back to back")
    func idCacheShard() {
        typealias Shard = IdCaches.Shard
        Self.expectPacked(
            [
                Field(atomic: "lock", at: 0, Atomic<UInt64>.self),
                Field(atomic: "live", at: Shard.liveOffset, Atomic<Int>.self),
                Field("count", at: Shard.countOffset, Int.self),
                Field("ids", at: Shard.idsOffset, UInt32.self, count: IdCaches.capacity),
            ], end: Shard.bytes)
    }

    @Test("handle entries: pin, allocated, generation, zspage and index bits do not overlap")
    func handleEntry() {
        typealias Table = HandleTable
        Self.expectDisjoint([
            ("pin", Table.pinBit),
            ("allocated", Table.allocatedBit),
            ("generation", Table.generationMask << Table.generationShift),
            ("zspage", Table.zspageMask << Table.zspageShift),
            ("index", Table.indexMask),
        ])
        // The generation's top bit sits just under ALLOCATED.
        #expect(Table.generationShift + UInt64(Table.generationMask.nonzeroBitCount) == 62)
    }
}
