/* TCP segmentation and coalescing in software, for lossy paths.
 *
 * Sending (software TSO): a TCPv4 super-frame read from the TAP is cut into
 * the MSS-sized segments the kernel would have put on the wire (its
 * virtio-net gso_size), each with its own IPv4 length, id and checksum, TCP
 * sequence number and checksum; FIN and PSH stay on the last segment only,
 * CWR on the first only (as tcp_gso_segment does). Each segment then travels
 * in a FRAMES datagram of its own, so a lost datagram costs the sender one
 * MSS instead of the whole super-frame.
 *
 * Receiving (GRO, the rules of wireguard-go and of the kernel's tcp_gro):
 * consecutive segments of one flow are joined into one super-frame for the
 * TAP with a virtio-net TCPV4 header: same MACs, ToS, TTL, DF, addresses,
 * ports, ACK number, window and TCP options, flags ACK or ACK|PSH only,
 * adjacent sequence numbers, every segment but the last of the same size,
 * PSH only on the last, IPv4 without options or fragments, at most 65535
 * bytes of IP. Anything else is written as it is.
 *
 * IPv4 only: TCPv6 super-frames keep the FRAGMENT path.
 * Pure byte work on caller-owned memory, no allocation, no syscalls.
 */
#ifndef WF_TSO_H
#define WF_TSO_H

#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <linux/virtio_net.h>
#include "csum.h"
#include "wire.h"

#define WF_TSO_HDR_MAX (WF_ETH_HLEN + 60 + 60)   /* Ethernet + IPv4 + TCP with options */
#define WF_TSO_MAX_SEGMENTS 64                    /* segments joined into one super-frame */
#define WF_TSO_MAX_SPLIT 512                      /* segments one super-frame may be cut into */

#define WF_TCP_FIN 0x01
#define WF_TCP_SYN 0x02
#define WF_TCP_RST 0x04
#define WF_TCP_PSH 0x08
#define WF_TCP_ACK 0x10
#define WF_TCP_CWR 0x80

/* --- segmentation ------------------------------------------------------- */

/* The header length (Ethernet + IPv4 + TCP) of a TCPv4 GSO super-frame that
 * can be segmented here, with its segment size in *mss; 0 when it cannot (not
 * TCPv4 GSO, a VLAN tag, IP options that do not add up, inconsistent lengths,
 * more than WF_TSO_MAX_SPLIT segments). `eth` follows the virtio-net header. */
static inline size_t wf_tso_plan(const struct virtio_net_hdr *vh, const uint8_t *eth, size_t n,
                                 size_t *mss) {
    const uint8_t *ip = eth + WF_ETH_HLEN;
    size_t ihl, doff, hdr;
    if ((vh->gso_type & ~VIRTIO_NET_HDR_GSO_ECN) != VIRTIO_NET_HDR_GSO_TCPV4 || vh->gso_size == 0)
        return 0;
    if (n < WF_ETH_HLEN + 40 || eth[12] != 0x08 || eth[13] != 0x00) return 0;
    if ((ip[0] >> 4) != 4 || ip[9] != 6 || (wf_get16(ip + 6) & 0x3fff)) return 0;
    ihl = (size_t)(ip[0] & 15) * 4;
    if (ihl < 20 || wf_get16(ip + 2) != n - WF_ETH_HLEN || n < WF_ETH_HLEN + ihl + 20) return 0;
    doff = (size_t)(ip[ihl + 12] >> 4) * 4;
    hdr = WF_ETH_HLEN + ihl + doff;
    if (doff < 20 || hdr >= n) return 0;
    if ((n - hdr + vh->gso_size - 1) / vh->gso_size > WF_TSO_MAX_SPLIT) return 0;
    *mss = vh->gso_size;
    return hdr;
}

/* Sum of the TCP pseudo-header (addresses, protocol, TCP length). */
static inline uint64_t wf_tcp_pseudo(const uint8_t *ip, size_t tcp_len) {
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    wf_put16(pseudo + 10, (uint16_t)tcp_len);
    return wf_csum_add(0, pseudo, 12);
}

