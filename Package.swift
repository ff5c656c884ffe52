// swift-tools-version: 6.1
//
// Module map (dependencies point down the list; see docs/ARCHITECTURE.md):
//   CLZO        C shim over liblzo2 (macros → functions, per-thread work memory)
//   PageCodec   compress / decompress one 4 KiB page (LZO1X-1)
//   ZNBDSync    Locked<State>: a pthread mutex ThreadSanitizer can see
//   ZSPool      the movable zsmalloc-style pool of objects in an mmap'd frame arena
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
        .target(
            name: "ZNBDSync",
            swiftSettings: strictSwift
        ),
        .target(
            name: "ZSPool",
            dependencies: ["ZNBDSync"],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "znbd-bench",
            dependencies: ["PageCodec", "ZSPool"],
            path: "tools/bench",
            swiftSettings: strictSwift
        ),
        .target(
            name: "TestSupport",
            dependencies: ["PageCodec", "ZNBDSync"],
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
    ],
    swiftLanguageModes: [.v6]
)
