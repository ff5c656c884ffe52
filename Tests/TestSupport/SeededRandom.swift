/// A small, fast, seedable generator (SplitMix64) so that a failing random
/// test can be replayed: tests print their seed and read `ZNBD_TEST_SEED`.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    /// A generator seeded from `ZNBD_TEST_SEED` when set, else from the system.
    public static func fromEnvironment(_ salt: UInt64 = 0) -> (generator: SeededRandom, seed: UInt64) {
        let seed: UInt64
        if let text = getenvString("ZNBD_TEST_SEED"), let value = UInt64(text) {
            seed = value
        } else {
            var system = SystemRandomNumberGenerator()
            seed = system.next()
        }
        return (SeededRandom(seed: seed &+ salt), seed)
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// `count` random bytes.
    public mutating func bytes(_ count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { raw in
            var index = 0
            while index + 8 <= count {
                raw.storeBytes(of: next(), toByteOffset: index, as: UInt64.self)
                index += 8
            }
            while index < count {
                raw[index] = UInt8(truncatingIfNeeded: next())
                index += 1
            }
        }
        return result
    }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

func getenvString(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}

/// Where two byte sequences first differ (an index into either, or the
/// shorter one's length), or nil when they are equal: for expectations that
/// should say where data went wrong rather than print megabytes of it.
public func firstDifference<A: Collection<UInt8>, B: Collection<UInt8>>(_ a: A, _ b: B) -> Int? {
    // Equal in the usual case: compare contiguous bytes at memcmp's speed.
    let equal =
        a.count == b.count
        && a.withContiguousStorageIfAvailable { left in
            b.withContiguousStorageIfAvailable { right in
                left.count == 0 || memcmp(left.baseAddress!, right.baseAddress!, left.count) == 0
            }
        }.flatMap { $0 } == true
    if equal { return nil }
    var index = 0
    var left = a.makeIterator()
    var right = b.makeIterator()
    while true {
        switch (left.next(), right.next()) {
        case (nil, nil): return nil
        case (let x?, let y?) where x == y: index += 1
        default: return index
        }
    }
}
