// swift-tools-version: 6.1
//
// Module map (dependencies point down the list; see docs/ARCHITECTURE.md):
//   CLinux           C shim: glibc calls needing _GNU_SOURCE, lockdep's per-thread stack
//   ZNBDSystem       the low-level module: page size, anonymous mappings, spin
//                    locks and the lock-order check (lockdep), Locked, per-CPU
//                    counters, threads, process controls
//   ZNBDFigures      every figure, declared once: JSON key, Prometheus family,
//                    text column, the kernel figure it mirrors (no dependencies)
//   CLZO, CLZ4, CZSTD  C shims over liblzo2, liblz4, libzstd (per-thread work memory)
//   PageCodec        compress / decompress one 4 KiB page (LZO1X-1, LZ4, zstd)
//   ZSPool           the movable zsmalloc-style pool of objects in an mmap'd frame arena
//   BlockDevice      the device contract the NBD server serves (and a plain RAM device)
//   ZRAM             the compressed block device: slot table, pages, discard, figures
//   NBD              the NBD protocol (pure state machines) and its SwiftNIO server
//   ZNBDControlAPI   the control endpoint's wire documents, sizes, paths, text views
//                    (only ZNBDFigures: all znbdctl needs)
//   ZNBDControlServer  the control endpoint over the device: routes, HTTP, Prometheus
//   ZNBDCommandLine  one-line errors and exit codes for both executables
//   znbd             the daemon: wires ZRAM to NBD and the control endpoint
//   znbdctl          the control CLI (a client of ZNBDControlAPI's documents)
//   znbd-bench       the Swift half of the benchmarks in tools/ (tools/znbd-bench)
//   CNBD             libnbd (a real NBD client) for tests and tools
//   TestSupport      corpus and helpers shared by test targets (never shipped)
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
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .target(name: "CLinux"),
        .target(
            name: "ZNBDSystem",
            dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZNBDFigures",
            swiftSettings: strictSwift
        ),
        .target(
            name: "CLZO",
            linkerSettings: [.linkedLibrary("lzo2")]
        ),
        .target(
            name: "CLZ4",
            linkerSettings: [.linkedLibrary("lz4")]
        ),
        .target(
            name: "CZSTD",
            linkerSettings: [.linkedLibrary("zstd")]
        ),
        .target(
            name: "PageCodec",
            dependencies: ["CLZO", "CLZ4", "CZSTD", "ZNBDSystem"],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZSPool",
            dependencies: ["ZNBDSystem", "ZNBDFigures", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strictSwift
        ),
        .target(
            name: "BlockDevice",
            dependencies: ["ZNBDSystem", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZRAM",
            dependencies: [
                "BlockDevice", "PageCodec", "ZSPool", "ZNBDSystem", "ZNBDFigures",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strictSwift
        ),
        .target(
            name: "NBDProtocol",
            swiftSettings: strictSwift
        ),
        .target(
            name: "NBD",
            dependencies: [
                "NBDProtocol", "BlockDevice", "ZNBDSystem", "ZNBDFigures",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strictSwift
        ),
        .target(name: "CNBDNetlink"),
        .target(
            name: "NBDAttach",
            dependencies: ["NBDProtocol", "CNBDNetlink"],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZNBDControlAPI",
            dependencies: ["ZNBDFigures"],
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZNBDControlServer",
            dependencies: [
                "ZNBDControlAPI", "ZRAM", "ZSPool", "NBD", "PageCodec", "ZNBDSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
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
                "ZRAM", "NBD", "PageCodec", "ZNBDControlAPI", "ZNBDControlServer", "ZNBDCommandLine", "ZNBDSystem",
                "ZNBDFigures",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "znbdctl",
            dependencies: [
                "ZNBDControlAPI", "ZNBDFigures", "ZNBDCommandLine", "NBDAttach",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "znbd-bench",
            dependencies: [
                "PageCodec", "ZSPool", "ZRAM", "BlockDevice", "NBD", "ZNBDSystem", "ZNBDFigures",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "tools/znbd-bench",
            swiftSettings: strictSwift
        ),
        .systemLibrary(name: "CNBD", pkgConfig: "libnbd"),
        .target(
            name: "TestSupport",
            dependencies: ["PageCodec", "ZNBDSystem", "CNBD", "NBD", "ZNBDControlAPI"],
            path: "Tests/TestSupport",
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "ZNBDSystemTests",
            dependencies: ["ZNBDSystem", "TestSupport"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "PageCodecTests",
            dependencies: ["PageCodec", "TestSupport", "ZNBDSystem"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "ZSPoolTests",
            dependencies: ["ZNBDFigures", "ZSPool", "TestSupport", "ZNBDSystem"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "NBDTests",
            dependencies: [
                "ZNBDFigures",
                "NBD", "BlockDevice", "ZRAM", "TestSupport", "ZNBDSystem", "ZNBDControlAPI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "DaemonTests",
            dependencies: [
                "ZNBDControlAPI", "ZNBDControlServer", "ZRAM", "NBD", "PageCodec", "TestSupport", "ZNBDSystem",
                "ZNBDFigures", "NBDAttach",
            ],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["ZNBDFigures", "ZNBDControlAPI", "TestSupport"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "ZRAMTests",
            dependencies: ["ZNBDFigures", "ZRAM", "BlockDevice", "PageCodec", "ZSPool", "TestSupport", "ZNBDSystem"],
            swiftSettings: strictSwift
        ),
    ],
    swiftLanguageModes: [.v6]
)
