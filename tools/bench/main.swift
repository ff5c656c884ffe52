// znbd-bench: the project's benchmarks (never timed assertions in tests).
//
//   znbd-bench codec CORPUS_FILE [PASSES]
//   znbd-bench pool [OPERATIONS_PER_THREAD]
//   znbd-bench device CORPUS_FILE [ROUNDS]
//   znbd-bench serve memory|zram SOCKET MIB [WORKERS]
//
// Each prints one machine-readable line; the tools/bench-* scripts run them
// beside their peers in the same run and compute the ratios.

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
func usage() -> Never {
    fail("usage: znbd-bench codec CORPUS_FILE [PASSES] | pool [OPERATIONS_PER_THREAD] | device CORPUS_FILE [ROUNDS] | serve memory|zram SOCKET MIB [WORKERS]", exitCode: 64)
}
guard arguments.count >= 2 else { usage() }
switch arguments[1] {
case "codec":
    guard arguments.count >= 3 else { usage() }
    runCodecBenchmark(corpusPath: arguments[2], passes: arguments.count > 3 ? Int(arguments[3]) ?? 5 : 5)
case "pool":
    runPoolBenchmark(operationsPerThread: arguments.count > 2 ? Int(arguments[2]) ?? 2_000_000 : 2_000_000)
case "device":
    guard arguments.count >= 3 else { usage() }
    runDeviceBenchmark(corpusPath: arguments[2], rounds: arguments.count > 3 ? Int(arguments[3]) ?? 3 : 3)
case "serve":
    guard arguments.count >= 5, let mebibytes = Int(arguments[4]) else { usage() }
    runServe(
        kind: arguments[2], socketPath: arguments[3], mebibytes: mebibytes,
        workers: arguments.count > 5 ? Int(arguments[5]) ?? 2 : 2)
default:
    usage()
}
