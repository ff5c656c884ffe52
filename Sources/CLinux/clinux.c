#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include "CLinux.h"

int clinux_current_cpu(void) { return sched_getcpu(); }

int clinux_malloc_map_at_least(size_t bytes) { return mallopt(M_MMAP_THRESHOLD, (int)bytes); }

int clinux_malloc_trim(void) { return malloc_trim(0); }

static __thread clinux_held_lock clinux_held_locks[CLINUX_LOCKDEP_DEPTH];
static __thread int clinux_held_count;

const clinux_held_lock *clinux_lockdep_held(int *count) {
    *count = clinux_held_count;
    return clinux_held_locks;
}

int clinux_lockdep_push(uint8_t level, int32_t rank, uintptr_t identity) {
    if (clinux_held_count == CLINUX_LOCKDEP_DEPTH) return -1;
    clinux_held_locks[clinux_held_count++] = (clinux_held_lock){level, rank, identity};
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
