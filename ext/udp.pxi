# UDP I/O. The TX side builds a vector of datagrams (an Out) per batch —
# frames grouped per destination peer, small frames packed into one datagram,
# super-frames split into FRAGMENT datagrams sent with UDP GSO, or, towards a
# peer whose path loses datagrams, TCP super-frames cut into segments
# (ext/includes/tso.h), each its own FRAMES datagram, in the same GSO sends —
# and hands the
# whole vector to sendmmsg. Datagram payloads are gathered with iovecs that
# point into the packet arena.
#
# Sending is the crypto pipeline, in order for each message of the vector:
#   1. nonce assignment: counters for all its datagrams from the next hop's
#      key (one atomic add per message, so threads sharing a key never reuse one);
#   2. seal: each datagram on its own (a GSO message's segments each get their
#      own tag), out of place into the Out's seal buffer — without a secret
#      nothing is copied and the trailer iovec points at the session token;
#   3. send: sendmmsg of what is ready, whenever the seal buffer is full and at
#      the end.

cdef enum:
    MAX_PEERS = 256
    OUT_MSGS = 512
    OUT_IOVS = 16384
    OUT_HDRS = 4096
    HDR_BLOCK = 36             # datagram header + fragment header
    IOV_PER_PACKED = 65        # header + up to MAX_RECORDS (63) records + trailer
    IOV_PER_SEGMENT = 3        # of a FRAGMENT datagram: header block, chunk, trailer
    GSO_MAX_SEGMENTS = 64
    GSO_MAX_BYTES = 65000      # below the 65507-byte UDP limit, with IPv6 margin
    CMSG_BUF = 64              # room for UDP_GRO and SO_RXQ_OVFL on receive
    SEAL_BUF = 1 << 19         # sealed bytes handed to one sendmmsg
    OUT_SEGHDRS = 2048         # TCP segments (software TSO) one Out holds
    SEG_BLOCK = WF_HEADER_LEN + WF_RECORD_HDR_LEN + WF_TSO_HDR_MAX


cdef inline uint64_t now_ms() noexcept nogil:
    """Milliseconds of the coarse monotonic clock (a few ms resolution, no syscall)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>ts.tv_nsec // 1000000


cdef struct Out:
    mmsghdr msgs[OUT_MSGS]
    unsigned sizes[OUT_MSGS]          # UDP payload bytes of each message (all GSO segments)
    unsigned segments[OUT_MSGS]       # datagrams on the wire for each message
    int hops[OUT_MSGS]                # peer slot it goes to: whose key seals it
    bint trail[OUT_MSGS]              # one datagram whose trailer is added when sent
    uint8_t cmsgs[OUT_MSGS][CMSG_BUF]
    unsigned nmsgs
    iovec iovs[OUT_IOVS]
    unsigned niovs
    uint8_t hdrs[OUT_HDRS][HDR_BLOCK]
    unsigned nhdrs
    uint8_t seghdrs[OUT_SEGHDRS][SEG_BLOCK]   # datagram + record + TCP/IP headers of a segment
    unsigned nseghdrs
    int open_msg[MAX_PEERS]           # packed datagram being filled per destination, -1 none
    # Per next hop, copied from the peer table when the thread's view refreshes:
    sockaddr_storage names[MAX_PEERS]
    socklen_t namelens[MAX_PEERS]
    uint16_t key_ids[MAX_PEERS]       # the hop's index of our key; 0 = no session yet
    uint64_t *counters[MAX_PEERS]     # the peer table's counter of that key
    uint64_t *loss_until[MAX_PEERS]   # the peer table's: until when (ms) we tell the hop we lose its datagrams
    uint64_t now                      # milliseconds, read once per flush
    wf_aead seal[MAX_PEERS]
    uint8_t lane                      # this worker's index, for the receiver's steering
    iovec sealed[OUT_MSGS]
    uint8_t *seal_buf


cdef struct Emitter:
    Out *out
    unsigned max_payload   # UDP payload bytes per datagram on the underlay, trailer included
    int gso                # UDP_SEGMENT usable
    uint32_t msg           # next FRAGMENT message id


cdef void out_reset(Out *o) noexcept nogil:
    o.nmsgs = 0
    o.niovs = 0
    o.nhdrs = 0
    o.nseghdrs = 0
    memset(o.open_msg, 0xff, sizeof(o.open_msg))


cdef Out *out_alloc(uint8_t lane) noexcept nogil:
    cdef Out *o = <Out *>calloc(1, sizeof(Out))
    if o == NULL:
        return NULL
    o.seal_buf = <uint8_t *>malloc(SEAL_BUF)
    if o.seal_buf == NULL:
        free(o)
        return NULL
    o.lane = lane
    out_reset(o)
    return o


cdef void out_free(Out *o) noexcept nogil:
    cdef unsigned s
    if o == NULL:
        return
    for s in range(MAX_PEERS):
        wf_aead_clear(&o.seal[s])
    free(o.seal_buf)
    free(o)


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
    o.hops[m] = hop
    o.trail[m] = True
    return m


cdef inline uint8_t *out_header(Out *o, const uint8_t *template) noexcept nogil:
    """A datagram header block from the peer's precomputed template."""
    cdef uint8_t *h = o.hdrs[o.nhdrs]
    o.nhdrs += 1
    memcpy(h, template, WF_HEADER_LEN)
    return h


