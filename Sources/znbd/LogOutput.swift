import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's log lines on stderr, with one prefix.
///
/// Under systemd, where stderr is the journal's stream (JOURNAL_STREAM names
/// its device and inode), a line is `<4>text`: the journal reads the syslog
/// priority from the angle brackets (SyslogLevelPrefix=, on by default) and
/// adds the time and `znbd[PID]` itself, so `journalctl -p warning` finds the
/// warnings. Anywhere else (a terminal, a file, a test's pipe) a line is
/// `2026-12-07T14:21:10+0000 znbd warning: text`.
struct DaemonLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    /// Whether stderr is the journal's stream.
    let toJournal: Bool

    init(logLevel: Logger.Level, toJournal: Bool = DaemonLogHandler.standardErrorIsJournal()) {
        self.logLevel = logLevel
        self.toJournal = toJournal
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var text = event.message.description
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        if !merged.isEmpty {
            text += " " + merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        let line = Self.format(text, level: event.level, toJournal: toJournal, time: toJournal ? "" : Self.now())
        Self.writeToStandardError(line)
    }

    /// One line as it is written, newline included. Text with newlines in it
    /// becomes several lines, each with the prefix, so none is read without
    /// its priority.
    static func format(_ text: String, level: Logger.Level, toJournal: Bool, time: String) -> String {
        let prefix = toJournal ? "<\(syslogPriority(level))>" : "\(time) znbd \(level.rawValue): "
        return text.split(separator: "\n", omittingEmptySubsequences: false).map { prefix + $0 + "\n" }.joined()
    }

    /// syslog(3)'s priorities, as the journal files them.
    static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .critical: 2
        case .error: 3
        case .warning: 4
        case .notice: 5
        case .info: 6
        case .debug, .trace: 7
        }
    }

    /// The local time, to the second, with its offset from UTC.
    static func now() -> String {
        var seconds = time(nil)
        var parts = tm()
        localtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether stderr is the stream JOURNAL_STREAM (DEVICE:INODE) names; a
    /// child that inherited the variable but writes elsewhere is not.
    static func standardErrorIsJournal() -> Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var status = stat()
        guard fstat(STDERR_FILENO, &status) == 0 else { return false }
        return UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }

    /// One write(2) per line set, so that lines from several threads do not
    /// interleave (a pipe writes up to PIPE_BUF bytes at once).
    static func writeToStandardError(_ line: String) {
        var line = line
        line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}
