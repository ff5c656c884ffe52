#include "CLZ4.h"

#include <limits.h>
#include <lz4.h>
#include <pthread.h>
#include <stdlib.h>

static pthread_once_t clz4_once = PTHREAD_ONCE_INIT;
static pthread_key_t clz4_state_key;
static int clz4_key_status = -1;

// The fast path reads this thread-local pointer; the pthread key exists only
// so that the table is freed when its thread exits.
static __thread void *clz4_thread_state;

// Run by the exiting thread itself: its thread-local pointer must not
// outlive the table (a later key destructor might compress).
static void clz4_free_state(void *state) {
    clz4_thread_state = NULL;
    free(state);
}

static void clz4_init_once(void) {
    clz4_key_status = pthread_key_create(&clz4_state_key, clz4_free_state);
}

int clz4_acceleration_max(void) {
    return 65537;  // LZ4_ACCELERATION_MAX; larger values are clamped by liblz4
}

const char *clz4_version_string(void) {
    return LZ4_versionString();
}

size_t clz4_compress_bound(size_t length) {
    return (size_t)LZ4_compressBound((int)length);
}

static void *clz4_state(void) {
    void *state = clz4_thread_state;
    if (__builtin_expect(state != NULL, 1)) {
        return state;
    }
    pthread_once(&clz4_once, clz4_init_once);
    if (clz4_key_status != 0) {
        return NULL;
    }
    // LZ4_compress_fast_extState wants the state aligned like a pointer.
    state = aligned_alloc(64, ((size_t)LZ4_sizeofState() + 63) / 64 * 64);
    if (state == NULL) {
        return NULL;
    }
    if (pthread_setspecific(clz4_state_key, state) != 0) {
        free(state);
        return NULL;
    }
    clz4_thread_state = state;
    return state;
}

int clz4_compress(const uint8_t *source, size_t source_length,
                  uint8_t *destination, size_t destination_capacity,
                  int acceleration, size_t *compressed_length) {
    if (source_length > INT_MAX || destination_capacity < clz4_compress_bound(source_length)) {
        return CLZ4_OUTPUT_TOO_SMALL;
    }
    void *state = clz4_state();
    if (state == NULL) {
        return CLZ4_OUT_OF_MEMORY;
    }
    int capacity = destination_capacity > INT_MAX ? INT_MAX : (int)destination_capacity;
    int length = LZ4_compress_fast_extState(state, (const char *)source, (char *)destination,
                                            (int)source_length, capacity, acceleration);
    if (length <= 0) {
        // Cannot happen with a destination of the bound's size.
        return CLZ4_OUTPUT_TOO_SMALL;
    }
    *compressed_length = (size_t)length;
    return CLZ4_OK;
}

int clz4_decompress(const uint8_t *source, size_t source_length,
                    uint8_t *destination, size_t destination_capacity,
                    size_t *decompressed_length) {
    if (source_length > INT_MAX || destination_capacity > INT_MAX) {
        return CLZ4_MALFORMED;
    }
    int length = LZ4_decompress_safe((const char *)source, (char *)destination,
                                     (int)source_length, (int)destination_capacity);
    if (length < 0) {
        return CLZ4_MALFORMED;
    }
    *decompressed_length = (size_t)length;
    return CLZ4_OK;
}
