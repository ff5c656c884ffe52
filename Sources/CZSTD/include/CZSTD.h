// CZSTD: the only place znbd touches libzstd directly.
//
// zstd's contexts are expensive to create (hundreds of KiB) and cheap to
// reuse. This shim keeps one compression and one decompression context per
// thread, created on the thread's first call and freed when it exits, so a
// page never allocates; and it checks that a stream is exactly one frame
// before decoding it, so trailing bytes are an error. One-shot decoding
// writes straight into the caller's page and allocates no window.
#ifndef CZSTD_H
#define CZSTD_H

#include <stddef.h>
#include <stdint.h>

enum {
    CZSTD_OK = 0,
    /// A context could not be allocated.
    CZSTD_OUT_OF_MEMORY = -1,
    /// The destination is smaller than czstd_compress_bound(source_length),
    /// or (decompression) the frame holds more than the destination.
    CZSTD_OUTPUT_OVERRUN = -2,
    /// The stream ends before its frame does.
    CZSTD_TRUNCATED = -3,
    /// One valid frame, followed by bytes that are not part of it.
    CZSTD_TRAILING_INPUT = -4,
    /// Anything else libzstd rejects; `*library_error` says what.
    CZSTD_CORRUPT = -5,
};

/// The compression levels libzstd accepts, and its default (3).
int czstd_min_level(void);
int czstd_max_level(void);
int czstd_default_level(void);

/// libzstd's version string, e.g. "1.5.4".
const char *czstd_version_string(void);

/// The worst-case compressed size of `length` input bytes (ZSTD_compressBound).
size_t czstd_compress_bound(size_t length);

/// Compresses `source` as one zstd frame at `level`, with this thread's
/// context. On CZSTD_OK, `*compressed_length` holds the output length.
int czstd_compress(const uint8_t *source, size_t source_length,
                   uint8_t *destination, size_t destination_capacity,
                   int level, size_t *compressed_length, int *library_error);

/// Decompresses exactly one zstd frame that fills `source`, with this
/// thread's context. On CZSTD_OK, `*decompressed_length` holds the output
/// length.
int czstd_decompress(const uint8_t *source, size_t source_length,
                     uint8_t *destination, size_t destination_capacity,
                     size_t *decompressed_length, int *library_error);

#endif
