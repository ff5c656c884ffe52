// tools/bench-lzo-swift-vs-c's reference loop in C against liblzo2: the same work
// as `znbd-bench codec` (see tools/znbd-bench/CodecBenchmark.swift), so the ratio
// of the two is the cost of the Swift layer.
//
//   lzo-bench CORPUS_FILE [PASSES]
// Prints: "c compress_MBps decompress_MBps ratio"
#include <lzo/lzo1x.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE 4096
#define BOUND (PAGE + PAGE / 16 + 64 + 3)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: lzo-bench CORPUS_FILE [PASSES]\n");
        return 64;
    }
    int passes = argc > 2 ? atoi(argv[2]) : 5;
    FILE *file = fopen(argv[1], "rb");
    if (!file) { perror(argv[1]); return 66; }
    fseek(file, 0, SEEK_END);
    size_t size = (size_t)ftell(file) / PAGE * PAGE;
    fseek(file, 0, SEEK_SET);
    unsigned char *corpus = malloc(size);
    if (!corpus || fread(corpus, 1, size, file) != size) { fprintf(stderr, "read failed\n"); return 66; }
    fclose(file);
    size_t pages = size / PAGE;
    if (lzo_init() != LZO_E_OK) { fprintf(stderr, "lzo_init failed\n"); return 70; }

    void *work = malloc(LZO1X_1_MEM_COMPRESS);
    unsigned char *streams = malloc(pages * BOUND);
    size_t *lengths = malloc(pages * sizeof(size_t));
    unsigned char page[PAGE];
    double best_compress = 1e30, best_decompress = 1e30;
    size_t total = 0;
    for (int pass = 0; pass < passes; pass++) {
        double start = now();
        total = 0;
        for (size_t i = 0; i < pages; i++) {
            lzo_uint out = 0;
            lzo1x_1_compress(corpus + i * PAGE, PAGE, streams + i * BOUND, &out, work);
            lengths[i] = out;
            total += out;
        }
        double elapsed = now() - start;
        if (elapsed < best_compress) best_compress = elapsed;

        start = now();
        for (size_t i = 0; i < pages; i++) {
            lzo_uint out = PAGE;
            int status = lzo1x_decompress_safe(streams + i * BOUND, lengths[i], page, &out, NULL);
            if (status != LZO_E_OK || out != PAGE || memcmp(page, corpus + i * PAGE, PAGE) != 0) {
                fprintf(stderr, "page %zu did not round-trip\n", i);
                return 70;
            }
        }
        elapsed = now() - start;
        if (elapsed < best_decompress) best_decompress = elapsed;
    }
    printf("c %.1f %.1f %.3f\n", size / best_compress / 1e6, size / best_decompress / 1e6, (double)size / total);
    return 0;
}
