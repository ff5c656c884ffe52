// znbd-bench: the Swift half of the project's benchmarks (never timed
// assertions in tests). Each subcommand prints machine-readable lines; the
// tool named beside it runs it beside its peers and computes the ratios.
//
//   znbd-bench codec CORPUS_FILE [PASSES]                  tools/bench-lzo-swift-vs-c
//   znbd-bench pool [OPERATIONS_PER_THREAD] [--size BYTES] tools/bench-pool
//   znbd-bench device CORPUS_FILE [ROUNDS] [--max-chain N] [--algorithm A]
//                                                          tools/bench-device
//   znbd-bench serve memory|zram SOCKET MIB [WORKERS]      tools/bench --targets znbd-memory
//                                                          (memory; zram is for runs by hand)

import ArgumentParser
import PageCodec
import ZSPool

@main
struct ZNBDBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "znbd-bench",
        abstract: "znbd's benchmarks; the tools/bench* scripts run them beside their peers.",
        subcommands: [Codec.self, Pool.self, Device.self, Serve.self])
}

extension ZNBDBench {
    struct Codec: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "LZO1X-1 through the Swift codec: compress and decompress-and-compare every page of a corpus.")

        @Argument(help: "A file of whole pages (tools/corpus builds one).")
        var corpus: String

        @Argument(help: "Passes per run; the best is reported.")
        var passes = 5

        func validate() throws {
            guard passes > 0 else { throw ValidationError("PASSES must be positive") }
        }

        func run() { runCodecBenchmark(corpusPath: corpus, passes: passes) }
    }

    struct Pool: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "ZSPool allocate+write+free and read beside malloc, then compaction and migration.")

        @Argument(help: "Operations per thread.")
        var operationsPerThread = 2_000_000

        @Option(help: "Only this object size (1...4096), and no compaction run: for a profile of one case.")
        var size: Int?

        func validate() throws {
            guard operationsPerThread > 0 else { throw ValidationError("OPERATIONS_PER_THREAD must be positive") }
            if let size, !(1...4096).contains(size) { throw ValidationError("--size must be 1...4096, got \(size)") }
        }

        func run() { runPoolBenchmark(operationsPerThread: operationsPerThread, onlySize: size) }
    }

    struct Device: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "CompressedBlockDevice writes, overwrites and reads beside the codec alone.")

        @Argument(help: "A file of whole pages (tools/corpus builds one).")
        var corpus: String

        @Argument(help: "Rounds; the best is reported.")
        var rounds = 3

        @Option(help: "Most frames per zspage in the device's pool.")
        var maxChain = SizeClassTable.defaultMaxChain

        @Option(help: "The device's codec: lzo, lz4[:ACCELERATION], zstd[:LEVEL].")
        var algorithm = "lzo"

        func validate() throws {
            guard rounds > 0 else { throw ValidationError("ROUNDS must be positive") }
            guard (1...SizeClassTable.maxChainLimit).contains(maxChain) else {
                throw ValidationError("--max-chain must be 1 to \(SizeClassTable.maxChainLimit)")
            }
            _ = try choice()
        }

        func choice() throws(ValidationError) -> CodecChoice {
            do {
                return try CodecChoice.parse(algorithm)
            } catch {
                throw ValidationError("--algorithm \(algorithm): \(error)")
            }
        }

        func run() throws {
            runDeviceBenchmark(corpusPath: corpus, rounds: rounds, maxChain: maxChain, algorithm: try choice())
        }
    }

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve a plain RAM device (memory) or the compressed one (zram) over NBD until killed.")

        enum Kind: String, ExpressibleByArgument, CaseIterable {
            case memory, zram
        }

        @Argument(help: "memory or zram.")
        var kind: Kind

        @Argument(help: "The Unix socket to listen on.")
        var socket: String

        @Argument(help: "Device size in MiB.")
        var mebibytes: Int

        @Argument(help: "Threads that run writes; 0 runs them on the event loop.")
        var workers = 2

        func validate() throws {
            guard mebibytes > 0 else { throw ValidationError("MIB must be positive") }
            guard workers >= 0 else { throw ValidationError("WORKERS must be 0 or more") }
        }

        func run() { runServe(kind: kind.rawValue, socketPath: socket, mebibytes: mebibytes, workers: workers) }
    }
}
