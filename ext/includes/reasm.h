/* Reassembly of FRAGMENT messages (super-frames split across datagrams).
 *
 * A sender emits a message's fragments back to back on one socket, and the
 * underlay (a veth, a LAN) does not reorder them, so fragments must arrive in
 * order: anything else drops the partial message rather than buffering holes.
 * A fixed set of slots, each a buffer of WF_MAX_MESSAGE bytes reserved once
 * (pages become resident only as large messages use them).
 */
#ifndef WF_REASM_H
#define WF_REASM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "wire.h"

typedef struct {
    uint32_t src;
    uint32_t msg;       /* message id from the fragment header */
    uint32_t total;
    uint32_t have;      /* bytes held; 0 = slot free */
    uint64_t stamp;     /* last use, for reuse of the oldest slot */
    uint8_t *buf;
} wf_reasm_slot;

typedef struct {
    wf_reasm_slot *slots;
    unsigned nslots;
    uint64_t clock;
} wf_reasm;

static inline int wf_reasm_init(wf_reasm *r, unsigned nslots) {
    r->slots = (wf_reasm_slot *)calloc(nslots, sizeof(wf_reasm_slot));
    r->nslots = nslots;
    r->clock = 0;
    if (!r->slots) return -1;
    for (unsigned i = 0; i < nslots; i++)
        if (!(r->slots[i].buf = (uint8_t *)malloc(WF_MAX_MESSAGE))) return -1;
    return 0;
}

static inline void wf_reasm_free(wf_reasm *r) {
    if (!r->slots) return;
    for (unsigned i = 0; i < r->nslots; i++) free(r->slots[i].buf);
    free(r->slots);
    r->slots = NULL;
}

/* Adds one fragment (already checked by wf_check_fragment). Returns the whole
 * message (valid until the next call) when this fragment completes it. */
static inline const uint8_t *wf_reasm_feed(wf_reasm *r, uint32_t src, uint32_t msg,
                                           uint32_t total, uint32_t offset,
                                           const uint8_t *chunk, uint32_t len,
                                           uint64_t *dropped) {
    wf_reasm_slot *s = NULL, *oldest = NULL, *peer_slot = NULL;
    r->clock++;
    for (unsigned i = 0; i < r->nslots; i++) {
        wf_reasm_slot *c = &r->slots[i];
        if (c->have && c->src == src) {
            if (c->msg == msg) { s = c; break; }
            peer_slot = c;
        }
    }
    if (!s) {
        if (offset != 0) { (*dropped)++; return NULL; }  /* missed the start */
        if (peer_slot) { (*dropped)++; peer_slot->have = 0; }  /* a newer message from that sender */
        if (len == total) return chunk;                  /* whole in one fragment: no slot */
        for (unsigned i = 0; i < r->nslots && !s; i++)
            if (!r->slots[i].have) s = &r->slots[i];
        if (!s) {
            for (unsigned i = 0; i < r->nslots; i++)
                if (!oldest || r->slots[i].stamp < oldest->stamp) oldest = &r->slots[i];
            (*dropped)++;
            s = oldest;
        }
        s->src = src;
        s->msg = msg;
        s->total = total;
        s->have = 0;
    }
    if (offset != s->have || total != s->total) {
        (*dropped)++;
        s->have = 0;
        return NULL;
    }
    memcpy(s->buf + offset, chunk, len);
    s->have += len;
    s->stamp = r->clock;
    if (s->have < s->total) return NULL;
    s->have = 0;
    return s->buf;
}

#endif
