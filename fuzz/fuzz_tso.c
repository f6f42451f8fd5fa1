/* libFuzzer target: software TSO and the TCP coalescer (tso.h), segments mode.
 *
 * Segmentation: the first input frame, behind a virtio-net header from the
 * input, goes through wf_tso_plan; when it plans a cut, every segment is
 * built as emit_segmented (ext/udp.pxi) does and checked: IPv4 and TCP
 * checksums valid by a plain RFC 1071 sum, lengths, sequence numbers, the
 * payloads adding up to the super-frame's.
 *
 * Coalescing: every frame goes through a copy of rx_tso_hold / rx_tso_flush
 * (ext/pipeline.pxi); each super-frame wf_tso_finish writes is checked
 * (virtio-net header, IPv4 length and checksum, partial TCP checksum = the
 * pseudo-header sum, at most 65535 bytes of IP), and must plan and cut again.
 *
 * Input: a 10-byte virtio-net header, then frames, each a 2-byte length (mod
 * 66000 for the first, 1600 for the rest) then that many bytes, each copied
 * into a buffer of exactly its size.
 */
#include "fuzz_common.h"
#include "tso.h"

#define MAX_FRAMES 80

static uint16_t rfc1071(const uint8_t *p, size_t n, uint32_t sum) {
    uint64_t s = sum;
    for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) s += (uint32_t)p[n - 1] << 8;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

static uint32_t pseudo_sum(const uint8_t *ip, size_t tcp_len) {
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    wf_put16(pseudo + 10, (uint16_t)tcp_len);
    return rfc1071(pseudo, 12, 0);
}

static void check_cut(const uint8_t *vnet_frame, size_t n) {
    const struct virtio_net_hdr *vh = (const struct virtio_net_hdr *)vnet_frame;
    const uint8_t *eth = vnet_frame + WF_VNET_HDR_LEN;
    size_t mss = 0, hdr = wf_tso_plan(vh, eth, n - WF_VNET_HDR_LEN, &mss);
    if (!hdr) return;
    size_t len = n - WF_VNET_HDR_LEN, payload = len - hdr, off = 0;
    FUZZ_CHECK(hdr <= WF_TSO_HDR_MAX && hdr < len && mss > 0);
    unsigned nseg = (unsigned)((payload + mss - 1) / mss);
    FUZZ_CHECK(nseg >= 1 && nseg <= WF_TSO_MAX_SPLIT);
    size_t ihl = (size_t)(eth[WF_ETH_HLEN] & 15) * 4;
    uint32_t seq = wf_get32(eth + WF_ETH_HLEN + ihl + 4);
    for (unsigned i = 0; i < nseg; i++) {
        size_t clen = payload - off < mss ? payload - off : mss;
        uint8_t *seg = (uint8_t *)malloc(hdr + clen);
        wf_tso_segment(seg, eth, hdr, mss, i, nseg, eth + hdr + off, clen);
        memcpy(seg + hdr, eth + hdr + off, clen);
        const uint8_t *ip = seg + WF_ETH_HLEN, *tcp = ip + ihl;
        FUZZ_CHECK(wf_get16(ip + 2) == hdr + clen - WF_ETH_HLEN);
        FUZZ_CHECK(rfc1071(ip, ihl, 0) == 0xffff);
        FUZZ_CHECK(rfc1071(tcp, hdr + clen - WF_ETH_HLEN - ihl, pseudo_sum(ip, hdr + clen - WF_ETH_HLEN - ihl)) == 0xffff);
        FUZZ_CHECK(wf_get32(tcp + 4) == seq + (uint32_t)off);
        if (i + 1 < nseg) FUZZ_CHECK(!(tcp[13] & (WF_TCP_FIN | WF_TCP_PSH)));
        if (i > 0) FUZZ_CHECK(!(tcp[13] & WF_TCP_CWR));
        free(seg);
        off += clen;
    }
    FUZZ_CHECK(off == payload);
}

static struct {
    wf_tso_chain c;
    size_t lens[WF_TSO_MAX_SEGMENTS + 1];
} tso;