static inline void wf_ipv4_csum(uint8_t *ip) {
    uint16_t c;
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    memset(ip + 10, 0, 2);
    c = (uint16_t)~wf_csum_fold(wf_csum_add(0, ip, ihl));
    memcpy(ip + 10, &c, 2);
}

/* Writes into out the `hdr` header bytes of segment i (of nseg) of the
 * super-frame `eth`, whose payload is `len` bytes at `payload`: lengths, IPv4
 * id and checksum, sequence number, flags and a complete TCP checksum. */
static inline void wf_tso_segment(uint8_t *out, const uint8_t *eth, size_t hdr, size_t mss,
                                  unsigned i, unsigned nseg, const uint8_t *payload, size_t len) {
    uint8_t *ip = out + WF_ETH_HLEN, *tcp;
    size_t ihl = (size_t)(eth[WF_ETH_HLEN] & 15) * 4, tcp_len;
    uint16_t c;
    memcpy(out, eth, hdr);
    tcp = ip + ihl;
    tcp_len = hdr - WF_ETH_HLEN - ihl + len;
    wf_put16(ip + 2, (uint16_t)(ihl + tcp_len));
    wf_put16(ip + 4, (uint16_t)(wf_get16(ip + 4) + i));
    wf_ipv4_csum(ip);
    wf_put32(tcp + 4, wf_get32(tcp + 4) + (uint32_t)(i * mss));
    if (i + 1 < nseg) tcp[13] &= (uint8_t)~(WF_TCP_FIN | WF_TCP_PSH);
    if (i > 0) tcp[13] &= (uint8_t)~WF_TCP_CWR;
    memset(tcp + 16, 0, 2);
    c = (uint16_t)~wf_csum_fold(wf_csum_add(wf_csum_add(wf_tcp_pseudo(ip, tcp_len), tcp,
                                                        hdr - WF_ETH_HLEN - ihl), payload, len));
    memcpy(tcp + 16, &c, 2);
}

/* --- coalescing ------------------------------------------------------------ */

/* The TCP payload size of a plain IPv4/TCP frame that may be coalesced (flags
 * ACK or ACK|PSH, no IP options, not a fragment, no Ethernet padding), with
 * its header length in *hdr; 0 when it may not. */
static inline size_t wf_tso_payload(const uint8_t *eth, size_t n, size_t *hdr) {
    const uint8_t *ip = eth + WF_ETH_HLEN, *tcp = ip + 20;
    size_t doff;
    if (n < WF_ETH_HLEN + 40 || eth[12] != 0x08 || eth[13] != 0x00) return 0;
    if (ip[0] != 0x45 || ip[9] != 6 || (wf_get16(ip + 6) & 0x3fff)) return 0;
    if (wf_get16(ip + 2) != n - WF_ETH_HLEN) return 0;
    if ((tcp[13] & (uint8_t)~WF_TCP_PSH) != WF_TCP_ACK) return 0;
    doff = (size_t)(tcp[12] >> 4) * 4;
    if (doff < 20 || WF_ETH_HLEN + 20 + doff >= n) return 0;
    *hdr = WF_ETH_HLEN + 20 + doff;
    return n - *hdr;
}

typedef struct {
    unsigned n;                 /* segments held; 0 = empty */
    size_t hdr;                 /* header bytes of each */
    size_t segment;             /* payload bytes of the first (of all but the last) */
    size_t total;               /* payload bytes held */
    uint32_t next_seq;          /* the sequence number that may follow */
    int psh;                    /* the last one held had PSH: nothing may follow */
    const uint8_t *first;       /* the first frame: the super-frame takes its headers */
    struct iovec iov[WF_TSO_MAX_SEGMENTS + 1];   /* [0] for the headers, then the payloads */
} wf_tso_chain;

/* Same flow and header fields as the chain's first segment, and b's sequence
 * number follows what the chain holds. */
