/* libFuzzer target: the RX path's glue between the parsers, reassembly and
 * coalescing, across the datagrams of receive batches.
 *
 * A line-by-line C transcription of ext/pipeline.pxi's rx_datagram (after
 * rx_open), rx_fragment, rx_gather_spill, rx_gather_deliver, rx_reassemble,
 * rx_deliver, rx_uso_hold, rx_uso_flush, rx_tso_hold and rx_tso_flush over the
 * real wire.h, reasm.h, uso.h and tso.h; the TAP writes are replaced by checks. Keep it in step with
 * pipeline.pxi. What it checks:
 *  - every frame written to the TAP is exactly a record as it arrived (the
 *    bytes a frame held for coalescing points at must not change before it
 *    is written);
 *  - no read of a receive buffer after its batch ended (buffers are freed at
 *    the end of each batch: ASan reports any later use).
 *
 * A frame of a message completed by the reassembler is held for coalescing
 * while it still lies in the reassembly slot, which wf_reasm_feed already
 * counts as free: rx_reassemble writes it before another fragment can reuse
 * the slot (tests/test_fuzz_regressions.py::
 * test_rx_frame_held_for_coalescing_survives_reassembly).
 *
 * Input: datagrams, each a 2-byte length then that many bytes (header and
 * body, taken as opened; the 16-byte trailer is added behind it as in the
 * receive buffer); length 0xffff ends a receive batch. Peers 1..3 are known
 * (slots 0..2), this router is peer 100.
 */
#include "fuzz_common.h"
#include "wire.h"
#include "reasm.h"
#include "uso.h"
#include "tso.h"
#include "aead.h"

#define LOCAL 100
#define GATHER_MAX 256
#define HDR_BLOCK (WF_HEADER_LEN + WF_FRAG_HDR_LEN)
#define BATCH 64

typedef struct {
    wf_reasm reasm;
    uint64_t reasm_dropped;
    /* gather */
    unsigned gather_n;
    uint32_t gather_src, gather_msg, gather_total, gather_have;
    int gather_slot;
    struct iovec gather_iov[GATHER_MAX + 1];
    /* uso */
    unsigned uso_n;
    size_t uso_segment, uso_total;
    const uint8_t *uso_first;
    int uso_slot;
    struct iovec uso_iov[WF_USO_MAX_SEGMENTS + 1];
    /* snapshots of what is held, to check it is written unchanged */
    uint8_t uso_first_copy[WF_USO_HDR_LEN];
    uint8_t *uso_copy[WF_USO_MAX_SEGMENTS + 1];
    /* tso */
    wf_tso_chain tso;
    int tso_slot;
    uint8_t tso_first_copy[WF_TSO_HDR_MAX];
    uint8_t *tso_copy[WF_TSO_MAX_SEGMENTS + 1];
} worker;

static void rx_tso_flush(worker *w);

static worker W;

/* The "TAP": a frame written must be a whole record as received. */
static void tap_write(const uint8_t *data, size_t len) { fuzz_touch(data, len); }

static void rx_uso_flush(worker *w) {
    unsigned n = w->uso_n;
    if (n == 0) return;
    w->uso_n = 0;
    FUZZ_CHECK(memcmp(w->uso_first, w->uso_first_copy, WF_USO_HDR_LEN) == 0);
    for (unsigned i = 1; i <= n; i++) {
        /* a held frame changed under us: what the TAP gets is not what arrived */
        FUZZ_CHECK(memcmp(w->uso_iov[i].iov_base, w->uso_copy[i], w->uso_iov[i].iov_len) == 0);
        tap_write(w->uso_iov[i].iov_base, w->uso_iov[i].iov_len);
    }
    if (n == 1) return;
    uint8_t hdr[WF_VNET_HDR_LEN + WF_USO_HDR_LEN];
    wf_uso_headers(hdr, w->uso_first, w->uso_segment, w->uso_total);
}

static int rx_uso_hold(worker *w, const uint8_t *eth, size_t n, int src_slot) {
    size_t payload = wf_uso_payload(eth, n);
    if (w->uso_n && (payload == 0 || payload > w->uso_segment || src_slot != w->uso_slot ||
                     w->uso_n == WF_USO_MAX_SEGMENTS || w->uso_total + payload > WF_USO_MAX_BYTES ||
                     w->uso_total != w->uso_n * w->uso_segment || !wf_uso_same_flow(w->uso_first, eth)))
        rx_uso_flush(w);
    if (payload == 0) return 0;
    if (w->uso_n == 0) {
        rx_tso_flush(w);
        w->uso_first = eth;
        memcpy(w->uso_first_copy, eth, WF_USO_HDR_LEN);
        w->uso_segment = payload;
        w->uso_total = 0;
        w->uso_slot = src_slot;
    }
    w->uso_n++;
    w->uso_iov[w->uso_n].iov_base = (void *)(eth + WF_USO_HDR_LEN);
    w->uso_iov[w->uso_n].iov_len = payload;
    memcpy(w->uso_copy[w->uso_n], eth + WF_USO_HDR_LEN, payload);
    w->uso_total += payload;
    return 1;
}

