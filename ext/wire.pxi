# Encapsulation and decapsulation for Python callers (tests, tools). The
# forwarding threads call the same C functions from ext/includes/wire.h.
from collections import namedtuple

MAGIC = WF_MAGIC
VERSION = WF_VERSION
HEADER_LEN = WF_HEADER_LEN
RECORD_HDR_LEN = WF_RECORD_HDR_LEN
FRAG_HDR_LEN = WF_FRAG_HDR_LEN
VNET_HDR_LEN = WF_VNET_HDR_LEN
TYPE_FRAMES = WF_TYPE_FRAMES
TYPE_FRAGMENT = WF_TYPE_FRAGMENT
TYPE_CONTROL = WF_TYPE_CONTROL
RFLAG_VNET = WF_RFLAG_VNET
MAX_HOPS = WF_MAX_HOPS
TRAILER_LEN = WF_TRAILER_LEN
KEY_LEN = WF_KEY_LEN
TOKEN_LEN = WF_TOKEN_LEN
CIPHER_NONE = WF_CIPHER_NONE
CIPHER_AES_256_GCM = WF_CIPHER_AES_256_GCM
CIPHER_CHACHA20_POLY1305 = WF_CIPHER_CHACHA20_POLY1305
REPLAY_WINDOW = WF_REPLAY_WINDOW
FLAG_LOSS = WF_FLAG_LOSS
TSO_MAX_SEGMENTS = WF_TSO_MAX_SEGMENTS
TSO_MAX_SPLIT = WF_TSO_MAX_SPLIT

class MalformedDatagram(ValueError):
    """A datagram or frame that cannot be forwarded; `reason` names the drop counter."""

    def __init__(self, reason):
        super().__init__(f"malformed datagram: {reason}")
        self.reason = reason


Datagram = namedtuple("Datagram", "type lane hops key_id src_peer dst_peer counter records fragment control")


def encode_header(uint8_t type, uint32_t src_peer, uint32_t dst_peer, uint64_t counter,
                  uint8_t hops=0, uint16_t key_id=0, uint8_t lane=0):
    cdef uint8_t buf[WF_HEADER_LEN]
    cdef wf_header h
    h.type = type
    h.lane = lane
    h.hops = hops
    h.key_id = key_id
    h.src_peer = src_peer
    h.dst_peer = dst_peer
    h.counter = counter
    wf_put_header(buf, &h)
    return bytes(buf[:WF_HEADER_LEN])


def encode_datagrams(uint32_t src_peer, uint32_t dst_peer, uint64_t counter, records,
                     unsigned max_payload, uint32_t msg=0):
    """Packs records as the forwarding threads do, through the same emitter;
    returns the datagrams before sealing (no trailer)."""
    if max_payload <= HDR_BLOCK + WF_TRAILER_LEN:
        raise ValueError(f"max_payload {max_payload} leaves no room for a fragment")
    cdef uint8_t template[WF_HEADER_LEN]
    cdef Emitter e
    cdef Out *o = out_alloc(0)
    if o == NULL:
        raise MemoryError()
    wf_put_plain_header(template, WF_TYPE_FRAMES, src_peer, dst_peer)
    e.out = o
    e.max_payload = max_payload
    e.gso = 0
    e.msg = msg
    arena = bytearray()
    offsets = []
    for rflags, payload in records:
        offsets.append(len(arena))
        arena += len(payload).to_bytes(2, "big") + bytes((rflags, 0)) + payload
    cdef uint8_t *base = arena
    out = []
    try:
        for i, off in enumerate(offsets):
            n = len(records[i][1]) + WF_RECORD_HDR_LEN
            if emit_record(&e, 0, 0, template, base + <size_t>off, n):
                out.extend(collect_datagrams(o, counter + len(out)))
                emit_record(&e, 0, 0, template, base + <size_t>off, n)
        out.extend(collect_datagrams(o, counter + len(out)))
    finally:
        out_free(o)
    return out


cdef list collect_datagrams(Out *o, uint64_t counter):
    """The datagrams an Out holds, as bytes, counters numbered from `counter`
    (GSO messages split into segments; trailers not yet filled are left out)."""
    cdef unsigned m, k, per
    cdef msghdr *mh
    result = []
    for m in range(o.nmsgs):
        mh = &o.msgs[m].msg_hdr
        per = IOV_PER_SEGMENT if o.segments[m] > 1 else mh.msg_iovlen
        for first in range(0, mh.msg_iovlen, per):
            if result and counter == 0:
                raise OverflowError("the counter would wrap past 2**64 - 1 and repeat a nonce")
            wf_patch_header(<uint8_t *>mh.msg_iov[first].iov_base, 0, 0, counter)
            counter += 1
            result.append(b"".join((<uint8_t *>mh.msg_iov[k].iov_base)[:mh.msg_iov[k].iov_len]
                                   for k in range(first, first + per)
                                   if mh.msg_iov[k].iov_base != NULL))
    out_reset(o)
    return result


