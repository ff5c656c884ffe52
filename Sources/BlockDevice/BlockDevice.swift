// BlockDevice: the contract between a device (ZRAM's compressed disk, or the
// plain MemoryBlockDevice) and whoever serves it (the NBD server).
//
// THE MAP
//   BlockDevice.swift        the BlockDevice protocol, BlockDeviceError, and
//                            allocation extents (this file)
//   MemoryBlockDevice.swift  a plain RAM disk for protocol tests and
//                            benchmarks
//
// Offsets and lengths are in bytes, at any alignment: a device serves a range
// that is not a multiple of its page (reading and patching the pages at the
// edges). Whoever serves it decides what to ask of clients (NBD advertises
// `minimumBlockSize` and enforces it on clients that agreed to block sizes). A device
// checks every request against its size and answers with a BlockDeviceError,
// never a trap: requests come straight from the network.

/// Why a device refused a request. The NBD layer maps each case to the errno
/// the protocol carries.
public enum BlockDeviceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The range ends past the device (EINVAL for reads, ENOSPC for writes).
    case outOfRange(offset: Int, length: Int, deviceSize: Int)
    /// The device has no memory left for the data: a full pool or its limit
    /// (ENOSPC). Nothing was changed.
    case noSpace
    /// Stored data could not be read back (EIO). Counted, never fatal.
    case ioError(String)

    public var description: String {
        switch self {
        case .outOfRange(let offset, let length, let size):
            "range \(offset)+\(length) ends past the device (\(size) bytes)"
        case .noSpace: "no space left in the device's memory"
        case .ioError(let why): "I/O error: \(why)"
        }
    }
}

/// What a range of the device holds, as NBD's `base:allocation` reports it.
public enum AllocationStatus: Sendable, Equatable {
    /// Never written, or discarded: costs no memory and reads as zeroes.
    case unallocated
    /// Known to read as zeroes (a zero page), without storing data.
    case zero
    /// Holds data.
    case data
}

/// A run of bytes with one allocation status.
public struct AllocationExtent: Sendable, Equatable {
    public var length: Int
    public var status: AllocationStatus

    public init(length: Int, status: AllocationStatus) {
        self.length = length
        self.status = status
    }
}

/// A random-access store of bytes that many threads may use at once.
///
/// Each call is synchronous and complete when it returns: a write that
/// returned is seen by every later read on any thread, so `flush()` has
/// nothing to wait for in a RAM device.
public protocol BlockDevice: AnyObject, Sendable {
    /// The device size in bytes.
    var byteCount: Int { get }
    /// The unit clients are asked to align to (NBD's minimum block size): 1
    /// for a device that serves any byte range, reading and patching the
    /// pages at its edges.
    var minimumBlockSize: Int { get }
    /// The unit the device stores; I/O aligned to it avoids read-modify-write.
    var preferredBlockSize: Int { get }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(BlockDeviceError)
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(BlockDeviceError)
    /// Forgets the data of the range; it then reads as zeroes. A device may
    /// keep parts it cannot free (partial pages).
    func discard(offset: Int, length: Int) throws(BlockDeviceError)
    /// Makes the range read as zeroes, storing as little as it can. With
    /// `mayDeallocate`, whole pages are freed as a discard frees them (the
    /// kernel's zram does so for every REQ_OP_WRITE_ZEROES); without it
    /// (NBD's NO_HOLE) they stay allocated, reading as zeroes (`.zero`).
    /// Partial pages at either edge are zeroed in place either way.
    func writeZeroes(offset: Int, length: Int, mayDeallocate: Bool) throws(BlockDeviceError)
    /// Makes completed writes durable; a RAM device has nothing to do.
    func flush() throws(BlockDeviceError)
    /// The allocation status of the range from `offset`, as extents that
    /// cover it in order; at most `maximumExtents` of them, the last of which
    /// may end before `offset + length`.
    func allocationExtents(
        offset: Int, length: Int, maximumExtents: Int
    ) throws(BlockDeviceError)
        -> [AllocationExtent]
    /// Counts a request its server refused before calling the device, for
    /// its range or its alignment (zram's invalid_io). Does nothing unless
    /// the device keeps such a figure.
    func recordInvalidRequest()
}

extension BlockDevice {
    /// Checks that `offset..<offset+length` lies inside the device.
    public func validateRange(offset: Int, length: Int) throws(BlockDeviceError) {
        guard offset >= 0, length >= 0, offset <= byteCount, length <= byteCount - offset else {
            throw .outOfRange(offset: offset, length: length, deviceSize: byteCount)
        }
    }

    public func recordInvalidRequest() {}
}

/// The extents of `offset..<offset+length` for a device that knows the
/// status of each `pageSize` page: runs of one status merged, at most
/// `maximumExtents` of them (the last run is cut where a new one would start).
public func collectExtents(
    offset: Int, length: Int, pageSize: Int, maximumExtents: Int, statusOfPage: (Int) -> AllocationStatus
) -> [AllocationExtent] {
    var extents: [AllocationExtent] = []
    var position = offset
    let end = offset + length
    while position < end {
        let page = position / pageSize
        let pieceEnd = min(end, (page + 1) * pageSize)
        let status = statusOfPage(page)
        if let last = extents.last, last.status == status {
            extents[extents.count - 1].length += pieceEnd - position
        } else if extents.count == maximumExtents {
            break
        } else {
            extents.append(AllocationExtent(length: pieceEnd - position, status: status))
        }
        position = pieceEnd
    }
    return extents
}
