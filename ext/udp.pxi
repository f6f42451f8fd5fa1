# UDP I/O. The TX side builds a vector of datagrams (an Out) per batch —
# frames grouped per destination peer, small frames packed into one datagram,
# super-frames split into FRAGMENT datagrams sent with UDP GSO — and hands the
# whole vector to sendmmsg. Datagram payloads are gathered with iovecs that
# point into the packet arena: frames are never copied on the way out.

cdef enum:
    MAX_PEERS = 256
    OUT_MSGS = 512
    OUT_IOVS = 16384
    OUT_HDRS = 4096
    HDR_BLOCK = 32             # datagram header + fragment header
    IOV_PER_PACKED = 64        # header + up to MAX_RECORDS (63) records per packed datagram
    GSO_MAX_SEGMENTS = 64
    GSO_MAX_BYTES = 65000      # below the 65507-byte UDP limit, with IPv6 margin
    CMSG_BUF = 64               # room for UDP_GRO and SO_RXQ_OVFL on receive


cdef struct Out:
    mmsghdr msgs[OUT_MSGS]
    unsigned sizes[OUT_MSGS]          # payload bytes of each datagram (all GSO segments)
    unsigned segments[OUT_MSGS]       # datagrams on the wire for each message
    uint8_t cmsgs[OUT_MSGS][CMSG_BUF]
    unsigned nmsgs
    iovec iovs[OUT_IOVS]
    unsigned niovs
    uint8_t hdrs[OUT_HDRS][HDR_BLOCK]
    unsigned nhdrs
    int open_msg[MAX_PEERS]           # packed datagram being filled per destination, -1 none
    sockaddr_storage names[MAX_PEERS] # next-hop addresses, copied when the batch starts
    socklen_t namelens[MAX_PEERS]


cdef struct Emitter:
    Out *out
    unsigned max_payload   # UDP payload bytes per datagram on the underlay
    int gso                # UDP_SEGMENT usable
    uint64_t seq           # next message sequence number


cdef void out_reset(Out *o) noexcept nogil:
    o.nmsgs = 0
    o.niovs = 0
    o.nhdrs = 0
    memset(o.open_msg, 0xff, sizeof(o.open_msg))


cdef Out *out_alloc() noexcept nogil:
    cdef Out *o = <Out *>calloc(1, sizeof(Out))
    if o != NULL:
        out_reset(o)
    return o


cdef inline bint out_has_room(Out *o, unsigned iovs, unsigned hdrs) noexcept nogil:
    return o.nmsgs < OUT_MSGS and o.niovs + iovs <= OUT_IOVS and o.nhdrs + hdrs <= OUT_HDRS


cdef inline unsigned out_new_msg(Out *o, int hop, unsigned iov_reserve) noexcept nogil:
    cdef unsigned m = o.nmsgs
    cdef msghdr *mh = &o.msgs[m].msg_hdr
    o.nmsgs += 1
    mh.msg_name = &o.names[hop]
    mh.msg_namelen = o.namelens[hop]
    mh.msg_iov = &o.iovs[o.niovs]
    mh.msg_iovlen = 0
    mh.msg_control = NULL
    mh.msg_controllen = 0
    mh.msg_flags = 0
    o.niovs += iov_reserve
    o.sizes[m] = 0
    o.segments[m] = 1
    return m


cdef inline uint8_t *out_header(Out *o, const uint8_t *template, uint64_t seq) noexcept nogil:
    """A datagram header block from the peer's precomputed template, seq patched in."""
    cdef uint8_t *h = o.hdrs[o.nhdrs]
    o.nhdrs += 1
    memcpy(h, template, WF_HEADER_LEN)
    wf_put64(h + 16, seq)
    return h


cdef inline void msg_append(Out *o, unsigned m, void *base, size_t n) noexcept nogil:
    cdef msghdr *mh = &o.msgs[m].msg_hdr
    mh.msg_iov[mh.msg_iovlen].iov_base = base
    mh.msg_iov[mh.msg_iovlen].iov_len = n
    mh.msg_iovlen += 1
    o.sizes[m] += n


