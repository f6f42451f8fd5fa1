/* Coalescing small UDP datagrams of one flow into a UDP GSO (USO) super-frame
 * for the TAP, the receive-side counterpart of UDP GRO: one write instead of
 * one per datagram, and the kernel splits it again only where it must.
 * IPv4 without options or fragments only; anything else is written as it is.
 */
#ifndef WF_USO_H
#define WF_USO_H

#include <stdint.h>
#include <string.h>
#include <linux/virtio_net.h>
#include "csum.h"
#include "wire.h"

#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5   /* Linux 5.18 headers; Debian 12's are older */
#endif

#define WF_USO_HDR_LEN (WF_ETH_HLEN + 20 + 8)   /* Ethernet + IPv4 + UDP */
#define WF_USO_MAX_SEGMENTS 64
#define WF_USO_MAX_BYTES 60000

/* The UDP payload size of a plain IPv4/UDP frame that can be coalesced, or 0. */
static inline size_t wf_uso_payload(const uint8_t *eth, size_t n) {
    const uint8_t *ip = eth + WF_ETH_HLEN;
    if (n <= WF_USO_HDR_LEN || eth[12] != 0x08 || eth[13] != 0x00) return 0;
    if (ip[0] != 0x45 || ip[9] != 17 || (wf_get16(ip + 6) & 0x3fff)) return 0;
    if (wf_get16(ip + 2) != n - WF_ETH_HLEN || wf_get16(ip + 24) != n - WF_ETH_HLEN - 20) return 0;
    return n - WF_USO_HDR_LEN;
}

/* Same MACs, TOS, DF, TTL, addresses and ports: segments of one super-frame. */
static inline int wf_uso_same_flow(const uint8_t *a, const uint8_t *b) {
    const uint8_t *ia = a + WF_ETH_HLEN, *ib = b + WF_ETH_HLEN;
    return memcmp(a, b, 12) == 0 && ia[1] == ib[1] && (ia[6] & 0x40) == (ib[6] & 0x40) &&
           ia[8] == ib[8] && memcmp(ia + 12, ib + 12, 12) == 0;
}

/* Writes into out (WF_VNET_HDR_LEN + WF_USO_HDR_LEN bytes) the virtio-net
 * header and the headers of a super-frame made of `total` payload bytes in
 * segments of `segment` bytes, from the first datagram's headers. */
static inline void wf_uso_headers(uint8_t *out, const uint8_t *first, size_t segment, size_t total) {
    struct virtio_net_hdr *vh = (struct virtio_net_hdr *)out;
    uint8_t *eth = out + WF_VNET_HDR_LEN, *ip = eth + WF_ETH_HLEN, *udp = ip + 20;
    uint8_t pseudo[12];
    uint16_t c;
    memset(vh, 0, sizeof(*vh));
    vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh->gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
    vh->hdr_len = WF_USO_HDR_LEN;
    vh->gso_size = (uint16_t)segment;
    vh->csum_start = WF_ETH_HLEN + 20;
    vh->csum_offset = 6;
    memcpy(eth, first, WF_USO_HDR_LEN);
    wf_put16(ip + 2, (uint16_t)(20 + 8 + total));
    memset(ip + 10, 0, 2);
    c = (uint16_t)~wf_csum_fold(wf_csum_add(0, ip, 20));
    memcpy(ip + 10, &c, 2);
    wf_put16(udp + 4, (uint16_t)(8 + total));
    /* A partial checksum: the pseudo-header sum, the kernel adds the rest per segment. */
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 17;
    wf_put16(pseudo + 10, (uint16_t)(8 + total));
    c = wf_csum_fold(wf_csum_add(0, pseudo, 12));
    memcpy(udp + 6, &c, 2);
}

#endif