cdef list split_records(const uint8_t *p, size_t n):
    cdef size_t off = 0, rlen
    records = []
    while off < n:
        rlen = wf_get16(p + off)
        records.append((p[off + 2], bytes(p[off + WF_RECORD_HDR_LEN:off + WF_RECORD_HDR_LEN + rlen])))
        off += WF_RECORD_HDR_LEN + rlen
    return records


def decode_datagram(const uint8_t[:] data):
    """Parses a datagram without its trailer (as open_datagram returns it)."""
    cdef wf_header h
    cdef size_t n = data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef unsigned count
    cdef uint32_t msg, total, offset
    cdef int err = wf_get_header(p, n, &h)
    if err:
        raise MalformedDatagram(DROP_REASONS[err])
    records = fragment = control = None
    body = p + WF_HEADER_LEN
    if h.type == WF_TYPE_FRAMES:
        err = wf_check_records(body, n - WF_HEADER_LEN, &count)
        if err:
            raise MalformedDatagram(DROP_REASONS[err])
        records = split_records(body, n - WF_HEADER_LEN)
    elif h.type == WF_TYPE_FRAGMENT:
        err = wf_check_fragment(body, n - WF_HEADER_LEN, &msg, &total, &offset)
        if err:
            raise MalformedDatagram(DROP_REASONS[err])
        fragment = (msg, total, offset, bytes(data[WF_HEADER_LEN + WF_FRAG_HDR_LEN:]))
    else:
        control = bytes(data[WF_HEADER_LEN:])
    return Datagram(h.type, h.lane, h.hops | (WF_FLAG_LOSS if h.loss else 0), h.key_id, h.src_peer, h.dst_peer, h.counter,
                    records, fragment, control)


cdef int load_key(wf_aead *a, int cipher, bytes key, int encrypt) except -1:
    cdef size_t want = WF_TOKEN_LEN if cipher == WF_CIPHER_NONE else WF_KEY_LEN
    if cipher not in (WF_CIPHER_NONE, WF_CIPHER_AES_256_GCM, WF_CIPHER_CHACHA20_POLY1305):
        raise ValueError(f"unknown cipher {cipher}")
    if len(key) != want:
        raise ValueError(f"a key of cipher {cipher} has {want} bytes, not {len(key)}")
    if wf_aead_set_key(a, cipher, key, 1, encrypt):
        wf_aead_clear(a)
        raise RuntimeError("libcrypto refused the key")
    return 0


def seal_datagram(const uint8_t[:] datagram, int cipher, bytes key):
    """The datagram as it goes on the wire: body sealed under the counter in
    its header (or left clear with the token as its trailer for CIPHER_NONE)."""
    cdef wf_aead a
    cdef iovec body
    cdef size_t n = datagram.shape[0]
    if n < WF_HEADER_LEN:
        raise MalformedDatagram("short")
    memset(&a, 0, sizeof(a))
    load_key(&a, cipher, key, 1)
    out = bytearray(n + WF_TRAILER_LEN)
    cdef uint8_t *o = out
    memcpy(o, &datagram[0], WF_HEADER_LEN)
    body.iov_base = <void *>&datagram[WF_HEADER_LEN] if n > WF_HEADER_LEN else NULL
    body.iov_len = n - WF_HEADER_LEN
    r = wf_aead_seal(&a, wf_get64(&datagram[16]), &datagram[0], WF_HEADER_LEN, &body, 1,
                     o + WF_HEADER_LEN)
    wf_aead_clear(&a)
    if r < 0:
        raise RuntimeError("libcrypto failed to seal")
    return bytes(out)


def open_datagram(const uint8_t[:] data, int cipher, bytes key):
    """The datagram without its trailer, body opened; MalformedDatagram("bad_tag")
    when it was not sealed with this key (or carries another token)."""
    cdef wf_aead a
    cdef size_t n = data.shape[0]
    if n < WF_HEADER_LEN + WF_TRAILER_LEN:
        raise MalformedDatagram("short")
    memset(&a, 0, sizeof(a))
    load_key(&a, cipher, key, 0)
    buf = bytearray(data)
    cdef uint8_t *p = buf
    r = wf_aead_open(&a, wf_get64(p + 16), p, WF_HEADER_LEN, p + WF_HEADER_LEN,
                     n - WF_HEADER_LEN - WF_TRAILER_LEN)
    wf_aead_clear(&a)
    if r:
        raise MalformedDatagram("bad_tag")
    return bytes(buf[:n - WF_TRAILER_LEN])


