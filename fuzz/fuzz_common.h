/* Shared bits of the libFuzzer harnesses (fuzz/fuzz_*.c): a reader over the
 * fuzzer's input, and a check that aborts loudly (libFuzzer saves the input). */
#ifndef WF_FUZZ_COMMON_H
#define WF_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__,       \
                    __LINE__, #cond);                                           \
            abort();                                                            \
        }                                                                       \
    } while (0)

typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline size_t fuzz_left(const fuzz_in *in) { return in->n; }

static inline uint8_t fuzz_u8(fuzz_in *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(fuzz_in *in) { return (uint16_t)(fuzz_u8(in) << 8 | fuzz_u8(in)); }

static inline uint32_t fuzz_u32(fuzz_in *in) { return (uint32_t)fuzz_u16(in) << 16 | fuzz_u16(in); }

static inline uint64_t fuzz_u64(fuzz_in *in) { return (uint64_t)fuzz_u32(in) << 32 | fuzz_u32(in); }

/* Up to `max` bytes of the input, copied into a buffer of exactly that many
 * bytes (so AddressSanitizer sees any read past them). Caller frees. */
static inline uint8_t *fuzz_bytes(fuzz_in *in, size_t want, size_t *got) {
    size_t n = want < in->n ? want : in->n;
    uint8_t *b = (uint8_t *)malloc(n ? n : 1);
    if (!b) abort();
    memcpy(b, in->p, n);
    in->p += n;
    in->n -= n;
    *got = n;
    return b;
}

/* Touches every byte so that a read of freed or unallocated memory is reported. */
static inline uint8_t fuzz_touch(const uint8_t *p, size_t n) {
    uint8_t x = 0;
    for (size_t i = 0; i < n; i++) x ^= p[i];
    return x;
}

#endif