cdef inline void msg_append(Out *o, unsigned m, void *base, size_t n) noexcept nogil:
    cdef msghdr *mh = &o.msgs[m].msg_hdr
    mh.msg_iov[mh.msg_iovlen].iov_base = base
    mh.msg_iov[mh.msg_iovlen].iov_len = n
    mh.msg_iovlen += 1
    o.sizes[m] += n


# Returns 0 when the record was queued, 1 when the Out is full and must be
# flushed first (nothing was queued). `dst` indexes the peer's template and
# open datagram; `hop` the peer it is sent to (itself, or a relay).
cdef int emit_record(Emitter *e, int dst, int hop, const uint8_t *template,
                     uint8_t *rec, unsigned n) noexcept nogil:
    cdef Out *o = e.out
    cdef int m
    if WF_HEADER_LEN + n + WF_TRAILER_LEN > e.max_payload:
        # Later records must not overtake this one in the open datagram.
        o.open_msg[dst] = -1
        return emit_fragmented(e, hop, template, rec, n)
    m = o.open_msg[dst]
    if (m < 0 or o.sizes[m] + n + WF_TRAILER_LEN > e.max_payload
            or o.msgs[m].msg_hdr.msg_iovlen == IOV_PER_PACKED - 1):
        if not out_has_room(o, IOV_PER_PACKED, 1):
            return 1
        m = out_new_msg(o, hop, IOV_PER_PACKED)
        msg_append(o, m, out_header(o, template), WF_HEADER_LEN)
        o.open_msg[dst] = m
    msg_append(o, m, rec, n)
    return 0


