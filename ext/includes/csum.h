/* Internet checksum, for frames the kernel handed over with the checksum
 * left partial (virtio-net NEEDS_CSUM) that we send without their virtio
 * header: finishing it here keeps the wire format plain Ethernet and the
 * frame within the overlay MTU. Only frames up to one MTU get here (GSO
 * super-frames keep their header and their partial checksum).
 */
#ifndef WF_CSUM_H
#define WF_CSUM_H

#include <stdint.h>
#include <string.h>

/* One's-complement sum of n bytes, 8 at a time with end-around carry. */
static inline uint64_t wf_csum_add(uint64_t sum, const uint8_t *p, size_t n) {
    uint64_t word;
    while (n >= 8) {
        memcpy(&word, p, 8);
        sum += word;
        sum += sum < word;
        p += 8;
        n -= 8;
    }
    if (n) {
        word = 0;
        memcpy(&word, p, n);
        sum += word;
        sum += sum < word;
    }
    return sum;
}

static inline uint16_t wf_csum_fold(uint64_t sum) {
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/* Completes a partial checksum: the field at start + offset holds the
 * pseudo-header sum; the result covers bytes [start, n). Returns -1 when the
 * offsets do not fit the frame. The sum is computed in host order over the
 * bytes as they lie, which gives the right bytes back on any endianness. */
static inline int wf_csum_finish(uint8_t *frame, size_t n, size_t start, size_t offset) {
    if (start + offset + 2 > n) return -1;
    uint16_t c = (uint16_t)~wf_csum_fold(wf_csum_add(0, frame + start, n - start));
    if (c == 0) c = 0xffff;   /* the same value in one's complement; UDP reserves 0 for "none" */
    memcpy(frame + start + offset, &c, 2);
    return 0;
}

#endif
