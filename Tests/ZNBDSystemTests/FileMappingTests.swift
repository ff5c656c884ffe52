import Foundation
import SystemPackage
import Testing
import TestSupport
import ZNBDSystem

#if canImport(Glibc)
    import Glibc
#endif

/// FileMapping on a tmpfs, as the state that outlives the daemon will use
/// it (docs/STATE-DESIGN.md): what one mapping stored, the next reads;
/// reserve and release move the file's memory; a full tmpfs is ENOSPC from
/// `reserve`, never a SIGBUS; locked pages are given back too.
@Suite("ZNBDSystem: FileMapping, shared memory that outlives its mapping")
struct FileMappingTests {
    /// A fresh directory on /dev/shm (a tmpfs), removed by the caller.
    static func sharedMemoryDirectory() throws -> String {
        let path = "/dev/shm/znbd-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(path, 0o700) == 0 else { throw Errno(rawValue: errno) }
        return path
    }

    @Test("what one mapping stored the next reads; another size, a link or a directory is refused")
    func persistsAcrossMappings() throws {
        let directory = try Self.sharedMemoryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/state"
        let byteCount = 64 * pageSize
        do {
            let mapping = try FileMapping(path: path, byteCount: byteCount, alignment: 2 << 20)
            let (created, address, allocated) = (mapping.created, Int(bitPattern: mapping.base), mapping.allocatedBytes)
            #expect(created)
            #expect(address % (2 << 20) == 0)
            #expect(allocated == 0, "a new file costs nothing until reserved or touched")
            try mapping.reserve(offset: 0, count: byteCount)
            let words = mapping.bindZeroed(to: UInt64.self, count: byteCount / 8)
            #expect(words[100] == 0)
            for index in 0..<byteCount / 8 { words[index] = UInt64(index) &* 0x9E37_79B9_7F4A_7C15 }
        }
        let again = try FileMapping(path: path, byteCount: byteCount)
        let createdAgain = again.created
        #expect(!createdAgain)
        let words = again.bindZeroed(to: UInt64.self, count: byteCount / 8)
        #expect((0..<byteCount / 8).allSatisfy { words[$0] == UInt64($0) &* 0x9E37_79B9_7F4A_7C15 })

        #expect(throws: Errno.invalidArgument) { _ = try FileMapping(path: path, byteCount: 2 * byteCount) }
        #expect(symlink(path, directory + "/link") == 0)
        #expect(throws: Errno.tooManySymbolicLinkLevels) {
            _ = try FileMapping(path: directory + "/link", byteCount: byteCount)
        }
        #expect(throws: Errno.self) { _ = try FileMapping(path: directory, byteCount: byteCount) }
        // Not a regular file (a FIFO opens for read and write at once).
        #expect(mkfifo(directory + "/fifo", 0o600) == 0)
        #expect(throws: Errno.invalidArgument) { _ = try FileMapping(path: directory + "/fifo", byteCount: byteCount) }
        // A file others may read or write is not taken for a state: in a
        // world-writable directory another user could have planted it.
        #expect(chmod(path, 0o644) == 0)
        #expect(throws: Errno.permissionDenied) { _ = try FileMapping(path: path, byteCount: byteCount) }
    }

    @Test("reserve allocates the file's pages, release gives them back and the range reads zeroes")
    func reserveAndRelease() throws {
        let directory = try Self.sharedMemoryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mapping = try FileMapping(path: directory + "/arena", byteCount: 1 << 20)
        try mapping.reserve(offset: 0, count: 1 << 20)
        let reserved = mapping.allocatedBytes
        #expect(reserved >= 1 << 20)
        memset(mapping.base, 0xA5, 1 << 20)
        mapping.release(offset: 256 << 10, count: 512 << 10)
        let halfReleased = mapping.allocatedBytes
        #expect(halfReleased == 512 << 10, "\(halfReleased)")
        let bytes = mapping.base.assumingMemoryBound(to: UInt8.self)
        #expect(bytes[0] == 0xA5 && bytes[(256 << 10) - 1] == 0xA5)
        #expect((256 << 10..<768 << 10).allSatisfy { bytes[$0] == 0 })
        #expect(bytes[768 << 10] == 0xA5)
        mapping.release(offset: 0, count: 1 << 20)
        let released = mapping.allocatedBytes
        #expect(released == 0)
    }

    @Test("locked pages go back on release too (the daemon locks its memory as it is touched)")
    func releaseOfLockedPages() throws {
        let directory = try Self.sharedMemoryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mapping = try FileMapping(path: directory + "/locked", byteCount: 1 << 20)
        try mapping.reserve(offset: 0, count: 1 << 20)
        // 1 MiB: inside the 8 MiB RLIMIT_MEMLOCK an unprivileged user has here.
        let base = mapping.base
        #expect(mlock(base, 1 << 20) == 0, "mlock: \(String(cString: strerror(errno)))")
        memset(mapping.base, 0x5A, 1 << 20)
        mapping.release(offset: 0, count: 1 << 20)
        let released = mapping.allocatedBytes
        #expect(released == 0)
        #expect(base.load(fromByteOffset: 4096, as: UInt8.self) == 0)
        munlock(base, 1 << 20)
    }

    static let mountMissing: String? = {
        if getuid() != 0 { return "mounting a small tmpfs needs root; not run" }
        return FileManager.default.isExecutableFile(atPath: "/usr/bin/mount") ? nil : "no /usr/bin/mount; not run"
    }()

    @Test(
        "a full tmpfs: reserve throws ENOSPC, and what was reserved before stays usable",
        .enabled(if: mountMissing == nil, "\(mountMissing ?? "")"))
    func fullFilesystem() throws {
        let directory = try makeTemporaryDirectory("znbd-small-tmpfs").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mount = try runCommand(["mount", "-t", "tmpfs", "-o", "size=1m", "znbd-test", directory], timeout: 30)
        guard mount.status == 0 else {
            try Test.cancel("cannot mount a tmpfs here: \(mount.standardError)")
        }
        defer { _ = try? runCommand(["umount", directory], timeout: 30) }
        do {
            // A file four times the filesystem: the mapping is made, its
            // pages are promised only by reserve.
            let mapping = try FileMapping(path: directory + "/arena", byteCount: 4 << 20)
            try mapping.reserve(offset: 0, count: 512 << 10)
            #expect(throws: Errno.noSpace) { try mapping.reserve(offset: 512 << 10, count: 1 << 20) }
            memset(mapping.base, 0x11, 512 << 10)
            let base = mapping.base
            #expect(base.load(fromByteOffset: (512 << 10) - 1, as: UInt8.self) == 0x11)
            // Space given back can be reserved again.
            mapping.release(offset: 0, count: 512 << 10)
            try mapping.reserve(offset: 1 << 20, count: 512 << 10)
        }
    }
}
