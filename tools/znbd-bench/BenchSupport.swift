#if canImport(Glibc)
    import Glibc
#endif
import Dispatch

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

/// Wall-clock seconds for `threads` threads each running `body` once.
func timeThreads(_ threads: Int, _ body: @escaping @Sendable (Int) -> Void) -> Double {
    let start = monotonicSeconds()
    let group = DispatchGroup()
    for index in 0..<threads {
        group.enter()
        var thread = pthread_t()
        let box = Unmanaged.passRetained(
            ThreadBody {
                body(index); group.leave()
            })
        pthread_create(
            &thread, nil,
            { argument in
                let body = Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue()
                body.run()
                return nil
            }, box.toOpaque())
        pthread_detach(thread)
    }
    group.wait()
    return monotonicSeconds() - start
}

final class ThreadBody: Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}