cdef int emit_fragmented(Emitter *e, int hop, const uint8_t *template,
                         uint8_t *rec, unsigned total) noexcept nogil:
    cdef Out *o = e.out
    cdef unsigned chunk = e.max_payload - HDR_BLOCK - WF_TRAILER_LEN
    cdef unsigned nfrag = (total + chunk - 1) // chunk
    cdef unsigned per_msg = 1, segs, s, m, off = 0, clen
    cdef uint8_t *h
    if e.gso:
        per_msg = min(<unsigned>GSO_MAX_SEGMENTS, GSO_MAX_BYTES // e.max_payload)
    if not out_has_room(o, IOV_PER_SEGMENT * nfrag, nfrag) \
            or o.nmsgs + nfrag // per_msg + 1 > OUT_MSGS:
        return 1
    while off < total:
        segs = min(per_msg, (total - off + chunk - 1) // chunk)
        m = out_new_msg(o, hop, IOV_PER_SEGMENT * segs)
        o.trail[m] = False
        for s in range(segs):
            clen = min(chunk, total - off)
            h = out_header(o, template)
            h[3] = WF_TYPE_FRAGMENT
            wf_put32(h + WF_HEADER_LEN, e.msg)
            wf_put32(h + WF_HEADER_LEN + 4, total)
            wf_put32(h + WF_HEADER_LEN + 8, off)
            msg_append(o, m, h, HDR_BLOCK)
            msg_append(o, m, rec + off, clen)
            msg_append(o, m, NULL, WF_TRAILER_LEN)   # filled in when sent
            off += clen
        if segs > 1:
            gso_cmsg(o, m, segs, e.max_payload)
    e.msg += 1
    return 0


cdef inline void gso_cmsg(Out *o, unsigned m, unsigned segs, unsigned size) noexcept nogil:
    """Makes message m one UDP GSO send of `segs` datagrams of `size` bytes."""
    cdef cmsghdr *c
    o.msgs[m].msg_hdr.msg_control = o.cmsgs[m]
    o.msgs[m].msg_hdr.msg_controllen = wf_cmsg_space(sizeof(uint16_t))
    c = wf_cmsg_first(&o.msgs[m].msg_hdr)
    c.cmsg_level = SOL_UDP
    c.cmsg_type = UDP_SEGMENT
    c.cmsg_len = wf_cmsg_len(sizeof(uint16_t))
    (<uint16_t *>wf_cmsg_data(c))[0] = size
    o.segments[m] = segs


# Software TSO. `rec` is a record with RFLAG_VNET (record header, virtio-net
# header, Ethernet super-frame). Returns 0 when its segments were queued, 1
# when the Out must be flushed first (nothing was queued), -1 when it is not
# a super-frame cut here (TCPv6, VLAN, a segment too large for a datagram):
# it goes as fragments.
cdef int emit_segmented(Emitter *e, int dst, int hop, const uint8_t *template,
                        uint8_t *rec, unsigned total) noexcept nogil:
    cdef Out *o = e.out
    cdef virtio_net_hdr *vh = <virtio_net_hdr *>(rec + WF_RECORD_HDR_LEN)
    cdef uint8_t *eth = rec + WF_RECORD_HDR_LEN + WF_VNET_HDR_LEN
    cdef size_t n = total - WF_RECORD_HDR_LEN - WF_VNET_HDR_LEN, mss = 0, hdr, payload, off = 0, clen
    cdef unsigned nseg, per_msg = 1, segs, s, i = 0, m, size
    cdef uint8_t *b
    if total < WF_RECORD_HDR_LEN + WF_VNET_HDR_LEN:
        return -1
    hdr = wf_tso_plan(vh, eth, n, &mss)
    if hdr == 0:
        return -1
    size = WF_HEADER_LEN + WF_RECORD_HDR_LEN + hdr + mss + WF_TRAILER_LEN
    if size > e.max_payload:
        return -1
    payload = n - hdr
    nseg = (payload + mss - 1) // mss
    if e.gso:
        per_msg = min(<unsigned>GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
    if not out_has_room(o, IOV_PER_SEGMENT * nseg, 0) or o.nseghdrs + nseg > OUT_SEGHDRS \
            or o.nmsgs + nseg // per_msg + 1 > OUT_MSGS:
        return 1
    o.open_msg[dst] = -1   # later records must not overtake the segments
    while i < nseg:
        segs = min(per_msg, nseg - i)
        m = out_new_msg(o, hop, IOV_PER_SEGMENT * segs)
        o.trail[m] = False
        for s in range(segs):
            clen = min(mss, payload - off)
            b = o.seghdrs[o.nseghdrs]
            o.nseghdrs += 1
            memcpy(b, template, WF_HEADER_LEN)
            wf_put_record_header(b + WF_HEADER_LEN, <uint16_t>(hdr + clen), 0)
            wf_tso_segment(b + WF_HEADER_LEN + WF_RECORD_HDR_LEN, eth, hdr, mss, i, nseg,
                           eth + hdr + off, clen)
            msg_append(o, m, b, WF_HEADER_LEN + WF_RECORD_HDR_LEN + hdr)
            msg_append(o, m, eth + hdr + off, clen)
            msg_append(o, m, NULL, WF_TRAILER_LEN)   # filled in when sent
            off += clen
            i += 1
        if segs > 1:
            gso_cmsg(o, m, segs, size)
    return 0


cdef long seal_segment(wf_aead *a, uint64_t counter, iovec *iov, unsigned n,
                       uint8_t *out) noexcept nogil:
    """Seals one datagram gathered from iov[0..n) (iov[0] starts with the
    header; the trailer is not among them) into out; returns its length."""
    cdef iovec body[IOV_PER_PACKED]
    cdef uint8_t *h = <uint8_t *>iov[0].iov_base
    cdef unsigned i, k = 0
    cdef long r
    memcpy(out, h, WF_HEADER_LEN)
    if iov[0].iov_len > WF_HEADER_LEN:
        body[0].iov_base = h + WF_HEADER_LEN
        body[0].iov_len = iov[0].iov_len - WF_HEADER_LEN
        k = 1
    for i in range(1, n):
        body[k] = iov[i]
        k += 1
    r = wf_aead_seal(a, counter, h, WF_HEADER_LEN, body, k, out + WF_HEADER_LEN)
    return -1 if r < 0 else r + WF_HEADER_LEN


cdef long out_seal(Out *o, unsigned m, uint8_t *buf, size_t room) noexcept nogil:
    """Steps 1 and 2 for message m. Returns the seal-buffer bytes it used, -1
    when it cannot be sent (no session with the hop), -2 when it does not fit
    in `room` (nothing was done)."""
    cdef msghdr *mh = &o.msgs[m].msg_hdr
    cdef int hop = o.hops[m]
    cdef wf_aead *a = &o.seal[hop]
    cdef unsigned segs = o.segments[m], s, per, first
    cdef uint64_t counter
    cdef long r
    cdef size_t used = 0
    cdef bint loss
    cdef uint8_t *h
    if o.key_ids[hop] == 0:
        return -1
    loss = o.loss_until[hop] != NULL and wf_load(o.loss_until[hop]) >= o.now
    if o.trail[m]:   # a packed or relayed datagram: its trailer goes last
        msg_append(o, m, NULL, WF_TRAILER_LEN)
        o.trail[m] = False
    per = mh.msg_iovlen if segs == 1 else IOV_PER_SEGMENT
    if a.cipher != WF_CIPHER_NONE and o.sizes[m] > room:
        return -2
    counter = wf_take(o.counters[hop], segs)
    for s in range(segs):
        first = s * per
        h = <uint8_t *>mh.msg_iov[first].iov_base
        wf_patch_header(h, o.lane, o.key_ids[hop], counter + s)
        if loss:
            h[5] |= WF_FLAG_LOSS
        if a.cipher == WF_CIPHER_NONE:
            mh.msg_iov[first + per - 1].iov_base = a.token
            continue
        r = seal_segment(a, counter + s, &mh.msg_iov[first], per - 1, buf + used)
        if r < 0:
            return -1
        used += r
    if a.cipher != WF_CIPHER_NONE:
        o.sealed[m].iov_base = buf
        o.sealed[m].iov_len = used
        mh.msg_iov = &o.sealed[m]
        mh.msg_iovlen = 1
    return used


cdef int out_send(Out *o, int fd, unsigned first, unsigned last, uint64_t *st) noexcept nogil:
    """Step 3 for messages [first, last). A failed message is dropped and
    counted, the rest still go out. Returns the errno of the last failure (EIO
    from a GSO send: the egress device cannot checksum segments)."""
    cdef unsigned sent = first, i
    cdef int r, last_err = 0
    while sent < last:
        r = sendmmsg(fd, &o.msgs[sent], last - sent, 0)
        if r > 0:
            for i in range(sent, sent + <unsigned>r):
                st[C_UDP_TX_DATAGRAMS] += o.segments[i]
                st[C_UDP_TX_BYTES] += o.sizes[i]
            sent += r
            continue
        if errno == EINTR:
            continue
        last_err = errno
        st[C_COUNT + WF_DROP_UDP_SEND] += o.segments[sent]
        sent += 1
    return last_err


cdef int out_flush(Out *o, int fd, uint64_t *st) noexcept nogil:
    """Seals and sends every queued message, then empties the Out."""
    cdef unsigned m, ready = 0, unsent = 0
    cdef size_t used = 0
    cdef long r
    cdef int err, last_err = 0
    o.now = now_ms()
    for m in range(o.nmsgs):
        r = out_seal(o, m, o.seal_buf + used, SEAL_BUF - used)
        if r == -2:   # the seal buffer is full: send what it holds, then reuse it
            err = out_send(o, fd, unsent, ready, st)
            last_err = err or last_err
            unsent = ready
            used = 0
            r = out_seal(o, m, o.seal_buf, SEAL_BUF)
        if r < 0:
            st[C_COUNT + WF_DROP_NO_SESSION] += o.segments[m]
            continue
        used += r
        if ready != m:   # keep the messages to send contiguous for sendmmsg
            o.msgs[ready] = o.msgs[m]
            o.sizes[ready] = o.sizes[m]
            o.segments[ready] = o.segments[m]
        ready += 1
    err = out_send(o, fd, unsent, ready, st)
    out_reset(o)
    return err or last_err