# Returns 0 when the record was queued, 1 when the Out is full and must be
# flushed first (nothing was queued). `dst` indexes the peer's template and
# open datagram; `hop` the address it is sent to (itself, or a relay).
cdef int emit_record(Emitter *e, int dst, int hop, const uint8_t *template,
                     uint8_t *rec, unsigned n) noexcept nogil:
    cdef Out *o = e.out
    cdef int m
    if WF_HEADER_LEN + n > e.max_payload:
        # Later records must not overtake this one in the open datagram.
        o.open_msg[dst] = -1
        return emit_fragmented(e, hop, template, rec, n)
    m = o.open_msg[dst]
    if (m < 0 or o.sizes[m] + n > e.max_payload
            or o.msgs[m].msg_hdr.msg_iovlen == IOV_PER_PACKED):
        if not out_has_room(o, IOV_PER_PACKED, 1):
            return 1
        m = out_new_msg(o, hop, IOV_PER_PACKED)
        msg_append(o, m, out_header(o, template, e.seq), WF_HEADER_LEN)
        e.seq += 1
        o.open_msg[dst] = m
    msg_append(o, m, rec, n)
    return 0


cdef int emit_fragmented(Emitter *e, int hop, const uint8_t *template,
                         uint8_t *rec, unsigned total) noexcept nogil:
    cdef Out *o = e.out
    cdef unsigned chunk = e.max_payload - HDR_BLOCK
    cdef unsigned nfrag = (total + chunk - 1) // chunk
    cdef unsigned per_msg = 1, segs, s, m, off = 0, clen
    cdef uint8_t *h
    cdef cmsghdr *c
    if e.gso:
        per_msg = min(<unsigned>GSO_MAX_SEGMENTS, GSO_MAX_BYTES // (chunk + HDR_BLOCK))
    if not out_has_room(o, 2 * nfrag + (nfrag // per_msg + 1), nfrag) \
            or o.nmsgs + nfrag // per_msg + 1 > OUT_MSGS:
        return 1
    while off < total:
        segs = min(per_msg, (total - off + chunk - 1) // chunk)
        m = out_new_msg(o, hop, 2 * segs)
        for s in range(segs):
            clen = min(chunk, total - off)
            h = out_header(o, template, e.seq)
            h[3] = WF_TYPE_FRAGMENT
            wf_put32(h + WF_HEADER_LEN, total)
            wf_put32(h + WF_HEADER_LEN + 4, off)
            msg_append(o, m, h, HDR_BLOCK)
            msg_append(o, m, rec + off, clen)
            off += clen
        if segs > 1:
            o.msgs[m].msg_hdr.msg_control = o.cmsgs[m]
            o.msgs[m].msg_hdr.msg_controllen = wf_cmsg_space(sizeof(uint16_t))
            c = wf_cmsg_first(&o.msgs[m].msg_hdr)
            c.cmsg_level = SOL_UDP
            c.cmsg_type = UDP_SEGMENT
            c.cmsg_len = wf_cmsg_len(sizeof(uint16_t))
            (<uint16_t *>wf_cmsg_data(c))[0] = chunk + HDR_BLOCK
            o.segments[m] = segs
    e.seq += 1
    return 0


# Sends every queued datagram. Handles what was sent first, then the error:
# a failed message is dropped and counted, the rest still go out. Returns the
# errno of the last failure (EIO from a GSO send means no checksum offload on
# the egress device: the caller turns GSO off).
cdef int out_flush(Out *o, int fd, uint64_t *datagrams, uint64_t *nbytes,
                   uint64_t *failed) noexcept nogil:
    cdef unsigned sent = 0, i
    cdef int r, last_err = 0
    while sent < o.nmsgs:
        r = sendmmsg(fd, &o.msgs[sent], o.nmsgs - sent, 0)
        if r > 0:
            for i in range(sent, sent + <unsigned>r):
                datagrams[0] += o.segments[i]
                nbytes[0] += o.sizes[i]
            sent += r
            continue
        if errno == EINTR:
            continue
        last_err = errno
        failed[0] += o.segments[sent]
        sent += 1
    out_reset(o)
    return last_err


