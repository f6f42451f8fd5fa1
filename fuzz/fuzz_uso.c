/* libFuzzer target: the receive-side coalescing helpers (uso.h) and the
 * checksum (csum.h) on frames from the input.
 *
 * The frames go through a copy of rx_uso_hold / rx_uso_flush
 * (ext/pipeline.pxi): wf_uso_payload decides what may be held, wf_uso_same_flow
 * what may join, and wf_uso_headers writes the virtio-net, IPv4 and UDP
 * headers of each super-frame, which are checked field by field (the IPv4
 * header checksum and the UDP pseudo-header sum against a plain RFC 1071
 * sum). Every frame also goes through wf_csum_finish at offsets from the
 * input, compared with the same plain sum.
 *
 * Input: frames, each a 2-byte length (mod 1600) then that many bytes, then
 * 2 + 1 bytes for wf_csum_finish's start and offset. Each frame is copied
 * into a buffer of exactly its size.
 */
#include "fuzz_common.h"
#include "uso.h"
#include "csum.h"

#define MAX_FRAMES 80

/* RFC 1071, 16-bit big-endian words, the odd byte padded with zero. */
static uint32_t rfc1071_sum(uint32_t sum, const uint8_t *p, size_t n) {
    for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

static uint16_t rfc1071_fold(uint64_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static struct {
    unsigned n;
    const uint8_t *first;
    size_t segment, total;
    size_t lens[WF_USO_MAX_SEGMENTS + 1];
} uso;

static void uso_flush(void) {
    uint8_t out[WF_VNET_HDR_LEN + WF_USO_HDR_LEN];
    unsigned n = uso.n;
    if (n == 0) return;
    uso.n = 0;
    if (n == 1) return;   /* written as it is */
    size_t sum = 0;
    for (unsigned i = 1; i <= n; i++) {
        FUZZ_CHECK(uso.lens[i] > 0 && uso.lens[i] <= uso.segment);
        FUZZ_CHECK(i == n || uso.lens[i] == uso.segment);   /* only the last may be shorter */
        sum += uso.lens[i];
    }
    FUZZ_CHECK(sum == uso.total && uso.total <= WF_USO_MAX_BYTES && n <= WF_USO_MAX_SEGMENTS);
    wf_uso_headers(out, uso.first, uso.segment, uso.total);
    const struct virtio_net_hdr *vh = (const struct virtio_net_hdr *)out;
    const uint8_t *eth = out + WF_VNET_HDR_LEN, *ip = eth + WF_ETH_HLEN, *udp = ip + 20;
    FUZZ_CHECK(vh->gso_type == VIRTIO_NET_HDR_GSO_UDP_L4 && vh->gso_size == uso.segment);
    FUZZ_CHECK(vh->hdr_len == WF_USO_HDR_LEN && vh->csum_start == 34 && vh->csum_offset == 6);
    FUZZ_CHECK(memcmp(eth, uso.first, WF_ETH_HLEN) == 0);
    FUZZ_CHECK(wf_get16(ip + 2) == 28 + uso.total && wf_get16(udp + 4) == 8 + uso.total);
    FUZZ_CHECK(memcmp(ip + 12, uso.first + WF_ETH_HLEN + 12, 8) == 0);   /* addresses */
    FUZZ_CHECK(memcmp(udp, uso.first + WF_ETH_HLEN + 20, 4) == 0);       /* ports */
    FUZZ_CHECK(rfc1071_fold(rfc1071_sum(0, ip, 20)) == 0xffff);          /* IPv4 checksum */
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 17;
    wf_put16(pseudo + 10, (uint16_t)(8 + uso.total));
    FUZZ_CHECK(wf_get16(udp + 6) == rfc1071_fold(rfc1071_sum(0, pseudo, 12)));
}

/* rx_uso_hold with coalescing on. */
static int uso_hold(const uint8_t *eth, size_t n) {
    size_t payload = wf_uso_payload(eth, n);
    if (payload) FUZZ_CHECK(payload + WF_USO_HDR_LEN == n && n <= 0xffff + WF_ETH_HLEN);
    if (uso.n && (payload == 0 || payload > uso.segment || uso.n == WF_USO_MAX_SEGMENTS ||
                  uso.total + payload > WF_USO_MAX_BYTES || uso.total != uso.n * uso.segment ||
                  !wf_uso_same_flow(uso.first, eth)))
        uso_flush();
    if (payload == 0) return 0;
    if (uso.n == 0) {
        uso.first = eth;
        uso.segment = payload;
        uso.total = 0;
    }
    uso.n++;
    uso.lens[uso.n] = payload;
    uso.total += payload;
    return 1;
}

static void csum_check(const uint8_t *frame, size_t n, size_t start, size_t offset) {
    uint8_t *a = (uint8_t *)malloc(n ? n : 1);
    memcpy(a, frame, n);
    int r = wf_csum_finish(a, n, start, offset);
    if (start + offset + 2 > n) {
        FUZZ_CHECK(r == -1 && memcmp(a, frame, n) == 0);
    } else {
        FUZZ_CHECK(r == 0);
        uint16_t want = (uint16_t)~rfc1071_fold(rfc1071_sum(0, frame + start, n - start));
        if (want == 0) want = 0xffff;
        FUZZ_CHECK(wf_get16(a + start + offset) == want);
        FUZZ_CHECK(memcmp(a, frame, start + offset) == 0);
        FUZZ_CHECK(memcmp(a + start + offset + 2, frame + start + offset + 2, n - start - offset - 2) == 0);
    }
    free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t *frames[MAX_FRAMES];
    unsigned nframes = 0;
    uso.n = 0;
    while (fuzz_left(&in) >= 2 && nframes < MAX_FRAMES) {
        size_t want = fuzz_u16(&in) % 1600, n;
        uint8_t *f = fuzz_bytes(&in, want, &n);
        frames[nframes++] = f;
        size_t start = fuzz_u16(&in) % (n + 8), offset = fuzz_u8(&in);
        csum_check(f, n, start, offset);
        if (!uso_hold(f, n)) uso_flush();   /* written on its own, after what was held */
    }
    uso_flush();
    for (unsigned i = 0; i < nframes; i++) free(frames[i]);
    return 0;
}
