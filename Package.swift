// swift-tools-version: 6.1
//
// Module map (dependencies point down the list; see docs/ARCHITECTURE.md):
//   CLZO        C shim over liblzo2 (macros → functions, per-thread work memory)
//   PageCodec   compress / decompress one 4 KiB page (LZO1X-1)
//   CLinux     C shim for glibc calls that need _GNU_SOURCE (sched_getcpu)
//   ZNBDSync    Locked<State> (a pthread mutex TSan can see), ShardedCounters
//   ZSPool      the movable zsmalloc-style pool of objects in an mmap'd frame arena
//   BlockDevice the device contract the NBD server serves (and a plain RAM device)
//   ZRAM        the compressed block device: slot table, pages, discard, stats
//   NBD         the NBD protocol (pure state machines) and its SwiftNIO server
//   ZNBDControl the control plane: HTTP/JSON endpoint, Prometheus text, sizes
//   ZNBDCommandLine  one-line errors and exit codes for both executables
//   znbd        the daemon: wires ZRAM to NBD and the control endpoint
//   znbdctl     the control CLI (a client of ZNBDControl's endpoint)
//   CNBD        libnbd (a real NBD client) for tests and tools
//   TestSupport corpus and helpers shared by test targets (never shipped)
import PackageDescription

let strictSwift: [SwiftSetting] = [
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "znbd",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PageCodec", targets: ["PageCodec"]),
        .library(name: "ZSPool", targets: ["ZSPool"]),
        .library(name: "ZRAM", targets: ["ZRAM"]),
        .library(name: "NBD", targets: ["NBD"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .target(
            name: "CLZO",
            linkerSettings: [.linkedLibrary("lzo2")]
        ),
        .target(
            name: "PageCodec",
            dependencies: ["CLZO"],
            swiftSettings: strictSwift
        ),
        .target(name: "CLinux"),
        .target(
            name: "ZNBDSync",
            dependencies: ["CLinux"],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZSPool",
            dependencies: ["ZNBDSync"],
            swiftSettings: strictSwift
        ),
        .target(
            name: "BlockDevice",
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZRAM",
            dependencies: ["BlockDevice", "PageCodec", "ZSPool", "ZNBDSync"],
            swiftSettings: strictSwift
        ),
        .target(
            name: "NBD",
            dependencies: [
                "BlockDevice", "ZNBDSync",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZNBDControl",
            dependencies: [
                "ZRAM", "ZSPool", "NBD", "ZNBDSync",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZNBDCommandLine",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "znbd",
            dependencies: [
                "ZRAM", "NBD", "ZNBDControl", "ZNBDCommandLine",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "znbdctl",
            dependencies: [
                "ZNBDControl", "ZNBDCommandLine",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "znbd-bench",
            dependencies: ["PageCodec", "ZSPool", "ZRAM", "BlockDevice", "NBD"],
            path: "tools/bench",
            swiftSettings: strictSwift
        ),
        .systemLibrary(name: "CNBD", pkgConfig: "libnbd"),
        .target(
            name: "TestSupport",
            dependencies: ["PageCodec", "ZNBDSync", "CNBD", "NBD", "ZNBDControl"],
            path: "Tests/TestSupport",
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "PageCodecTests",
            dependencies: ["PageCodec", "TestSupport", "ZNBDSync"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "ZSPoolTests",
            dependencies: ["ZSPool", "TestSupport", "ZNBDSync"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "NBDTests",
            dependencies: [
                "NBD", "BlockDevice", "ZRAM", "TestSupport", "ZNBDSync",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "DaemonTests",
            dependencies: [
                "ZNBDControl", "ZRAM", "NBD", "PageCodec", "TestSupport",
            ],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["ZNBDControl", "TestSupport"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "ZRAMTests",
            dependencies: ["ZRAM", "BlockDevice", "PageCodec", "ZSPool", "TestSupport", "ZNBDSync"],
            swiftSettings: strictSwift
        ),
    ],
    swiftLanguageModes: [.v6]
)