static void rx_tso_flush(worker *w) {
    unsigned n = w->tso.n;
    uint8_t hdr[WF_VNET_HDR_LEN + WF_TSO_HDR_MAX];
    if (n == 0) return;
    FUZZ_CHECK(memcmp(w->tso.first, w->tso_first_copy, w->tso.hdr) == 0);
    for (unsigned i = 1; i <= n; i++) {
        FUZZ_CHECK(memcmp(w->tso.iov[i].iov_base, w->tso_copy[i], w->tso.iov[i].iov_len) == 0);
        tap_write(w->tso.iov[i].iov_base, w->tso.iov[i].iov_len);
    }
    if (n == 1) {
        w->tso.n = 0;
        tap_write(w->tso.first, w->tso.hdr + w->tso.total);
        return;
    }
    FUZZ_CHECK(wf_tso_finish(&w->tso, hdr) == n + 1);
}

static int rx_tso_hold(worker *w, const uint8_t *eth, size_t n, int src_slot) {
    if (w->tso.n && src_slot != w->tso_slot) rx_tso_flush(w);
    int r = wf_tso_join(&w->tso, eth, n);
    if (r == 0) {
        rx_tso_flush(w);
        r = wf_tso_join(&w->tso, eth, n);
        FUZZ_CHECK(r == 1);
    }
    if (r < 0) {
        rx_tso_flush(w);
        return 0;
    }
    if (w->tso.n == 1) {
        rx_uso_flush(w);
        w->tso_slot = src_slot;
        memcpy(w->tso_first_copy, eth, w->tso.hdr);
    }
    memcpy(w->tso_copy[w->tso.n], w->tso.iov[w->tso.n].iov_base, w->tso.iov[w->tso.n].iov_len);
    return 1;
}

static void rx_hold_flush(worker *w) {
    rx_tso_flush(w);
    rx_uso_flush(w);
}

static void rx_deliver(worker *w, const uint8_t *p, size_t n, int src_slot) {
    size_t off = 0;
    while (off < n) {
        size_t rlen = wf_get16(p + off);
        int has_vnet = p[off + 2] & WF_RFLAG_VNET;
        const uint8_t *data = p + off + WF_RECORD_HDR_LEN;
        off += WF_RECORD_HDR_LEN + rlen;
        if (!has_vnet && (rx_tso_hold(w, data, rlen, src_slot) || rx_uso_hold(w, data, rlen, src_slot)))
            continue;
        rx_hold_flush(w);
        tap_write(data, rlen);
    }
}

static void rx_reassemble(worker *w, uint32_t src, int src_slot, uint32_t msg, uint32_t total,
                          uint32_t offset, const uint8_t *chunk, uint32_t n) {
    unsigned count;
    const uint8_t *whole = wf_reasm_feed(&w->reasm, src, msg, total, offset, chunk, n, &w->reasm_dropped);
    if (!whole) return;
    if (wf_check_records(whole, total, &count)) return;
    rx_deliver(w, whole, total, src_slot);
    rx_hold_flush(w);   /* the slot is free again once feed returned */
}

static void rx_gather_spill(worker *w) {
    unsigned n = w->gather_n;
    uint32_t off = 0;
    w->gather_n = 0;
    for (unsigned i = 1; i <= n; i++) {
        rx_reassemble(w, w->gather_src, w->gather_slot, w->gather_msg, w->gather_total, off,
                      w->gather_iov[i].iov_base, (uint32_t)w->gather_iov[i].iov_len);
        off += (uint32_t)w->gather_iov[i].iov_len;
    }
}

