/* libFuzzer target: one received datagram through the parsers of the RX path
 * (ext/pipeline.pxi rx_datagram): wf_get_header, then for FRAMES
 * wf_check_records and a walk over the records as rx_deliver does (learning
 * key, VLAN, USO eligibility), for FRAGMENT wf_check_fragment and the checks
 * of the zero-copy path (rx_gather_deliver) on a message in one fragment.
 *
 * Input: the datagram as it left recvmmsg, header + body + 16-byte trailer,
 * the body taken as already opened (the AEAD has its own target). It is
 * copied into a buffer of exactly its size, so any read past it is reported.
 */
#include "fuzz_common.h"
#include "wire.h"
#include "uso.h"
#include "aead.h"   /* WF_TRAILER_LEN */

#define HDR_BLOCK (WF_HEADER_LEN + WF_FRAG_HDR_LEN)

static void walk_records(const uint8_t *p, size_t n, unsigned count) {
    size_t off = 0;
    unsigned seen = 0;
    volatile uint64_t sink = 0;
    while (off < n) {   /* rx_deliver */
        FUZZ_CHECK(n - off >= WF_RECORD_HDR_LEN);
        size_t rlen = wf_get16(p + off);
        int has_vnet = p[off + 2] & WF_RFLAG_VNET;
        const uint8_t *data = p + off + WF_RECORD_HDR_LEN;
        off += WF_RECORD_HDR_LEN + rlen;
        FUZZ_CHECK(off <= n);
        const uint8_t *eth = has_vnet ? data + WF_VNET_HDR_LEN : data;
        size_t elen = has_vnet ? rlen - WF_VNET_HDR_LEN : rlen;
        FUZZ_CHECK(elen >= WF_ETH_HLEN && elen <= rlen);
        /* rx_learn -> frame_key */
        sink += wf_mac48(eth + 6) ^ ((uint64_t)wf_frame_vlan(eth, elen) << 48);
        sink += wf_is_multicast(eth + 6);
        if (!has_vnet) {   /* rx_uso_hold */
            size_t payload = wf_uso_payload(eth, elen);
            if (payload) {
                FUZZ_CHECK(payload + WF_USO_HDR_LEN == elen);
                sink += wf_uso_same_flow(eth, eth);
            }
        }
        sink += fuzz_touch(data, rlen);   /* what tap_write_frame hands the kernel */
        seen++;
    }
    FUZZ_CHECK(off == n);
    FUZZ_CHECK(seen == count);
    (void)sink;
}

/* rx_gather_deliver's test on the first chunk of a message that arrived whole
 * in the same batch: the fast path must only take what wf_check_records takes. */
static void gather_fast_path(const uint8_t *chunk, size_t first_len, uint32_t total) {
    size_t rlen = wf_get16(chunk);
    int has_vnet = chunk[2] & WF_RFLAG_VNET;
    size_t head = WF_RECORD_HDR_LEN + WF_ETH_HLEN + (has_vnet ? WF_VNET_HDR_LEN : 0);
    unsigned count = 0;
    if (rlen != (uint32_t)(total - WF_RECORD_HDR_LEN) || first_len < head ||
        rlen < head - WF_RECORD_HDR_LEN)
        return;   /* the general path (reassembler + wf_check_records) */
    FUZZ_CHECK(first_len == total);
    FUZZ_CHECK(wf_check_records(chunk, total, &count) == WF_OK && count == 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *p = (uint8_t *)malloc(size ? size : 1);
    wf_header h;
    size_t n = size;
    unsigned count = 0;
    uint32_t msg, total, offset;
    int err;
    memcpy(p, data, size);
    err = wf_get_header(p, n, &h);
    if (err) {
        FUZZ_CHECK(err == WF_DROP_SHORT || err == WF_DROP_BAD_MAGIC || err == WF_DROP_BAD_VERSION ||
                   err == WF_DROP_BAD_TYPE);
        goto out;
    }
    FUZZ_CHECK(n >= WF_HEADER_LEN && h.type >= WF_TYPE_FRAMES && h.type <= WF_TYPE_CONTROL);
    if (n < WF_HEADER_LEN + WF_TRAILER_LEN) goto out;   /* rx_open: short */
    n -= WF_TRAILER_LEN;
    if (h.type == WF_TYPE_CONTROL) {
        fuzz_touch(p + WF_HEADER_LEN, n - WF_HEADER_LEN);   /* queued for Python */
    } else if (h.type == WF_TYPE_FRAMES) {
        err = wf_check_records(p + WF_HEADER_LEN, n - WF_HEADER_LEN, &count);
        if (err == WF_OK) walk_records(p + WF_HEADER_LEN, n - WF_HEADER_LEN, count);
        else FUZZ_CHECK(err == WF_DROP_BAD_LENGTH);
    } else {
        err = wf_check_fragment(p + WF_HEADER_LEN, n - WF_HEADER_LEN, &msg, &total, &offset);
        if (err == WF_OK) {
            size_t chunk = n - HDR_BLOCK;
            FUZZ_CHECK(chunk > 0 && total > 0 && total <= WF_MAX_MESSAGE);
            FUZZ_CHECK((uint64_t)offset + chunk <= total);
            fuzz_touch(p + HDR_BLOCK, chunk);
            /* The fast path reads the record header from the first chunk;
             * the trailer lies behind it in the receive buffer. */
            if (offset == 0 && chunk == total) gather_fast_path(p + HDR_BLOCK, chunk, total);
        } else {
            FUZZ_CHECK(err == WF_DROP_BAD_FRAGMENT);
        }
    }
out:
    free(p);
    return 0;
}
