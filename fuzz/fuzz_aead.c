/* libFuzzer target: the AEAD envelope (aead.h) with fixed test keys, for
 * the three ciphers (none = session token, AES-256-GCM, ChaCha20-Poly1305).
 *
 * 1. The input, read as a received datagram (24-byte header, body, 16-byte
 *    trailer), is opened in place as rx_open does: it must never crash, and
 *    may only be accepted if it is exactly what wf_aead_seal makes of the
 *    opened body (for "none": iff the trailer is the token).
 * 2. The input's body is sealed (gathered from two iovecs split where the
 *    input says) under its header's counter: the result must open again to
 *    the same body, equal a seal from one iovec, and fail to open once one
 *    bit (chosen by the input) is flipped in header, body or tag (for
 *    "none": only a flipped trailer bit is caught, by design).
 */
#include "fuzz_common.h"
#include "wire.h"
#include "aead.h"

static const uint8_t KEY[WF_KEY_LEN] = "weavefast fuzz key, not secret!";
static wf_aead sealer[3], opener[3];

static void init_once(void) {
    static int done;
    if (done) return;
    done = 1;
    if (wf_aead_global_init()) abort();
    for (int c = 0; c < 3; c++) {
        memset(&sealer[c], 0, sizeof(wf_aead));
        memset(&opener[c], 0, sizeof(wf_aead));
        if (wf_aead_set_key(&sealer[c], c, KEY, 1, 1) || wf_aead_set_key(&opener[c], c, KEY, 1, 0)) abort();
    }
}

static long seal(int c, const uint8_t *dgram, size_t body_len, size_t split, uint8_t *out) {
    struct iovec iov[2] = {{(void *)(dgram + WF_HEADER_LEN), split},
                           {(void *)(dgram + WF_HEADER_LEN + split), body_len - split}};
    memcpy(out, dgram, WF_HEADER_LEN);
    return wf_aead_seal(&sealer[c], wf_get64(dgram + 16), dgram, WF_HEADER_LEN, iov, 2,
                        out + WF_HEADER_LEN);
}

static int open_copy(int c, const uint8_t *wire, size_t n, uint8_t *out) {
    memcpy(out, wire, n);
    return wf_aead_open(&opener[c], wf_get64(out + 16), out, WF_HEADER_LEN, out + WF_HEADER_LEN,
                        n - WF_HEADER_LEN - WF_TRAILER_LEN);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init_once();
    if (size < WF_HEADER_LEN + 3) return 0;
    /* The first 3 bytes steer: the iovec split and which bit to flip. */
    uint16_t split_sel = wf_get16(data);
    uint8_t flip_sel = data[2];
    const uint8_t *dgram = data + 3;
    size_t n = size - 3, body = n - WF_HEADER_LEN;
    uint8_t *buf = (uint8_t *)malloc(n + WF_TRAILER_LEN);
    uint8_t *sealed = (uint8_t *)malloc(n + WF_TRAILER_LEN);
    uint8_t *again = (uint8_t *)malloc(n + WF_TRAILER_LEN);
    for (int c = 0; c < 3; c++) {
        /* 1. Opening what arrived. */
        if (n >= WF_HEADER_LEN + WF_TRAILER_LEN) {
            size_t plain = n - WF_TRAILER_LEN;
            if (open_copy(c, dgram, n, buf) == 0) {
                if (c == WF_CIPHER_NONE) {
                    FUZZ_CHECK(memcmp(dgram + plain, KEY, WF_TOKEN_LEN) == 0);
                    FUZZ_CHECK(memcmp(buf, dgram, n) == 0);
                } else {
                    FUZZ_CHECK(seal(c, buf, plain - WF_HEADER_LEN, 0, again) == (long)(n - WF_HEADER_LEN));
                    FUZZ_CHECK(memcmp(again, dgram, n) == 0);   /* only what was sealed opens */
                }
            } else if (c == WF_CIPHER_NONE) {
                FUZZ_CHECK(memcmp(dgram + plain, KEY, WF_TOKEN_LEN) != 0);
            }
        }
        /* 2. Sealing the input's body, opening it again, tampering with it. */
        size_t split = body ? split_sel % (body + 1) : 0;
        long len = seal(c, dgram, body, split, sealed);
        FUZZ_CHECK(len == (long)(body + WF_TRAILER_LEN));
        size_t wire = WF_HEADER_LEN + (size_t)len;
        FUZZ_CHECK(seal(c, dgram, body, body, again) == len && memcmp(again, sealed, wire) == 0);
        FUZZ_CHECK(open_copy(c, sealed, wire, buf) == 0);
        FUZZ_CHECK(memcmp(buf, dgram, n) == 0);
        size_t bit = (size_t)(split_sel ^ flip_sel << 16) % (wire * 8);
        sealed[bit / 8] ^= (uint8_t)(1u << bit % 8);
        int r = open_copy(c, sealed, wire, buf);
        if (c != WF_CIPHER_NONE || bit / 8 >= wire - WF_TRAILER_LEN) FUZZ_CHECK(r == -1);
        else FUZZ_CHECK(r == 0);
    }
    free(buf);
    free(sealed);
    free(again);
    return 0;
}
