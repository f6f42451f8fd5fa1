# The weavefast C headers: wire format, AEAD envelope, replay window, forwarding table.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t
from includes.system cimport iovec, virtio_net_hdr

cdef extern from "wire.h" nogil:
    enum:
        WF_MAGIC, WF_VERSION, WF_HEADER_LEN, WF_RECORD_HDR_LEN, WF_FRAG_HDR_LEN
        WF_VNET_HDR_LEN, WF_ETH_HLEN, WF_TYPE_FRAMES, WF_TYPE_FRAGMENT, WF_TYPE_CONTROL
        WF_RFLAG_VNET, WF_MAX_HOPS, WF_MAX_MESSAGE, WF_HOPS_MASK, WF_FLAG_LOSS
    enum:
        WF_OK, WF_DROP_SHORT, WF_DROP_BAD_MAGIC, WF_DROP_BAD_VERSION, WF_DROP_BAD_TYPE
        WF_DROP_BAD_LENGTH, WF_DROP_BAD_FRAGMENT, WF_DROP_UNKNOWN_PEER, WF_DROP_HOP_LIMIT
        WF_DROP_HAIRPIN, WF_DROP_NO_PEER, WF_DROP_NO_ROUTE, WF_DROP_REASSEMBLY
        WF_DROP_TAP_WRITE, WF_DROP_UDP_SEND, WF_DROP_CONTROL_QUEUE, WF_DROP_OVERSIZE
        WF_DROP_BAD_TAG, WF_DROP_REPLAYED, WF_DROP_UNKNOWN_KEY, WF_DROP_NO_SESSION
        WF_DROP_COUNT
    ctypedef struct wf_header:
        uint8_t type
        uint8_t lane
        uint8_t hops
        uint8_t loss
        uint16_t key_id
        uint32_t src_peer
        uint32_t dst_peer
        uint64_t counter
    uint16_t wf_get16(const uint8_t *p)
    uint32_t wf_get32(const uint8_t *p)
    void wf_put16(uint8_t *p, uint16_t v)
    void wf_put32(uint8_t *p, uint32_t v)
    void wf_put64(uint8_t *p, uint64_t v)
    uint64_t wf_get64(const uint8_t *p)
    void wf_put_header(uint8_t *p, const wf_header *h)
    void wf_put_plain_header(uint8_t *p, uint8_t type, uint32_t src, uint32_t dst)
    void wf_patch_header(uint8_t *p, uint8_t lane, uint16_t key_id, uint64_t counter)
    int wf_get_header(const uint8_t *p, size_t len, wf_header *h)
    void wf_put_record_header(uint8_t *p, uint16_t len, uint8_t rflags)
    int wf_check_records(const uint8_t *p, size_t len, unsigned *count)
    int wf_check_fragment(const uint8_t *p, size_t len, uint32_t *msg, uint32_t *total,
                          uint32_t *offset)
    uint64_t wf_mac48(const uint8_t *m)
    uint16_t wf_frame_vlan(const uint8_t *eth, size_t len)
    int wf_is_multicast(const uint8_t *mac)

cdef extern from "aead.h" nogil:
    enum:
        WF_TRAILER_LEN, WF_KEY_LEN, WF_TOKEN_LEN
        WF_CIPHER_NONE, WF_CIPHER_AES_256_GCM, WF_CIPHER_CHACHA20_POLY1305
    ctypedef struct wf_aead:
        uint8_t cipher
        uint8_t token[16]
        uint32_t gen
    int wf_aead_global_init()
    void wf_aead_clear(wf_aead *a)
    int wf_aead_set_key(wf_aead *a, int cipher, const uint8_t *key, uint32_t gen, int encrypt)
    long wf_aead_seal(wf_aead *a, uint64_t counter, const uint8_t *aad, size_t aad_len,
                      const iovec *body, int n, uint8_t *out)
    int wf_aead_open(wf_aead *a, uint64_t counter, const uint8_t *aad, size_t aad_len,
                     uint8_t *body, size_t len)
    void OPENSSL_cleanse(void *p, size_t n)

cdef extern from "replay.h" nogil:
    enum:
        WF_REPLAY_WINDOW
    ctypedef struct wf_replay:
        uint32_t gen
        uint64_t top
    void wf_replay_reset(wf_replay *r, uint32_t gen)
    int wf_replay_fresh(const wf_replay *r, uint64_t c)
    int wf_replay_check(wf_replay *r, uint32_t gen, uint64_t c)
    int wf_replay_accept(wf_replay *r, uint32_t gen, uint64_t c)
    int wf_replay_accept_gap(wf_replay *r, uint32_t gen, uint64_t c, int64_t *gap)

cdef extern from "fdb.h" nogil:
    enum:
        WF_FDB_WAYS, WF_PEER_LOCAL
    ctypedef struct wf_fdb_entry:
        uint64_t key
        uint32_t peer
        uint32_t seen
    ctypedef struct wf_fdb:
        wf_fdb_entry *entries
        uint32_t bucket_mask
        uint32_t capacity
        uint32_t max_age
        uint32_t count
        uint64_t generation
    int wf_fdb_init(wf_fdb *t, uint32_t capacity, uint32_t max_age)
    void wf_fdb_free(wf_fdb *t)
    int64_t wf_fdb_lookup(const wf_fdb *t, uint64_t key, uint32_t now)
    void wf_fdb_learn(wf_fdb *t, uint64_t key, uint32_t peer, uint32_t now)
    uint32_t wf_fdb_sweep(wf_fdb *t, uint32_t now, int64_t only_peer)

cdef extern from "reasm.h" nogil:
    ctypedef struct wf_reasm:
        pass
    int wf_reasm_init(wf_reasm *r, unsigned slots)
    void wf_reasm_free(wf_reasm *r)
    const uint8_t *wf_reasm_feed(wf_reasm *r, uint32_t src, uint32_t msg, uint32_t total,
                                 uint32_t offset, const uint8_t *chunk, uint32_t len,
                                 uint64_t *dropped)

cdef extern from "csum.h" nogil:
    int wf_csum_finish(uint8_t *frame, size_t n, size_t start, size_t offset)

cdef extern from "uso.h" nogil:
    enum:
        WF_USO_HDR_LEN, WF_USO_MAX_SEGMENTS, WF_USO_MAX_BYTES
    size_t wf_uso_payload(const uint8_t *eth, size_t n)
    int wf_uso_same_flow(const uint8_t *a, const uint8_t *b)
    void wf_uso_headers(uint8_t *out, const uint8_t *first, size_t segment, size_t total)

cdef extern from "tso.h" nogil:
    enum:
        WF_TSO_HDR_MAX, WF_TSO_MAX_SEGMENTS, WF_TSO_MAX_SPLIT
    ctypedef struct wf_tso_chain:
        unsigned n
        size_t hdr
        size_t total
        const uint8_t *first
        iovec iov[1]
    size_t wf_tso_plan(const virtio_net_hdr *vh, const uint8_t *eth, size_t n, size_t *mss)
    void wf_tso_segment(uint8_t *out, const uint8_t *eth, size_t hdr, size_t mss, unsigned i,
                        unsigned nseg, const uint8_t *payload, size_t len)
    int wf_tso_join(wf_tso_chain *c, const uint8_t *eth, size_t n)
    unsigned wf_tso_finish(wf_tso_chain *c, uint8_t *out)
