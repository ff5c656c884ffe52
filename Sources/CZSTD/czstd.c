#include "CZSTD.h"

#include <pthread.h>
#include <zstd.h>
#include <zstd_errors.h>

static pthread_once_t czstd_once = PTHREAD_ONCE_INIT;
static pthread_key_t czstd_compress_key;
static pthread_key_t czstd_decompress_key;
static int czstd_key_status = -1;

// The fast path reads these thread-local pointers; the pthread keys exist
// only so that the contexts are freed when their thread exits.
static __thread ZSTD_CCtx *czstd_thread_cctx;
static __thread ZSTD_DCtx *czstd_thread_dctx;

// Run by the exiting thread itself: its thread-local pointer must not
// outlive the context (a later key destructor might compress).
static void czstd_free_cctx(void *context) {
    czstd_thread_cctx = NULL;
    ZSTD_freeCCtx(context);
}

static void czstd_free_dctx(void *context) {
    czstd_thread_dctx = NULL;
    ZSTD_freeDCtx(context);
}

static void czstd_init_once(void) {
    if (pthread_key_create(&czstd_compress_key, czstd_free_cctx) != 0) {
        return;
    }
    if (pthread_key_create(&czstd_decompress_key, czstd_free_dctx) != 0) {
        return;
    }
    czstd_key_status = 0;
}

int czstd_min_level(void) { return ZSTD_minCLevel(); }
int czstd_max_level(void) { return ZSTD_maxCLevel(); }
int czstd_default_level(void) { return ZSTD_CLEVEL_DEFAULT; }

const char *czstd_version_string(void) {
    return ZSTD_versionString();
}

size_t czstd_compress_bound(size_t length) {
    return ZSTD_compressBound(length);
}

static ZSTD_CCtx *czstd_cctx(void) {
    ZSTD_CCtx *context = czstd_thread_cctx;
    if (__builtin_expect(context != NULL, 1)) {
        return context;
    }
    pthread_once(&czstd_once, czstd_init_once);
    if (czstd_key_status != 0 || (context = ZSTD_createCCtx()) == NULL) {
        return NULL;
    }
    if (pthread_setspecific(czstd_compress_key, context) != 0) {
        ZSTD_freeCCtx(context);
        return NULL;
    }
    czstd_thread_cctx = context;
    return context;
}

static ZSTD_DCtx *czstd_dctx(void) {
    ZSTD_DCtx *context = czstd_thread_dctx;
    if (__builtin_expect(context != NULL, 1)) {
        return context;
    }
    pthread_once(&czstd_once, czstd_init_once);
    if (czstd_key_status != 0 || (context = ZSTD_createDCtx()) == NULL) {
        return NULL;
    }
    if (pthread_setspecific(czstd_decompress_key, context) != 0) {
        ZSTD_freeDCtx(context);
        return NULL;
    }
    czstd_thread_dctx = context;
    return context;
}

static int czstd_status(size_t result, int *library_error) {
    ZSTD_ErrorCode code = ZSTD_getErrorCode(result);
    *library_error = (int)code;
    switch (code) {
    case ZSTD_error_memory_allocation:
        return CZSTD_OUT_OF_MEMORY;
    case ZSTD_error_dstSize_tooSmall:
        return CZSTD_OUTPUT_OVERRUN;
    case ZSTD_error_srcSize_wrong:
        return CZSTD_TRUNCATED;
    default:
        return CZSTD_CORRUPT;
    }
}

int czstd_compress(const uint8_t *source, size_t source_length,
                   uint8_t *destination, size_t destination_capacity,
                   int level, size_t *compressed_length, int *library_error) {
    *library_error = 0;
    if (destination_capacity < ZSTD_compressBound(source_length)) {
        return CZSTD_OUTPUT_OVERRUN;
    }
    ZSTD_CCtx *context = czstd_cctx();
    if (context == NULL) {
        return CZSTD_OUT_OF_MEMORY;
    }
    // ZSTD_compressCCtx sizes the context's tables for a source this small.
    size_t result = ZSTD_compressCCtx(context, destination, destination_capacity, source, source_length, level);
    if (ZSTD_isError(result)) {
        return czstd_status(result, library_error);
    }
    *compressed_length = result;
    return CZSTD_OK;
}

int czstd_decompress(const uint8_t *source, size_t source_length,
                     uint8_t *destination, size_t destination_capacity,
                     size_t *decompressed_length, int *library_error) {
    *library_error = 0;
    // One frame, exactly: ZSTD_decompressDCtx alone would accept several
    // frames back to back, or skippable frames around the data.
    size_t frame = ZSTD_findFrameCompressedSize(source, source_length);
    if (ZSTD_isError(frame)) {
        return czstd_status(frame, library_error);
    }
    if (frame != source_length) {
        return CZSTD_TRAILING_INPUT;
    }
    ZSTD_DCtx *context = czstd_dctx();
    if (context == NULL) {
        return CZSTD_OUT_OF_MEMORY;
    }
    size_t result = ZSTD_decompressDCtx(context, destination, destination_capacity, source, source_length);
    if (ZSTD_isError(result)) {
        return czstd_status(result, library_error);
    }
    *decompressed_length = result;
    return CZSTD_OK;
}
