/// Sizes as people type them and as zramctl prints them: binary units
/// (1K = 1024), as the kernel's memparse reads zram's disksize.
public enum ByteSize {
    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let description: String

        package init(description: String) { self.description = description }
    }

    private static let units: [(suffix: Character, shift: Int)] = [("K", 10), ("M", 20), ("G", 30), ("T", 40)]

    /// "4096", "512K", "1G", "1.5G", "2TiB", "64MB": a number, an optional
    /// unit K, M, G or T (any case, "iB" or "B" may follow: all binary).
    /// The result is a whole number of bytes.
    public static func parse(_ text: String) throws(ParseError) -> Int {
        let trimmed = text.trimmingWhitespace()
        guard !trimmed.isEmpty else { throw ParseError(description: "empty size") }
        guard !trimmed.hasPrefix("-") else { throw ParseError(description: "a size cannot be negative") }
        let numberEnd = trimmed.firstIndex { !($0.isASCII && ($0.isNumber || $0 == ".")) } ?? trimmed.endIndex
        let number = trimmed[..<numberEnd]
        var suffix = trimmed[numberEnd...].uppercased()
        guard !number.isEmpty, let value = Double(number), value.isFinite else {
            throw ParseError(description: "not a size (a number with an optional K, M, G or T)")
        }
        for ending in ["IB", "B"] where suffix.hasSuffix(ending) {
            suffix.removeLast(ending.count)
            break
        }
        var shift = 0
        if !suffix.isEmpty {
            guard suffix.count == 1, let unit = units.first(where: { String($0.suffix) == suffix }) else {
                throw ParseError(description: "unknown unit '\(trimmed[numberEnd...])' (use K, M, G or T)")
            }
            shift = unit.shift
        }
        // Whole numbers exactly (a Double would round past 2^53); fractions
        // ("1.5G") through the Double, which must come out whole.
        if let whole = Int(number) {
            guard whole < 1 << (62 - shift) else { throw ParseError(description: "too large") }
            return whole << shift
        }
        let bytes = value * Double(UInt64(1) << UInt64(shift))
        guard bytes < 0x1p62 else { throw ParseError(description: "too large") }
        guard bytes == bytes.rounded(.towardZero) else {
            throw ParseError(description: "not a whole number of bytes")
        }
        return Int(bytes)
    }

    /// zramctl's style: "0B", "512B", "4K", "1.5M", "65.6M", "1G": the
    /// largest unit that leaves at least 1, one decimal when it is not whole.
    public static func format(_ bytes: Int) -> String {
        guard bytes >= 1024 else { return "\(bytes)B" }
        var unitIndex = 0
        while unitIndex + 1 < units.count, bytes >= 1 << units[unitIndex + 1].shift { unitIndex += 1 }
        let unit = units[unitIndex]
        let tenths = (bytes * 10 + (1 << unit.shift) / 2) >> unit.shift
        let text = tenths % 10 == 0 ? "\(tenths / 10)" : "\(tenths / 10).\(tenths % 10)"
        return text + String(unit.suffix)
    }
}

extension String {
    package func trimmingWhitespace() -> Substring {
        let start = firstIndex { !$0.isWhitespace } ?? endIndex
        let end = lastIndex { !$0.isWhitespace }.map(index(after:)) ?? start
        return self[start..<end]
    }
}