cdef class ReplayWindow:
    """The receive path's replay window (replay.h) for one key."""
    cdef wf_replay r

    def __cinit__(self):
        wf_replay_reset(&self.r, 1)

    def fresh(self, uint64_t counter):
        """Whether a datagram with this counter may still be accepted."""
        return bool(wf_replay_fresh(&self.r, counter))

    def update(self, uint64_t counter):
        """Marks the counter seen (after its tag verified); False: a replay."""
        return wf_replay_accept(&self.r, 1, counter) == 1

    @property
    def top(self):
        return self.r.top


def uso_headers(const uint8_t[:] first_frame, size_t segment, size_t total):
    """The virtio-net header and Ethernet/IPv4/UDP headers the RX thread writes in
    front of `total` payload bytes coalesced from datagrams like `first_frame`
    (None when such a frame is not coalesced)."""
    cdef uint8_t out[WF_VNET_HDR_LEN + WF_USO_HDR_LEN]
    if first_frame.shape[0] == 0 or wf_uso_payload(&first_frame[0], first_frame.shape[0]) == 0:
        return None
    wf_uso_headers(out, &first_frame[0], segment, total)
    return bytes(out[:sizeof(out)])


def tso_segment(const uint8_t[:] super_frame):
    """The Ethernet frames the TX thread sends for a TCPv4 super-frame read from
    the TAP (virtio-net header + Ethernet), in segments mode; None when it is
    not cut (it goes as fragments)."""
    cdef size_t n = super_frame.shape[0], hdr, mss = 0, payload, off = 0, clen
    cdef unsigned nseg, i
    cdef const uint8_t *eth
    cdef uint8_t out[WF_TSO_HDR_MAX]
    if n < WF_VNET_HDR_LEN + WF_ETH_HLEN:
        return None
    eth = &super_frame[0] + WF_VNET_HDR_LEN
    hdr = wf_tso_plan(<const virtio_net_hdr *>&super_frame[0], eth, n - WF_VNET_HDR_LEN, &mss)
    if hdr == 0:
        return None
    payload = n - WF_VNET_HDR_LEN - hdr
    nseg = (payload + mss - 1) // mss
    frames = []
    for i in range(nseg):
        clen = min(mss, payload - off)
        wf_tso_segment(out, eth, hdr, mss, i, nseg, eth + hdr + off, clen)
        frames.append(bytes(out[:hdr]) + bytes(eth[hdr + off:hdr + off + clen]))
        off += clen
    return frames


def tso_coalesce(frames):
    """What the RX thread writes to the TAP for plain Ethernet frames arriving
    in this order from one peer: each item is a virtio-net header + Ethernet
    frame, TCP segments of one flow joined into TSO super-frames."""
    cdef wf_tso_chain *c = <wf_tso_chain *>calloc(1, sizeof(wf_tso_chain))
    cdef uint8_t hdrs[WF_VNET_HDR_LEN + WF_TSO_HDR_MAX]
    cdef const uint8_t *p
    cdef int r
    if c == NULL:
        raise MemoryError()
    held = [bytes(f) for f in frames]
    out = []
    try:
        for f in held:
            if len(f) == 0:
                out.append(bytes(WF_VNET_HDR_LEN))
                continue
            p = f
            r = wf_tso_join(c, p, len(f))
            if r == 0:
                _tso_flush(c, hdrs, out)
                r = wf_tso_join(c, p, len(f))
            if r < 0:
                _tso_flush(c, hdrs, out)
                out.append(bytes(WF_VNET_HDR_LEN) + f)
        _tso_flush(c, hdrs, out)
    finally:
        free(c)
    return out


cdef _tso_flush(wf_tso_chain *c, uint8_t *hdrs, list out):
    cdef unsigned count, i
    if c.n == 0:
        return
    if c.n == 1:
        c.n = 0
        out.append(bytes(WF_VNET_HDR_LEN) + (<const uint8_t *>c.first)[:c.hdr + c.total])
        return
    count = wf_tso_finish(c, hdrs)
    out.append(b"".join([(<uint8_t *>c.iov[i].iov_base)[:c.iov[i].iov_len] for i in range(count)]))
