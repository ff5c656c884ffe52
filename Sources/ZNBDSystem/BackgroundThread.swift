#if canImport(Glibc)
    import Glibc
#endif
internal import CLinux

/// A named, joinable thread of its own (pthread_create), for work that runs
/// for the process's life beside the event loops: the maintenance thread.
/// Not a Dispatch queue or a Task: its body blocks in poll(2) and sleeps on
/// purpose, which would starve a cooperative pool.
public final class BackgroundThread: @unchecked Sendable {
    // @unchecked: `thread` is written once, in init, before anyone else can
    // see the object; join() is called once, by its owner.
    private var thread = pthread_t()

    /// Starts `body` on a new thread named `name` (shown by ps -L and top,
    /// 15 bytes at most).
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        let status = pthread_create(
            &thread, nil,
            { argument in
                let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
                clinux_name_this_thread(start.name)
                start.body()
                return nil
            }, start)
        precondition(status == 0, "pthread_create failed with \(status)")
    }

    /// Waits for the body to return.
    public func join() {
        pthread_join(thread, nil)
    }

    private final class Start: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
}
