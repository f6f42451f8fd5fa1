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

# Index = enum wf_drop value.
DROP_REASONS = ("ok", "short", "bad_magic", "bad_version", "bad_type", "bad_length",
                "bad_fragment", "unknown_peer", "hop_limit", "hairpin", "no_peer",
                "no_route", "reassembly", "tap_write", "udp_send", "control_queue",
                "oversize")


class MalformedDatagram(ValueError):
    """A datagram or frame that cannot be forwarded; `reason` names the drop counter."""

    def __init__(self, reason):
        super().__init__(f"malformed datagram: {reason}")
        self.reason = reason


Datagram = namedtuple("Datagram", "type flags hops key_id src_peer dst_peer seq records fragment control")


def encode_header(int type, uint32_t src_peer, uint32_t dst_peer, uint64_t seq,
                  int hops=0, int key_id=0, int flags=0):
    cdef uint8_t buf[WF_HEADER_LEN]
    cdef wf_header h
    h.type = type
    h.flags = flags
    h.hops = hops
    h.key_id = key_id
    h.src_peer = src_peer
    h.dst_peer = dst_peer
    h.seq = seq
    wf_put_header(buf, &h)
    return bytes(buf[:WF_HEADER_LEN])


def encode_datagrams(uint32_t src_peer, uint32_t dst_peer, uint64_t seq, records, unsigned max_payload):
    """Packs records as the forwarding threads do, through the same emitter."""
    if max_payload <= HDR_BLOCK:
        raise ValueError(f"max_payload {max_payload} leaves no room for a fragment")
    cdef uint8_t template[WF_HEADER_LEN]
    cdef Emitter e
    cdef Out *o = out_alloc()
    if o == NULL:
        raise MemoryError()
    wf_put_plain_header(template, WF_TYPE_FRAMES, src_peer, dst_peer, 0)
    e.out = o
    e.max_payload = max_payload
    e.gso = 0
    e.seq = seq
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
                out.extend(collect_datagrams(o))
                emit_record(&e, 0, 0, template, base + <size_t>off, n)
        out.extend(collect_datagrams(o))
    finally:
        free(o)
    return out


cdef list collect_datagrams(Out *o):
    """The datagrams an Out holds, as bytes (GSO messages split into segments)."""
    cdef unsigned m, k
    cdef msghdr *mh
    result = []
    for m in range(o.nmsgs):
        mh = &o.msgs[m].msg_hdr
        if o.segments[m] > 1:
            for k in range(0, mh.msg_iovlen, 2):
                result.append((<uint8_t *>mh.msg_iov[k].iov_base)[:mh.msg_iov[k].iov_len] +
                              (<uint8_t *>mh.msg_iov[k + 1].iov_base)[:mh.msg_iov[k + 1].iov_len])
        else:
            result.append(b"".join((<uint8_t *>mh.msg_iov[k].iov_base)[:mh.msg_iov[k].iov_len]
                                   for k in range(mh.msg_iovlen)))
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
    cdef wf_header h
    cdef size_t n = data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef unsigned count
    cdef uint32_t total, offset
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
        err = wf_check_fragment(body, n - WF_HEADER_LEN, &total, &offset)
        if err:
            raise MalformedDatagram(DROP_REASONS[err])
        fragment = (total, offset, bytes(data[WF_HEADER_LEN + WF_FRAG_HDR_LEN:]))
    else:
        control = bytes(data[WF_HEADER_LEN:])
    return Datagram(h.type, h.flags, h.hops, h.key_id, h.src_peer, h.dst_peer, h.seq,
                    records, fragment, control)


def uso_headers(const uint8_t[:] first_frame, size_t segment, size_t total):
    """The virtio-net header and Ethernet/IPv4/UDP headers the RX thread writes in
    front of `total` payload bytes coalesced from datagrams like `first_frame`
    (None when such a frame is not coalesced)."""
    cdef uint8_t out[WF_VNET_HDR_LEN + WF_USO_HDR_LEN]
    if first_frame.shape[0] == 0 or wf_uso_payload(&first_frame[0], first_frame.shape[0]) == 0:
        return None
    wf_uso_headers(out, &first_frame[0], segment, total)
    return bytes(out[:sizeof(out)])
