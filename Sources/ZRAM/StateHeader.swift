import SystemPackage
import Synchronization
import ZNBDSystem

/// The first file of a device's state directory, "header": one page that
/// says what the other files are, so that a daemon resumes only a state it
/// reads right (docs/STATE-DESIGN.md).
///
///     byte  0  UInt64  magic "ZNBDSTAT"; 0 while the state is being made
///     byte  8  UInt32  format version (this build writes and reads 1)
///     byte 12  UInt32  page size
///     byte 16  UInt64  disk size in bytes
///     byte 24  UInt64  pool capacity in bytes (the arena's size)
///     byte 32  UInt32  max chain (the size classes' shape)
///     byte 40  Int64   the slot clock's base (SlotTable.clock)
///     byte 48  UInt64  starts: how many daemons have served this state
///
/// The magic is stored last, once every other file exists: a state killed
/// while being made has none, holds nothing a client was told was
/// written, and is made again from nothing.
struct StateHeader {
    static let fileName = "header"
    /// "ZNBDSTAT" read as a little-endian word.
    static let magic: UInt64 = 0x5441_5453_4442_4E5A
    static let format: UInt32 = 1

    private let region: MemoryRegion

    /// Opens (or creates, empty) the header of `placement`'s directory.
    init(_ placement: RegionPlacement) throws(Errno) {
        region = try placement.region(Self.fileName, byteCount: pageSize)
        try region.prepare(offset: 0, count: pageSize)
        _ = region.bindZeroed(to: UInt64.self, count: pageSize / 8)
    }

    private func load<T>(_ offset: Int, as type: T.Type) -> T { region.base.load(fromByteOffset: offset, as: T.self) }
    private func store<T>(_ value: T, _ offset: Int) {
        region.base.storeBytes(of: value, toByteOffset: offset, as: T.self)
    }

    /// Whether the state was completely made (else: new, or killed while
    /// being made).
    var isComplete: Bool { load(0, as: UInt64.self) == Self.magic }
    var formatVersion: UInt32 { load(8, as: UInt32.self) }
    var pageSizeField: Int { Int(load(12, as: UInt32.self)) }
    var diskBytes: Int { Int(load(16, as: UInt64.self)) }
    var poolBytes: Int { Int(load(24, as: UInt64.self)) }
    var maxChain: Int { Int(load(32, as: UInt32.self)) }
    var timeBase: Int64 { load(40, as: Int64.self) }
    var starts: Int { Int(load(48, as: UInt64.self)) }

    /// Writes a new state's fields, then its magic (releasing: the fields,
    /// and every file made before, come first).
    func complete(diskBytes: Int, poolBytes: Int, maxChain: Int, timeBase: Int64) {
        store(Self.format, 8)
        store(UInt32(pageSize), 12)
        store(UInt64(diskBytes), 16)
        store(UInt64(poolBytes), 24)
        store(UInt32(maxChain), 32)
        store(timeBase, 40)
        store(UInt64(1), 48)
        region.base.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(Self.magic, ordering: .releasing)
    }

    /// Counts one more daemon serving the state.
    func countStart() { store(UInt64(starts + 1), 48) }

    /// Why a complete header cannot be resumed by this build with this
    /// configuration, or nil.
    func refusal(diskBytes wanted: Int, maxChain wantedChain: Int) -> String? {
        if formatVersion > Self.format {
            return "it was made by a newer znbd (state format \(formatVersion); this build reads format \(Self.format))"
        }
        if formatVersion != Self.format || pageSizeField != pageSize {
            return "its header is not one this build wrote (format \(formatVersion), page size \(pageSizeField))"
        }
        if diskBytes != wanted {
            return "it holds a device of \(diskBytes) bytes, not \(wanted)"
        }
        if maxChain != wantedChain {
            return "its pool was made with max chain \(maxChain), not \(wantedChain)"
        }
        return nil
    }
}
