import PageCodec
import Testing
@testable import ZRAM
import ZNBDSystem

/// The slot's meta word is laid out by hand (SlotTable.swift's table):
/// checked here so a field moved or widened cannot overlap another.
@Suite("ZRAM: the slot's meta word")
struct SlotLayoutTests {
    @Test("length, flags, algorithm, lock and access time do not overlap, and each holds its values")
    func metaWord() {
        let fields: [(name: String, mask: UInt64)] = [
            ("length", SlotTable.lengthMask),
            ("same", SlotTable.sameBit),
            ("object", SlotTable.objectBit),
            ("huge", SlotTable.hugeBit),
            ("idle", SlotTable.idleBit),
            ("algorithm", SlotTable.algorithmMask),
            ("recompressed", SlotTable.recompressedBit),
            ("lock", SlotTable.lockBit),
            ("accessed", ~SlotTable.flagsMask),
        ]
        var taken: UInt64 = 0
        for field in fields {
            #expect(taken & field.mask == 0, "\(field.name) overlaps an earlier field")
            taken |= field.mask
        }
        #expect(SlotTable.lengthMask >= UInt64(pageSize), "a raw page's length must fit")
        for algorithm in CompressionAlgorithm.allCases {
            let bits = UInt64(algorithm.rawValue) << SlotTable.algorithmShift
            #expect(bits & ~SlotTable.algorithmMask == 0, "\(algorithm) does not fit the algorithm field")
        }
        #expect(~SlotTable.flagsMask >> SlotTable.accessShift == UInt64(UInt32.max), "ACCESSED is 32 bits")
        #expect(SlotTable.lockBit & SlotTable.flagsMask != 0, "the lock is below ACCESSED")
    }
}
