#if canImport(Glibc)
import Glibc
#endif

/// Seconds on the monotonic clock.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// Reads a whole file (rounded down to whole pages), or exits with a message.
func readPages(_ path: String, pageSize: Int) -> UnsafeMutableRawBufferPointer {
    guard let file = fopen(path, "rb") else { fail("cannot open \(path)", exitCode: 66) }
    defer { fclose(file) }
    fseek(file, 0, SEEK_END)
    let size = ftell(file) / pageSize * pageSize
    fseek(file, 0, SEEK_SET)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: pageSize)
    guard fread(buffer.baseAddress, 1, size, file) == size else { fail("short read of \(path)", exitCode: 66) }
    return buffer
}

func fail(_ message: String, exitCode: Int32 = 70) -> Never {
    // Glibc's `stderr` is a global C variable Swift 6 will not read from
    // concurrent code; write(2) to the descriptor needs no shared state.
    var line = "znbd-bench: \(message)\n"
    line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(exitCode)
}
