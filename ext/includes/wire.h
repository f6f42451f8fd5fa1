/* weavefast wire format, version 2 (docs/ARCHITECTURE.md is the reference).
 *
 * Everything here is pure byte work on caller-owned memory: no allocation,
 * no syscalls, safe to call without the GIL. Functions that validate input
 * return 0 or one of the WF_DROP_* reasons, which are also counter indexes.
 */
#ifndef WF_WIRE_H
#define WF_WIRE_H

#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>

/* Wire format. */
#define WF_MAGIC 0x5746u
#define WF_VERSION 2
#define WF_HEADER_LEN 24
#define WF_RECORD_HDR_LEN 4
#define WF_FRAG_HDR_LEN 12
#define WF_VNET_HDR_LEN 10
#define WF_ETH_HLEN 14
#define WF_TYPE_FRAMES 1
#define WF_TYPE_FRAGMENT 2
#define WF_TYPE_CONTROL 3
#define WF_RFLAG_VNET 1
#define WF_MAX_HOPS 16
#define WF_MAX_MESSAGE 262144
/* The hops byte: the hop count in its low bits, and a flag in its top bit
 * from the router that sealed the datagram: "datagrams from you get lost on
 * the way to me; send TCP super-frames as segments" (docs/ARCHITECTURE.md). */
#define WF_HOPS_MASK 0x7f
#define WF_FLAG_LOSS 0x80

/* Drop reasons; index 0 means "no drop". The order is the counter order. */
enum wf_drop {
    WF_OK = 0,
    WF_DROP_SHORT,
    WF_DROP_BAD_MAGIC,
    WF_DROP_BAD_VERSION,
    WF_DROP_BAD_TYPE,
    WF_DROP_BAD_LENGTH,
    WF_DROP_BAD_FRAGMENT,
    WF_DROP_UNKNOWN_PEER,
    WF_DROP_HOP_LIMIT,
    WF_DROP_HAIRPIN,
    WF_DROP_NO_PEER,
    WF_DROP_NO_ROUTE,
    WF_DROP_REASSEMBLY,
    WF_DROP_TAP_WRITE,
    WF_DROP_UDP_SEND,
    WF_DROP_CONTROL_QUEUE,
    WF_DROP_OVERSIZE,
    WF_DROP_BAD_TAG,
    WF_DROP_REPLAYED,
    WF_DROP_UNKNOWN_KEY,
    WF_DROP_NO_SESSION,
    WF_DROP_COUNT
};

typedef struct {
    uint8_t type;
    uint8_t lane;        /* the sending worker: receivers steer on it */
    uint8_t hops;        /* the hop count, without WF_FLAG_LOSS */
    uint8_t loss;        /* WF_FLAG_LOSS was set */
    uint16_t key_id;     /* the receiver's index of the session key */
    uint32_t src_peer;
    uint32_t dst_peer;
    uint64_t counter;    /* per key, never repeated: the AEAD nonce */
} wf_header;

static inline uint16_t wf_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t wf_get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wf_put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void wf_put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void wf_put64(uint8_t *p, uint64_t v) {
    wf_put32(p, (uint32_t)(v >> 32)); wf_put32(p + 4, (uint32_t)v);
}
static inline uint64_t wf_get64(const uint8_t *p) { return (uint64_t)wf_get32(p) << 32 | wf_get32(p + 4); }

static inline void wf_put_header(uint8_t *p, const wf_header *h) {
    wf_put16(p, WF_MAGIC);
    p[2] = WF_VERSION;
    p[3] = h->type;
    p[4] = h->lane;
    p[5] = h->hops;
    wf_put16(p + 6, h->key_id);
    wf_put32(p + 8, h->src_peer);
    wf_put32(p + 12, h->dst_peer);
    wf_put64(p + 16, h->counter);
}

/* A header template: lane, key id and counter are patched in when it is sent. */
static inline void wf_put_plain_header(uint8_t *p, uint8_t type, uint32_t src, uint32_t dst) {
    wf_header h = {.type = type, .src_peer = src, .dst_peer = dst};
    wf_put_header(p, &h);
}

/* What the sender patches into each datagram's header just before sealing. */
static inline void wf_patch_header(uint8_t *p, uint8_t lane, uint16_t key_id, uint64_t counter) {
    p[4] = lane;
    wf_put16(p + 6, key_id);
    wf_put64(p + 16, counter);
}

static inline int wf_get_header(const uint8_t *p, size_t len, wf_header *h) {
    if (len < WF_HEADER_LEN) return WF_DROP_SHORT;
    if (wf_get16(p) != WF_MAGIC) return WF_DROP_BAD_MAGIC;
    if (p[2] != WF_VERSION) return WF_DROP_BAD_VERSION;
    if (p[3] < WF_TYPE_FRAMES || p[3] > WF_TYPE_CONTROL) return WF_DROP_BAD_TYPE;
    h->type = p[3];
    h->lane = p[4];
    h->hops = p[5] & WF_HOPS_MASK;
    h->loss = (p[5] & WF_FLAG_LOSS) != 0;
    h->key_id = wf_get16(p + 6);
    h->src_peer = wf_get32(p + 8);
    h->dst_peer = wf_get32(p + 12);
    h->counter = wf_get64(p + 16);
    return WF_OK;
}

static inline void wf_put_record_header(uint8_t *p, uint16_t len, uint8_t rflags) {
    wf_put16(p, len);
    p[2] = rflags;
    p[3] = 0;
}

/* Checks that a FRAMES payload is a whole number of well-formed records.
 * Returns the record count through *count. */
static inline int wf_check_records(const uint8_t *p, size_t len, unsigned *count) {
    size_t off = 0;
    unsigned n = 0;
    if (len == 0) return WF_DROP_BAD_LENGTH;
    while (off < len) {
        if (len - off < WF_RECORD_HDR_LEN) return WF_DROP_BAD_LENGTH;
        size_t rlen = wf_get16(p + off);
        size_t min = (p[off + 2] & WF_RFLAG_VNET) ? WF_VNET_HDR_LEN + WF_ETH_HLEN : WF_ETH_HLEN;
        if (rlen < min || rlen > len - off - WF_RECORD_HDR_LEN) return WF_DROP_BAD_LENGTH;
        off += WF_RECORD_HDR_LEN + rlen;
        n++;
    }
    *count = n;
    return WF_OK;
}

/* A FRAGMENT body: message id, total length, offset, then the chunk. */
static inline int wf_check_fragment(const uint8_t *p, size_t len, uint32_t *msg,
                                    uint32_t *total, uint32_t *offset) {
    if (len < WF_FRAG_HDR_LEN) return WF_DROP_BAD_FRAGMENT;
    *msg = wf_get32(p);
    *total = wf_get32(p + 4);
    *offset = wf_get32(p + 8);
    size_t chunk = len - WF_FRAG_HDR_LEN;
    if (chunk == 0 || *total == 0 || *total > WF_MAX_MESSAGE ||
        *offset > *total || chunk > *total - *offset)
        return WF_DROP_BAD_FRAGMENT;
    return WF_OK;
}

/* Ethernet: the forwarding key is (VLAN << 48) | MAC. */
static inline uint64_t wf_mac48(const uint8_t *m) {
    return (uint64_t)wf_get16(m) << 32 | wf_get32(m + 2);
}

static inline uint16_t wf_frame_vlan(const uint8_t *eth, size_t len) {
    if (len >= 18 && eth[12] == 0x81 && eth[13] == 0x00) return wf_get16(eth + 14) & 0x0fff;
    return 0;
}

static inline int wf_is_multicast(const uint8_t *mac) { return mac[0] & 1; }

#endif
