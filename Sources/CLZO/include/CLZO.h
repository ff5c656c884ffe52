// CLZO: the only place znbd touches liblzo2 directly.
//
// liblzo2's entry points are ordinary functions, but the parts a caller needs
// around them are macros Swift cannot import (lzo_init(), LZO1X_1_MEM_COMPRESS)
// and its work memory must be provided by the caller. This shim turns the
// macros into functions and keeps one LZO1X-1 work area per thread, so Swift
// code can compress from any thread without allocating per call.
#ifndef CLZO_H
#define CLZO_H

#include <stddef.h>
#include <stdint.h>

/// Status codes, equal to liblzo2's LZO_E_* values.
enum {
    CLZO_OK = 0,
    CLZO_ERROR = -1,
    CLZO_OUT_OF_MEMORY = -2,
    CLZO_INPUT_OVERRUN = -4,
    CLZO_OUTPUT_OVERRUN = -5,
    CLZO_LOOKBEHIND_OVERRUN = -6,
    CLZO_EOF_NOT_FOUND = -7,
    CLZO_INPUT_NOT_CONSUMED = -8,
};

/// Runs lzo_init() once per process; returns CLZO_OK or liblzo2's error.
/// Thread-safe; later calls return the first call's result.
int clzo_init(void);

/// liblzo2's version string, e.g. "2.10".
const char *clzo_version_string(void);

/// Bytes of work memory lzo1x_1_compress needs (LZO1X_1_MEM_COMPRESS).
size_t clzo_lzo1x_1_work_memory_size(void);

/// The worst-case compressed size of `length` input bytes, as documented by
/// liblzo2: length + length/16 + 64 + 3.
size_t clzo_lzo1x_worst_case_size(size_t length);

/// Compresses `source` with LZO1X-1 using this thread's work area (allocated
/// on the thread's first call, freed when the thread exits).
/// `destination_capacity` must be at least clzo_lzo1x_worst_case_size(source_length).
/// On CLZO_OK, `*compressed_length` holds the output length.
int clzo_lzo1x_1_compress(const uint8_t *source, size_t source_length,
                          uint8_t *destination, size_t destination_capacity,
                          size_t *compressed_length);

/// Decompresses with lzo1x_decompress_safe, which checks every read against
/// `source_length` and every write against `destination_capacity`.
/// On CLZO_OK, `*decompressed_length` holds the output length.
int clzo_lzo1x_decompress_safe(const uint8_t *source, size_t source_length,
                               uint8_t *destination, size_t destination_capacity,
                               size_t *decompressed_length);

#endif