static void rx_gather_deliver(worker *w) {
    struct iovec *first = &w->gather_iov[1];
    uint8_t *p = first->iov_base;
    size_t rlen = wf_get16(p);
    int has_vnet = p[2] & WF_RFLAG_VNET;
    size_t head = WF_RECORD_HDR_LEN + WF_ETH_HLEN + (has_vnet ? WF_VNET_HDR_LEN : 0);
    if (rlen != (uint32_t)(w->gather_total - WF_RECORD_HDR_LEN) || first->iov_len < head ||
        rlen < head - WF_RECORD_HDR_LEN) {
        rx_gather_spill(w);
        return;
    }
    rx_hold_flush(w);
    size_t sum = 0;
    for (unsigned i = 1; i <= w->gather_n; i++) {
        tap_write(w->gather_iov[i].iov_base, w->gather_iov[i].iov_len);
        sum += w->gather_iov[i].iov_len;
    }
    FUZZ_CHECK(sum == rlen + WF_RECORD_HDR_LEN);
    w->gather_n = 0;
}

static void rx_fragment(worker *w, const wf_header *h, int src_slot, uint32_t msg, uint32_t total,
                        uint32_t offset, uint8_t *chunk, uint32_t n) {
    if (w->gather_n && (w->gather_src != h->src_peer || w->gather_msg != msg ||
                        offset != w->gather_have || total != w->gather_total))
        rx_gather_spill(w);
    if (w->gather_n == 0) {
        if (offset != 0) {
            rx_reassemble(w, h->src_peer, src_slot, msg, total, offset, chunk, n);
            return;
        }
        w->gather_src = h->src_peer;
        w->gather_msg = msg;
        w->gather_total = total;
        w->gather_have = 0;
        w->gather_slot = src_slot;
    }
    w->gather_n++;
    w->gather_iov[w->gather_n].iov_base = chunk;
    w->gather_iov[w->gather_n].iov_len = n;
    w->gather_have += n;
    if (w->gather_have == total) rx_gather_deliver(w);
    else if (w->gather_n == GATHER_MAX) rx_gather_spill(w);
}

static void rx_datagram(worker *w, uint8_t *p, size_t n) {
    wf_header h;
    unsigned count;
    uint32_t msg, total, offset;
    if (wf_get_header(p, n, &h)) return;
    if (n < WF_HEADER_LEN + WF_TRAILER_LEN) return;
    n -= WF_TRAILER_LEN;
    if (h.type == WF_TYPE_CONTROL) return;
    if (h.src_peer < 1 || h.src_peer > 3) return;   /* unknown_peer */
    int src_slot = (int)h.src_peer - 1;
    if (h.dst_peer != 0 && h.dst_peer != LOCAL) return;   /* relayed */
    if (h.type == WF_TYPE_FRAMES) {
        if (wf_check_records(p + WF_HEADER_LEN, n - WF_HEADER_LEN, &count)) return;
        rx_deliver(w, p + WF_HEADER_LEN, n - WF_HEADER_LEN, src_slot);
        return;
    }
    if (wf_check_fragment(p + WF_HEADER_LEN, n - WF_HEADER_LEN, &msg, &total, &offset)) return;
    rx_fragment(w, &h, src_slot, msg, total, offset, p + HDR_BLOCK, (uint32_t)(n - HDR_BLOCK));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t *bufs[BATCH];
    unsigned nb = 0;
    worker *w = &W;
    if (!w->reasm.slots) {
        if (wf_reasm_init(&w->reasm, 2)) abort();
        for (unsigned i = 0; i <= WF_USO_MAX_SEGMENTS; i++) w->uso_copy[i] = malloc(65536);
        for (unsigned i = 0; i <= WF_TSO_MAX_SEGMENTS; i++) w->tso_copy[i] = malloc(65536);
    }
    for (unsigned i = 0; i < w->reasm.nslots; i++) w->reasm.slots[i].have = 0;
    w->gather_n = w->uso_n = w->tso.n = 0;
    while (fuzz_left(&in) >= 2) {
        uint16_t len = fuzz_u16(&in);
        int end = len == 0xffff || nb == BATCH;
        if (!end) {
            size_t got;
            uint8_t *d = fuzz_bytes(&in, len, &got);
            uint8_t *buf = malloc(got + WF_TRAILER_LEN);   /* the datagram, then its trailer */
            memcpy(buf, d, got);
            memset(buf + got, 0xa5, WF_TRAILER_LEN);
            free(d);
            bufs[nb++] = buf;
            rx_datagram(w, buf, got + WF_TRAILER_LEN);
        }
        if (end || fuzz_left(&in) < 2) {   /* the end of rx_batch */
            if (w->gather_n) rx_gather_spill(w);
            rx_hold_flush(w);
            for (unsigned i = 0; i < nb; i++) free(bufs[i]);   /* reused by the next recvmmsg */
            nb = 0;
        }
    }
    return 0;
}
