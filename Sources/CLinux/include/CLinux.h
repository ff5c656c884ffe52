// CLinux: the few glibc and kernel interfaces Swift's Glibc module does not
// export (they need _GNU_SOURCE, are variadic, or are newer than glibc's
// headers), the per-thread state that the lock-order checker keeps, and
// LeakSanitizer's root regions where its runtime is linked in.
// Every symbol is prefixed clinux_.
#ifndef ZNBD_CLINUX_H
#define ZNBD_CLINUX_H

#include <stdint.h>

#include <stddef.h>

/// The CPU the calling thread runs on now (sched_getcpu), or -1.
int clinux_current_cpu(void);

/// Restricts the calling thread to CPU `cpu` (sched_setaffinity); 0 on
/// success, else an errno.
int clinux_pin_to_cpu(int cpu);

/// Stores in `cpus` (room for `capacity`) the CPUs the calling thread may
/// run on (sched_getaffinity), lowest first; returns how many, or -1.
int clinux_allowed_cpus(int *cpus, int capacity);

/// mallopt(M_MMAP_THRESHOLD, bytes): every allocation of at least `bytes`
/// gets a mapping of its own, unmapped when freed; fixing the threshold also
/// stops glibc raising it after large frees. Returns 1 on success.
int clinux_malloc_map_at_least(size_t bytes);

/// malloc_trim(0): gives free heap memory back to the kernel. Returns 1 when
/// some was released.
int clinux_malloc_trim(void);

/// Names the calling thread (pthread_setname_np; at most 15 bytes shown).
void clinux_name_this_thread(const char *name);

// MARK: Staying resident as a swap device (ZNBDSystem's ProcessControls)

/// prctl(PR_SET_IO_FLUSHER, 1) (Linux 5.6+, needs CAP_SYS_RESOURCE): the
/// calling thread, and threads it creates afterwards, allocate without
/// starting I/O (PF_MEMALLOC_NOIO) and are not throttled on other devices'
/// writeback (PF_LOCAL_THROTTLE). 0, or -1 with errno.
int clinux_set_io_flusher(void);

/// mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT): every page of the
/// process, in present and later mappings, is locked once it is faulted in;
/// the call itself faults nothing in. 0, or -1 with errno.
int clinux_lock_all_on_fault(void);

/// mlock2(address, length, MLOCK_ONFAULT). 0, or -1 with errno.
int clinux_lock_on_fault(void *address, size_t length);

/// RLIMIT_MEMLOCK's soft limit in bytes, UINT64_MAX when unlimited. 0, or -1
/// with errno.
int clinux_memlock_limit(uint64_t *limit);

// MARK: LeakSanitizer's roots (ZNBDSystem's AnonymousMapping)

/// Tells LeakSanitizer that [address, address + length) holds pointers to
/// heap blocks: it scans the heap, stacks, thread-local storage and globals
/// for them, never an anonymous mapping, and would report a block whose only
/// pointer is kept there as leaked. Does nothing when the sanitizer runtime
/// is not linked in (any build but AddressSanitizer's).
void clinux_leak_check_add_root(const void *address, size_t length);

/// Undoes clinux_leak_check_add_root, with the same address and length,
/// before the range is unmapped.
void clinux_leak_check_remove_root(const void *address, size_t length);

// MARK: Lock-order checking (ZNBDSystem's LockOrder, in checked builds)
//
// Each thread keeps a stack of the checked locks it holds: level, rank and
// identity. The Swift side decides what is allowed; this only stores.

/// Most checked locks one thread may hold at once (the pool's validator
/// holds every class lock).
#define CLINUX_LOCKDEP_DEPTH 512

typedef struct {
    uint8_t level;
    /// The level's name (a Swift StaticString: lives as long as the program).
    const unsigned char *name;
    int32_t rank;
    uintptr_t identity;
} clinux_held_lock;

/// The calling thread's held locks, oldest first, and their count.
const clinux_held_lock *clinux_lockdep_held(int *count);

/// Records a lock the calling thread now holds; returns 0, or -1 when the
/// stack is full.
int clinux_lockdep_push(uint8_t level, const unsigned char *name, int32_t rank, uintptr_t identity);

/// Forgets the most recent record of `identity`; returns 0, or -1 when the
/// thread holds no such lock.
int clinux_lockdep_remove(uintptr_t identity);

/// fallocate(fd, 0, offset, length): allocates the file's blocks (a
/// tmpfs's pages) for the range, so that touching them later through a
/// shared mapping cannot fail. 0, or an errno (ENOSPC when the filesystem
/// is full).
int clinux_reserve_file_range(int fd, int64_t offset, int64_t length);

/// fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ...): frees the
/// range's blocks (a tmpfs gives the pages back); it reads as zeroes. 0, or
/// an errno.
int clinux_punch_file_range(int fd, int64_t offset, int64_t length);

/// The first range of allocated blocks (data) at or after `offset`, with
/// lseek's SEEK_DATA and SEEK_HOLE: 0 with `*start` and `*end` set, ENXIO
/// when there is none up to the end of the file, or another errno.
int clinux_next_data_range(int fd, int64_t offset, int64_t *start, int64_t *end);

/// statfs(path)'s f_type (TMPFS_MAGIC for a tmpfs) in `*type`: 0, or an errno.
int clinux_filesystem_type(const char *path, int64_t *type);

#endif
