#include "CLZO.h"

#include <lzo/lzo1x.h>
#include <pthread.h>
#include <stdlib.h>

static pthread_once_t clzo_once = PTHREAD_ONCE_INIT;
static pthread_key_t clzo_work_memory_key;
static int clzo_init_status = CLZO_ERROR;

// The fast path reads this thread-local pointer; the pthread key exists only so
// that the work area is freed when its thread exits.
static __thread void *clzo_thread_work_memory;

// Run by the exiting thread itself: its thread-local pointer must not
// outlive the work area (a later key destructor might compress).
static void clzo_free_work_memory(void *memory) {
    clzo_thread_work_memory = NULL;
    free(memory);
}

static void clzo_init_once(void) {
    clzo_init_status = lzo_init();
    if (pthread_key_create(&clzo_work_memory_key, clzo_free_work_memory) != 0 && clzo_init_status == LZO_E_OK) {
        clzo_init_status = CLZO_OUT_OF_MEMORY;
    }
}

int clzo_init(void) {
    pthread_once(&clzo_once, clzo_init_once);
    return clzo_init_status;
}

const char *clzo_version_string(void) {
    return lzo_version_string();
}

size_t clzo_lzo1x_1_work_memory_size(void) {
    return LZO1X_1_MEM_COMPRESS;
}

size_t clzo_lzo1x_worst_case_size(size_t length) {
    return length + length / 16 + 64 + 3;
}

static void *clzo_work_memory(void) {
    void *memory = clzo_thread_work_memory;
    if (__builtin_expect(memory != NULL, 1)) {
        return memory;
    }
    if (clzo_init() != CLZO_OK) {
        return NULL;
    }
    // lzo1x_1_compress wants the work area aligned like a pointer; a cache line
    // keeps two threads' dictionaries from sharing one.
    memory = aligned_alloc(64, LZO1X_1_MEM_COMPRESS);
    if (memory == NULL) {
        return NULL;
    }
    if (pthread_setspecific(clzo_work_memory_key, memory) != 0) {
        free(memory);
        return NULL;
    }
    clzo_thread_work_memory = memory;
    return memory;
}

int clzo_lzo1x_1_compress(const uint8_t *source, size_t source_length,
                          uint8_t *destination, size_t destination_capacity,
                          size_t *compressed_length) {
    // lzo1x_1_compress has no output bound of its own: it trusts the caller to
    // provide the worst case, so refuse anything smaller here.
    if (destination_capacity < clzo_lzo1x_worst_case_size(source_length)) {
        return CLZO_OUTPUT_OVERRUN;
    }
    void *work_memory = clzo_work_memory();
    if (work_memory == NULL) {
        return CLZO_OUT_OF_MEMORY;
    }
    lzo_uint out_length = 0;
    int status = lzo1x_1_compress(source, source_length, destination, &out_length, work_memory);
    *compressed_length = out_length;
    return status;
}

int clzo_lzo1x_decompress_safe(const uint8_t *source, size_t source_length,
                               uint8_t *destination, size_t destination_capacity,
                               size_t *decompressed_length) {
    lzo_uint out_length = destination_capacity;
    int status = lzo1x_decompress_safe(source, source_length, destination, &out_length, NULL);
    *decompressed_length = out_length;
    return status;
}