static void tso_flush(void) {
    uint8_t out[WF_VNET_HDR_LEN + WF_TSO_HDR_MAX];
    unsigned n = tso.c.n;
    if (n == 0) return;
    if (n == 1) {
        tso.c.n = 0;
        fuzz_touch(tso.c.first, tso.c.hdr + tso.c.total);
        return;
    }
    size_t hdr = tso.c.hdr, total = tso.c.total, segment = tso.c.iov[1].iov_len;
    unsigned count = wf_tso_finish(&tso.c, out);
    FUZZ_CHECK(count == n + 1 && tso.c.n == 0 && tso.c.iov[0].iov_base == out);
    const struct virtio_net_hdr *vh = (const struct virtio_net_hdr *)out;
    const uint8_t *ip = out + WF_VNET_HDR_LEN + WF_ETH_HLEN, *tcp = ip + 20;
    FUZZ_CHECK(vh->gso_type == VIRTIO_NET_HDR_GSO_TCPV4 && vh->hdr_len == hdr && vh->gso_size == segment);
    FUZZ_CHECK(vh->csum_start == 34 && vh->csum_offset == 16);
    FUZZ_CHECK(20 + hdr - WF_ETH_HLEN - 20 + total <= 65535);
    FUZZ_CHECK(wf_get16(ip + 2) == hdr - WF_ETH_HLEN + total);
    FUZZ_CHECK(rfc1071(ip, 20, 0) == 0xffff);
    FUZZ_CHECK(wf_get16(tcp + 16) == pseudo_sum(ip, hdr - WF_ETH_HLEN - 20 + total));
    size_t sum = 0;
    for (unsigned i = 1; i <= n; i++) {
        FUZZ_CHECK(tso.c.iov[i].iov_len > 0 && tso.c.iov[i].iov_len <= segment);
        FUZZ_CHECK(i == n || tso.c.iov[i].iov_len == segment);
        fuzz_touch((const uint8_t *)tso.c.iov[i].iov_base, tso.c.iov[i].iov_len);
        sum += tso.c.iov[i].iov_len;
    }
    FUZZ_CHECK(sum == total);
    /* The super-frame, put together, must cut again into n segments. */
    size_t len = WF_VNET_HDR_LEN + hdr + total;
    uint8_t *whole = (uint8_t *)malloc(len), *p = whole;
    memcpy(p, out, WF_VNET_HDR_LEN + hdr);
    p += WF_VNET_HDR_LEN + hdr;
    for (unsigned i = 1; i <= n; i++) {
        memcpy(p, tso.c.iov[i].iov_base, tso.c.iov[i].iov_len);
        p += tso.c.iov[i].iov_len;
    }
    size_t mss = 0;
    FUZZ_CHECK(wf_tso_plan(vh, whole + WF_VNET_HDR_LEN, len - WF_VNET_HDR_LEN, &mss) == hdr && mss == segment);
    check_cut(whole, len);
    free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t *frames[MAX_FRAMES];
    unsigned nframes = 0;
    size_t vn;
    uint8_t *vnet = fuzz_bytes(&in, WF_VNET_HDR_LEN, &vn);
    tso.c.n = 0;
    while (fuzz_left(&in) >= 2 && nframes < MAX_FRAMES) {
        size_t want = fuzz_u16(&in) % (nframes ? 1600 : 66000), n;
        uint8_t *f = fuzz_bytes(&in, want, &n);
        frames[nframes++] = f;
        if (nframes == 1 && vn == WF_VNET_HDR_LEN) {
            uint8_t *vf = (uint8_t *)malloc(WF_VNET_HDR_LEN + n);
            memcpy(vf, vnet, WF_VNET_HDR_LEN);
            memcpy(vf + WF_VNET_HDR_LEN, f, n);
            check_cut(vf, WF_VNET_HDR_LEN + n);
            free(vf);
        }
        int r = wf_tso_join(&tso.c, f, n);
        if (r == 0) {
            tso_flush();
            r = wf_tso_join(&tso.c, f, n);
            FUZZ_CHECK(r == 1);
        }
        if (r < 0) tso_flush();
    }
    tso_flush();
    for (unsigned i = 0; i < nframes; i++) free(frames[i]);
    free(vnet);
    return 0;
}
