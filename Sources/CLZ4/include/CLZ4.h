// CLZ4: the only place znbd touches liblz4 directly.
//
// LZ4's one-shot block functions allocate their 16 KiB hash table on the
// stack, or take one from the caller. This shim keeps one per thread (freed
// when the thread exits), so compressing a page never allocates, and it
// turns liblz4's "negative means malformed" results into status codes.
#ifndef CLZ4_H
#define CLZ4_H

#include <stddef.h>
#include <stdint.h>

enum {
    CLZ4_OK = 0,
    /// The thread's hash table could not be allocated.
    CLZ4_OUT_OF_MEMORY = -1,
    /// The destination is smaller than clz4_compress_bound(source_length).
    CLZ4_OUTPUT_TOO_SMALL = -2,
    /// The block is malformed: it reads past its input, writes past the
    /// output, refers before the output's start, or leaves input unread.
    CLZ4_MALFORMED = -3,
};

/// The largest acceleration liblz4 honours (LZ4_ACCELERATION_MAX). 1 is
/// its default and the best ratio; larger is faster and compresses less.
int clz4_acceleration_max(void);

/// liblz4's version string, e.g. "1.9.4".
const char *clz4_version_string(void);

/// The worst-case compressed size of `length` input bytes (LZ4_compressBound).
size_t clz4_compress_bound(size_t length);

/// Compresses `source` as one LZ4 block with this thread's hash table.
/// On CLZ4_OK, `*compressed_length` holds the output length.
int clz4_compress(const uint8_t *source, size_t source_length,
                  uint8_t *destination, size_t destination_capacity,
                  int acceleration, size_t *compressed_length);

/// Decompresses one LZ4 block with LZ4_decompress_safe, which checks every
/// read against `source_length` and every write against `destination_capacity`.
/// On CLZ4_OK, `*decompressed_length` holds the output length.
int clz4_decompress(const uint8_t *source, size_t source_length,
                    uint8_t *destination, size_t destination_capacity,
                    size_t *decompressed_length);

#endif
