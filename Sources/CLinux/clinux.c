#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "CLinux.h"

// Newer than some headers this may be built against.
#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

// LeakSanitizer's interface (sanitizer/lsan_interface.h), declared weak: the
// runtime that defines it is linked in only by AddressSanitizer builds, and
// elsewhere (normal and ThreadSanitizer builds) the addresses are null.
extern void __lsan_register_root_region(const void *p, size_t size) __attribute__((weak));
extern void __lsan_unregister_root_region(const void *p, size_t size) __attribute__((weak));

int clinux_current_cpu(void) { return sched_getcpu(); }

int clinux_pin_to_cpu(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : errno;
}

int clinux_allowed_cpus(int *cpus, int capacity) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    int count = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && count < capacity; cpu++) {
        if (CPU_ISSET(cpu, &set)) cpus[count++] = cpu;
    }
    return count;
}

int clinux_malloc_map_at_least(size_t bytes) { return mallopt(M_MMAP_THRESHOLD, (int)bytes); }

int clinux_malloc_trim(void) { return malloc_trim(0); }

static __thread clinux_held_lock clinux_held_locks[CLINUX_LOCKDEP_DEPTH];
static __thread int clinux_held_count;

const clinux_held_lock *clinux_lockdep_held(int *count) {
    *count = clinux_held_count;
    return clinux_held_locks;
}

int clinux_lockdep_push(uint8_t level, const unsigned char *name, int32_t rank, uintptr_t identity) {
    if (clinux_held_count == CLINUX_LOCKDEP_DEPTH) return -1;
    clinux_held_locks[clinux_held_count++] = (clinux_held_lock){level, name, rank, identity};
    return 0;
}

int clinux_lockdep_remove(uintptr_t identity) {
    for (int index = clinux_held_count - 1; index >= 0; index--) {
        if (clinux_held_locks[index].identity != identity) continue;
        memmove(&clinux_held_locks[index], &clinux_held_locks[index + 1],
                (size_t)(clinux_held_count - index - 1) * sizeof(clinux_held_lock));
        clinux_held_count--;
        return 0;
    }
    return -1;
}

void clinux_name_this_thread(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof truncated - 1);
    truncated[sizeof truncated - 1] = 0;
    pthread_setname_np(pthread_self(), truncated);
}

int clinux_set_io_flusher(void) { return prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0); }

int clinux_lock_all_on_fault(void) { return mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT); }

int clinux_lock_on_fault(void *address, size_t length) { return mlock2(address, length, MLOCK_ONFAULT); }

int clinux_reserve_file_range(int fd, int64_t offset, int64_t length) {
    while (fallocate(fd, 0, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR) return errno;
    }
    return 0;
}

int clinux_punch_file_range(int fd, int64_t offset, int64_t length) {
    while (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR) return errno;
    }
    return 0;
}

int clinux_next_data_range(int fd, int64_t offset, int64_t *start, int64_t *end) {
    off_t data = lseek(fd, (off_t)offset, SEEK_DATA);
    if (data < 0) return errno;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return errno;
    *start = (int64_t)data;
    *end = (int64_t)hole;
    return 0;
}

int clinux_filesystem_type(const char *path, int64_t *type) {
    struct statfs status;
    if (statfs(path, &status) != 0) return errno;
    *type = (int64_t)status.f_type;
    return 0;
}

int clinux_memlock_limit(uint64_t *limit) {
    struct rlimit current;
    if (getrlimit(RLIMIT_MEMLOCK, &current) != 0) return -1;
    *limit = current.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)current.rlim_cur;
    return 0;
}

void clinux_leak_check_add_root(const void *address, size_t length) {
    if (__lsan_register_root_region) __lsan_register_root_region(address, length);
}

void clinux_leak_check_remove_root(const void *address, size_t length) {
    if (__lsan_unregister_root_region) __lsan_unregister_root_region(address, length);
}
