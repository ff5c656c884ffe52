// znbd-bench: the project's benchmarks (never timed assertions in tests).
//
//   znbd-bench codec CORPUS_FILE [PASSES]
//
// Each prints one machine-readable line; the tools/bench-* scripts run them
// beside their peers in the same run and compute the ratios.

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
func usage() -> Never {
    fail("usage: znbd-bench codec CORPUS_FILE [PASSES]", exitCode: 64)
}
guard arguments.count >= 2 else { usage() }
switch arguments[1] {
case "codec":
    guard arguments.count >= 3 else { usage() }
    runCodecBenchmark(corpusPath: arguments[2], passes: arguments.count > 3 ? Int(arguments[3]) ?? 5 : 5)
default:
    usage()
}
