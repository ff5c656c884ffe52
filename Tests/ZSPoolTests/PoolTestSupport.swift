import TestSupport
import ZSPool

/// Object sizes like those of LZO-compressed 4 KiB pages of a real disk:
/// mostly 1-3.5 KiB, some small, some incompressible.
func compressedPageLikeSize(_ random: inout SeededRandom) -> Int {
    switch Int.random(in: 0..<100, using: &random) {
    case 0..<10: return Int.random(in: 1...400, using: &random)
    case 10..<80: return Int.random(in: 800...3300, using: &random)
    case 80..<92: return Int.random(in: 3300...4095, using: &random)
    default: return 4096
    }
}

/// The bytes an object with `seed` holds: cheap to make and to check.
func fillPattern(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt64) {
    var state = seed
    var offset = 0
    while offset < buffer.count {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let word = state ^ (state >> 29)
        withUnsafeBytes(of: word) { bytes in
            let count = min(8, buffer.count - offset)
            UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + count])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[..<count]))
        }
        offset += 8
    }
}

func matchesPattern(_ bytes: UnsafeRawBufferPointer, seed: UInt64) -> Bool {
    withUnsafeTemporaryAllocation(byteCount: max(bytes.count, 1), alignment: 16) { expected in
        let slice = UnsafeMutableRawBufferPointer(rebasing: expected[..<bytes.count])
        fillPattern(slice, seed: seed)
        return slice.elementsEqual(bytes)
    }
}

extension ZSPool {
    func write(_ handle: ZSHandle, size: Int, seed: UInt64) throws {
        try withUnsafeTemporaryAllocation(byteCount: size, alignment: 16) { buffer in
            fillPattern(buffer, seed: seed)
            try write(handle, from: UnsafeRawBufferPointer(buffer))
        }
    }

    func holds(_ handle: ZSHandle, size: Int, seed: UInt64) throws -> Bool {
        try withUnsafeTemporaryAllocation(byteCount: size, alignment: 16) { buffer in
            try read(handle, into: buffer)
            return matchesPattern(UnsafeRawBufferPointer(buffer), seed: seed)
        }
    }
}
