/* The AEAD envelope of a datagram (wire format version 2).
 *
 * Every datagram ends in a 16-byte trailer. With a network secret the body
 * (everything after the 24-byte header) is sealed with AES-256-GCM or
 * ChaCha20-Poly1305 through OpenSSL's libcrypto: nonce = 4 zero bytes + the
 * header's 64-bit counter, associated data = the header, trailer = the tag.
 * Without a secret the body travels in the clear and the trailer is the
 * session's 16-byte token, which a host that cannot see the traffic cannot
 * guess. One wf_aead holds one key for one thread: contexts are not shared
 * between threads, and the key schedule is done once per key, not per packet.
 */
#ifndef WF_AEAD_H
#define WF_AEAD_H

#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define WF_TRAILER_LEN 16
#define WF_KEY_LEN 32
#define WF_TOKEN_LEN 16
#define WF_NONCE_LEN 12

enum { WF_CIPHER_NONE = 0, WF_CIPHER_AES_256_GCM = 1, WF_CIPHER_CHACHA20_POLY1305 = 2 };

typedef struct {
    EVP_CIPHER_CTX *ctx;   /* NULL for WF_CIPHER_NONE */
    uint8_t cipher;
    uint8_t token[WF_TOKEN_LEN];
    uint32_t gen;          /* which installed key this holds (0 = none) */
} wf_aead;

/* Fetched once: with OpenSSL 3 a lookup per call takes a global lock. */
static const EVP_CIPHER *wf_ciphers[3];

static inline int wf_aead_global_init(void) {
    wf_ciphers[WF_CIPHER_AES_256_GCM] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    wf_ciphers[WF_CIPHER_CHACHA20_POLY1305] = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    return wf_ciphers[1] && wf_ciphers[2] ? 0 : -1;
}

static inline void wf_aead_clear(wf_aead *a) {
    if (a->ctx) EVP_CIPHER_CTX_free(a->ctx);
    OPENSSL_cleanse(a, sizeof(*a));
}

/* Loads a key (32 bytes) or, for WF_CIPHER_NONE, a token (16 bytes). */
static inline int wf_aead_set_key(wf_aead *a, int cipher, const uint8_t *key, uint32_t gen, int encrypt) {
    wf_aead_clear(a);
    a->cipher = (uint8_t)cipher;
    a->gen = gen;
    if (cipher == WF_CIPHER_NONE) {
        memcpy(a->token, key, WF_TOKEN_LEN);
        return 0;
    }
    if (cipher != WF_CIPHER_AES_256_GCM && cipher != WF_CIPHER_CHACHA20_POLY1305) return -1;
    if (!(a->ctx = EVP_CIPHER_CTX_new())) return -1;
    if (EVP_CipherInit_ex(a->ctx, wf_ciphers[cipher], NULL, key, NULL, encrypt) != 1) return -1;
    return 0;
}

static inline void wf_aead_nonce(uint8_t *nonce, uint64_t counter) {
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++) nonce[4 + i] = (uint8_t)(counter >> (56 - 8 * i));
}

/* Seals a datagram whose header is `aad` and whose body is gathered from
 * `body` (n pieces) into `out`: the ciphertext, then the tag. Returns the
 * bytes written (body length + 16) or -1. */
static inline long wf_aead_seal(wf_aead *a, uint64_t counter, const uint8_t *aad, size_t aad_len,
                                const struct iovec *body, int n, uint8_t *out) {
    uint8_t nonce[WF_NONCE_LEN];
    uint8_t *p = out;
    int len;
    if (a->cipher == WF_CIPHER_NONE) {
        for (int i = 0; i < n; i++) {
            memcpy(p, body[i].iov_base, body[i].iov_len);
            p += body[i].iov_len;
        }
        memcpy(p, a->token, WF_TOKEN_LEN);
        return (long)(p - out) + WF_TOKEN_LEN;
    }
    wf_aead_nonce(nonce, counter);
    if (EVP_EncryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_EncryptUpdate(a->ctx, NULL, &len, aad, (int)aad_len) != 1) return -1;
    for (int i = 0; i < n; i++) {
        if (EVP_EncryptUpdate(a->ctx, p, &len, body[i].iov_base, (int)body[i].iov_len) != 1) return -1;
        p += len;
    }
    if (EVP_EncryptFinal_ex(a->ctx, p, &len) != 1) return -1;
    p += len;
    if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_GET_TAG, WF_TRAILER_LEN, p) != 1) return -1;
    return (long)(p - out) + WF_TRAILER_LEN;
}

/* Opens a body of `len` bytes in place, followed by its trailer. Returns 0
 * when the tag (or token) is right, -1 otherwise; on -1 the body is garbage. */
static inline int wf_aead_open(wf_aead *a, uint64_t counter, const uint8_t *aad, size_t aad_len,
                               uint8_t *body, size_t len) {
    uint8_t nonce[WF_NONCE_LEN];
    uint8_t *trailer = body + len;
    int outl;
    if (a->cipher == WF_CIPHER_NONE)
        return CRYPTO_memcmp(trailer, a->token, WF_TOKEN_LEN) == 0 ? 0 : -1;
    wf_aead_nonce(nonce, counter);
    if (EVP_DecryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_DecryptUpdate(a->ctx, NULL, &outl, aad, (int)aad_len) != 1) return -1;
    if (len && EVP_DecryptUpdate(a->ctx, body, &outl, body, (int)len) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_SET_TAG, WF_TRAILER_LEN, trailer) != 1) return -1;
    return EVP_DecryptFinal_ex(a->ctx, body + len, &outl) == 1 ? 0 : -1;
}

#endif