static inline int wf_tso_follows(const wf_tso_chain *c, const uint8_t *b) {
    const uint8_t *a = c->first, *ia = a + WF_ETH_HLEN, *ib = b + WF_ETH_HLEN;
    const uint8_t *ta = ia + 20, *tb = ib + 20;
    return memcmp(a, b, 12) == 0 && ia[1] == ib[1] && (ia[6] & 0x40) == (ib[6] & 0x40) &&
           ia[8] == ib[8] && memcmp(ia + 12, ib + 12, 8) == 0 &&
           memcmp(ta, tb, 4) == 0 && wf_get32(tb + 4) == c->next_seq &&
           memcmp(ta + 8, tb + 8, 4) == 0 && ta[12] == tb[12] &&
           (ta[13] & (uint8_t)~WF_TCP_PSH) == (tb[13] & (uint8_t)~WF_TCP_PSH) &&
           memcmp(ta + 14, tb + 14, 2) == 0 &&
           memcmp(ta + 20, tb + 20, c->hdr - WF_ETH_HLEN - 40) == 0;
}

/* Offers a frame to the chain. 1: held (the chain points into it until it is
 * written); 0: it may be coalesced but not onto this chain (write the chain,
 * then offer it again); -1: it is never coalesced (write the chain, then the
 * frame as it is). */
static inline int wf_tso_join(wf_tso_chain *c, const uint8_t *eth, size_t n) {
    size_t hdr, payload = wf_tso_payload(eth, n, &hdr);
    if (payload == 0) return -1;
    if (c->n == 0) {
        c->first = eth;
        c->hdr = hdr;
        c->segment = payload;
        c->total = 0;
        c->psh = 0;
        c->next_seq = wf_get32(eth + WF_ETH_HLEN + 24);
    } else if (c->psh || c->n == WF_TSO_MAX_SEGMENTS || hdr != c->hdr || payload > c->segment ||
               c->total != c->n * c->segment ||   /* a shorter one already ended it */
               hdr - WF_ETH_HLEN + c->total + payload > 65535 || !wf_tso_follows(c, eth)) {
        return 0;
    }
    c->n++;
    c->iov[c->n].iov_base = (void *)(eth + hdr);
    c->iov[c->n].iov_len = payload;
    c->total += payload;
    c->next_seq += (uint32_t)payload;
    c->psh = (eth[WF_ETH_HLEN + 33] & WF_TCP_PSH) != 0;
    return 1;
}

/* Writes into out (WF_VNET_HDR_LEN + chain hdr bytes) the virtio-net header
 * and the headers of the super-frame the chain makes (n >= 2), points iov[0]
 * at them, empties the chain and returns the iovec count (n + 1). The TCP
 * checksum is left partial (the pseudo-header sum) for the kernel. */
static inline unsigned wf_tso_finish(wf_tso_chain *c, uint8_t *out) {
    struct virtio_net_hdr *vh = (struct virtio_net_hdr *)out;
    uint8_t *eth = out + WF_VNET_HDR_LEN, *ip = eth + WF_ETH_HLEN, *tcp = ip + 20;
    size_t tcp_len = c->hdr - WF_ETH_HLEN - 20 + c->total;
    unsigned count = c->n + 1;
    uint16_t sum;
    memset(vh, 0, sizeof(*vh));
    vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh->gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
    vh->hdr_len = (uint16_t)c->hdr;
    vh->gso_size = (uint16_t)c->segment;
    vh->csum_start = WF_ETH_HLEN + 20;
    vh->csum_offset = 16;
    memcpy(eth, c->first, c->hdr);
    wf_put16(ip + 2, (uint16_t)(20 + tcp_len));
    wf_ipv4_csum(ip);
    if (c->psh) tcp[13] |= WF_TCP_PSH;
    sum = wf_csum_fold(wf_tcp_pseudo(ip, tcp_len));
    memcpy(tcp + 16, &sum, 2);
    c->iov[0].iov_base = out;
    c->iov[0].iov_len = WF_VNET_HDR_LEN + c->hdr;
    c->n = 0;
    return count;
}

#endif
