/// The state directory's figures (GET /v1/stats `state`): what the files
/// that hold the disk across restarts cost, and what this start found in
/// them. All 0 with --state-dir none. Counted by znbd from ZRAM's
/// resumption and the files themselves.
public enum StateFigure: Int, FigureFamily {
    case bytes, starts, resumeTime, objectsFreedAtResume, framesFreedAtResume

    public static let title = "state (--state-dir)"
    public static let path = "state"
    public static let metricPrefix = "znbd_state_"

    public var declaration: FigureDeclaration {
        switch self {
        case .bytes:
            .init(
                "bytes", .gauge, metric: "bytes",
                help: "Memory the state directory's files hold (pool frames, slots, handles, owners).", unit: .bytes)
        case .starts:
            .init(
                "starts", .gauge, metric: "starts",
                help: "Daemons that have served this state, this one included (1: it was made by this start).")
        case .resumeTime:
            .init(
                "resume_seconds", .gauge, metric: "resume_seconds",
                help: "What resuming the state took at this start (0 when it was made by this start).",
                unit: .milliseconds)
        case .objectsFreedAtResume:
            .init(
                "objects_freed_at_resume", .gauge, metric: "objects_freed_at_resume",
                help: "Pool objects no page named, left by a killed daemon and freed at this start.")
        case .framesFreedAtResume:
            .init(
                "frames_freed_at_resume", .gauge, metric: "frames_freed_at_resume",
                help: "Frames a killed daemon left half used (a migration's copy, a half-made zspage), freed at start.")
        }
    }
}
