# The weavefast C headers: wire format and forwarding table.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t

cdef extern from "wire.h" nogil:
    enum:
        WF_MAGIC, WF_VERSION, WF_HEADER_LEN, WF_RECORD_HDR_LEN, WF_FRAG_HDR_LEN
        WF_VNET_HDR_LEN, WF_ETH_HLEN, WF_TYPE_FRAMES, WF_TYPE_FRAGMENT, WF_TYPE_CONTROL
        WF_RFLAG_VNET, WF_MAX_HOPS, WF_MAX_MESSAGE
    enum:
        WF_OK, WF_DROP_SHORT, WF_DROP_BAD_MAGIC, WF_DROP_BAD_VERSION, WF_DROP_BAD_TYPE
        WF_DROP_BAD_LENGTH, WF_DROP_BAD_FRAGMENT, WF_DROP_UNKNOWN_PEER, WF_DROP_HOP_LIMIT
        WF_DROP_HAIRPIN, WF_DROP_NO_PEER, WF_DROP_NO_ROUTE, WF_DROP_REASSEMBLY
        WF_DROP_TAP_WRITE, WF_DROP_UDP_SEND, WF_DROP_CONTROL_QUEUE, WF_DROP_OVERSIZE
        WF_DROP_COUNT
    ctypedef struct wf_header:
        uint8_t type
        uint8_t flags
        uint8_t hops
        uint16_t key_id
        uint32_t src_peer
        uint32_t dst_peer
        uint64_t seq
    uint16_t wf_get16(const uint8_t *p)
    uint32_t wf_get32(const uint8_t *p)
    void wf_put16(uint8_t *p, uint16_t v)
    void wf_put32(uint8_t *p, uint32_t v)
    void wf_put64(uint8_t *p, uint64_t v)
    void wf_put_header(uint8_t *p, const wf_header *h)
    void wf_put_plain_header(uint8_t *p, uint8_t type, uint32_t src, uint32_t dst, uint64_t seq)
    int wf_get_header(const uint8_t *p, size_t len, wf_header *h)
    void wf_put_record_header(uint8_t *p, uint16_t len, uint8_t rflags)
    int wf_check_records(const uint8_t *p, size_t len, unsigned *count)
    int wf_check_fragment(const uint8_t *p, size_t len, uint32_t *total, uint32_t *offset)
    uint64_t wf_mac48(const uint8_t *m)
    uint16_t wf_frame_vlan(const uint8_t *eth, size_t len)
    int wf_is_multicast(const uint8_t *mac)

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
    const uint8_t *wf_reasm_feed(wf_reasm *r, uint32_t src, uint64_t seq, uint32_t total,
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
