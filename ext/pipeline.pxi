# ===========================================================================
# The forwarding pipeline.
#
# Each worker owns one TAP queue and one UDP socket and runs two native
# threads that never touch the GIL or call Python:
#
#   TX: read a batch of frames from the TAP (super-frames with their
#       virtio-net header) -> classify each with the forwarding table (learn
#       the source, find the destination peer or flood) -> emit records into
#       per-peer datagrams, in place in the arena's headroom -> one sendmmsg
#       (super-frames as FRAGMENT datagrams in UDP GSO sends; TCP super-frames
#       for a peer in segments mode as MSS-sized segments, one FRAMES
#       datagram each, in the same UDP GSO sends).
#   RX: one recvmmsg (UDP GRO: several datagrams per buffer) -> split into
#       datagrams -> check the header, find the key by its id, check the
#       counter against the replay window, open the datagram in place (the
#       tag, or the token without a secret), mark the counter seen
#       -> validate; FRAMES: write each frame to the TAP; FRAGMENT:
#       reassemble, then write the super-frame whole (consecutive TCP or UDP
#       segments of one flow are coalesced into one super-frame); CONTROL: queue for
#       Python; datagrams for another peer: relay (sealed again for the next
#       hop) -> learn sources, queue control messages and publish counters
#       under the lock once.
#
# Sending seals every datagram on its own (udp.pxi): counters are taken from
# the next hop's key in order, then each datagram is sealed, then sent.
#
# Segments mode (issue 13): a FRAGMENT message is lost whole when one of its
# ~44 datagrams is, which a lossy path turns into a collapse. The receiver
# counts the counters each neighbour's lanes skip (datagrams lost; late ones
# count back) in windows of LOSS_WINDOW_MS; when a window loses LOSS_PERMILLE
# or more, it sets WF_FLAG_LOSS in every datagram it seals for that neighbour
# for LOSS_HOLD_MS. A router that opens a datagram with the flag sends its TCP
# super-frames to that neighbour as segments for SEGMENTS_HOLD_MS from then
# on; a path clean for that long goes back to fragments. The gaps measure the
# path in both modes, so segments last as long as the loss does.
# `--segments always|never` forces it.
#
# Threads and wake-ups: the RX thread ("wf-rx<i>") serves both directions
# while the load is light: it polls the socket and the TAP, so a small
# packet's round trip wakes one thread per hop, and a reply that the TAP
# write provoked leaves in the same wake-up. When its loop keeps finding work
# (HELP_AFTER rounds in a row: bulk traffic), it wakes the TX thread
# ("wf-tx<i>"), which then serves the TAP alone until the TAP has been idle
# for HELP_IDLE_MS, hands it back and parks again.
#
# Shared state (forwarding table, peer table, control queue) sits behind one
# mutex that a thread takes once per batch. Threads read peers from a private
# view, copied again only when the table's generation changes. Counters are
# accumulated in locals and published once per batch into per-thread arrays;
# Python sums them when asked, without stopping the threads.
# ===========================================================================

cdef enum:
    MAX_BATCH = 256
    RX_KEYS = 3          # receive keys per peer: current, previous, next (rekeying)
    MAX_WORKERS = 16
    CTRL_SLOTS = 64
    CTRL_MAX = 1500
    RX_CONTROL_MAX = 64
    LEARN_MAX = 1024
    REASM_SLOTS = 16
    GATHER_MAX = 256
    POLL_MS = 1000
    HELP_AFTER = 4       # busy rounds in a row before the RX thread calls the TX thread
    HELP_IDLE_MS = 2     # the TX thread hands the TAP back after this long without frames
    LOSS_WINDOW_MS = 100      # loss is judged over windows this long
    LOSS_PERMILLE = 1         # a window that loses this share of a neighbour's datagrams is lossy
    LOSS_HOLD_MS = 2000       # we flag our datagrams to that neighbour this long after such a window
    SEGMENTS_HOLD_MS = 10000  # segments to a neighbour this long after its last flagged datagram

cdef enum:  # --segments
    SEGMENTS_NEVER
    SEGMENTS_AUTO
    SEGMENTS_ALWAYS

SEGMENTS_MODES = {"never": SEGMENTS_NEVER, "auto": SEGMENTS_AUTO, "always": SEGMENTS_ALWAYS}

cdef enum:  # per-peer counters
    P_TX_FRAMES
    P_TX_BYTES
    P_RX_FRAMES
    P_RX_BYTES
    P_TX_SEGMENTED       # super-frames sent as TCP segments
    P_RX_LOST            # datagrams of the neighbour that did not arrive (counter gaps)
    P_COUNT

PEER_COUNTER_NAMES = ("tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "tx_segmented",
                      "rx_lost_datagrams")


cdef struct RxKey:
    uint16_t key_id               # 0 = free
    uint8_t cipher
    uint32_t gen                  # install number: threads reload their context when it moves
    uint8_t key[WF_KEY_LEN]       # the token (16 bytes) for WF_CIPHER_NONE


cdef struct Peer:
    uint32_t id
    int used
    int up
    int via                       # slot of the relay, -1 = direct
    sockaddr_storage addr
    socklen_t addrlen
    uint8_t template[WF_HEADER_LEN]
    uint64_t stats[P_COUNT]
    # Sending: the key the peer opens our datagrams with, and the counters.
    uint16_t tx_key_id            # the peer's id for it; 0 = no session yet
    uint8_t tx_cipher
    uint32_t tx_gen
    uint8_t tx_key[WF_KEY_LEN]
    uint64_t tx_counter[MAX_WORKERS]   # one per lane, from lane << 56: lanes never share a nonce
    RxKey rx[RX_KEYS]
    uint64_t seg_until            # send it TCP segments until then (ms): it reported loss
    uint64_t loss_until           # flag what we seal for it until then (ms): its datagrams get lost
    int loss_reports              # it reads the flag (older routers count it as hops, relays drop)
    # One window per key and sending lane: each lane's counters rise in order,
    # whatever the sender's workers do to each other. Kept last, out of what
    # reusing the slot clears: a window empties itself for a newer key.
    wf_replay replay[RX_KEYS][MAX_WORKERS]


cdef struct PeerView:
    uint64_t generation
    unsigned count
    uint32_t ids[MAX_PEERS]       # 0 = free slot
    int hop[MAX_PEERS]            # slot whose address gets the datagram, -1 = unreachable
    uint8_t templates[MAX_PEERS][WF_HEADER_LEN]
    int flood[MAX_PEERS]
    unsigned nflood


cdef struct CtrlMsg:
    uint32_t src
    sockaddr_storage addr
    socklen_t addrlen
    unsigned len
    uint8_t data[CTRL_MAX]


cdef struct Shared:
    pthread_mutex_t lock
    wf_fdb fdb
    Peer peers[MAX_PEERS]
    unsigned peer_count           # slots [0, peer_count) may be used
    uint64_t generation
    uint32_t local_peer
    uint32_t key_gen              # installs so far
    uint8_t key_epoch             # top bits of the next receive key id
    int stop
    int stop_efd
    int control_efd
    unsigned max_payload
    int gso
    unsigned batch
    int uso                       # the TAP takes UDP GSO super-frames
    int tso                       # coalesce TCP segments into super-frames for the TAP
    int segments                  # SEGMENTS_NEVER / AUTO / ALWAYS
    CtrlMsg ctrl[CTRL_SLOTS]
    unsigned ctrl_head
    unsigned ctrl_len


cdef struct Learned:
    uint64_t key
    uint32_t peer


cdef struct RxControl:
    const uint8_t *data
    unsigned len
    uint32_t src
    unsigned name


cdef struct Worker:
    Shared *sh
    int tap_fd
    int udp_fd                    # receives (and relays, and sends control)
    int tx_fd                     # sends what the TAP gave
    pthread_t tx_thread
    pthread_t rx_thread
    int tx_running
    int rx_running
    pthread_mutex_t tx_lock       # held by whichever thread runs a TX batch
    int help_efd                  # wakes the parked TX thread to serve the TAP
    int back_efd                  # tells the RX thread that the TAP is its own again
    uint64_t helping              # 1 while the TX thread serves the TAP
    uint64_t tx_stats[N_STATS]
    uint64_t rx_stats[N_STATS]
    # TX
    Arena tx_arena
    size_t tx_lens[MAX_BATCH]
    Out *tx_out
    PeerView tx_view
    uint32_t tx_msg               # next FRAGMENT message id (the worker index on top)
    uint64_t tx_peer[MAX_PEERS][2]
    # RX
    Arena rx_arena
    mmsghdr rx_msgs[MAX_BATCH]
    iovec rx_iovs[MAX_BATCH]
    sockaddr_storage rx_names[MAX_BATCH]
    uint8_t rx_cmsgs[MAX_BATCH][CMSG_BUF]
    Out *relay_out
    PeerView rx_view
    uint16_t open_ids[MAX_PEERS][RX_KEYS]
    wf_aead opens[MAX_PEERS][RX_KEYS]
    wf_reasm reasm
    # A FRAGMENT message whose pieces all arrive in one batch is written to the
    # TAP straight from the receive buffers; the reassembler copies only the rest.
    uint32_t gather_src
    uint32_t gather_msg
    uint32_t gather_total
    uint32_t gather_have
    int gather_slot
    unsigned gather_n
    iovec gather_iov[GATHER_MAX + 1]   # [0] is for a zero virtio-net header
    # Consecutive UDP datagrams of one flow go to the TAP as one USO super-frame.
    unsigned uso_n
    size_t uso_segment            # payload bytes of each (the last may be shorter)
    size_t uso_total
    const uint8_t *uso_first      # Ethernet frame whose headers the super-frame takes
    int uso_slot
    uint8_t uso_hdr[WF_VNET_HDR_LEN + WF_USO_HDR_LEN]
    iovec uso_iov[WF_USO_MAX_SEGMENTS + 1]
    # Consecutive TCP segments of one flow go to the TAP as one TSO super-frame.
    wf_tso_chain tso
    int tso_slot
    uint8_t tso_hdr[WF_VNET_HDR_LEN + WF_TSO_HDR_MAX]
    # Loss per neighbour (key slot), this window: datagrams opened, counters skipped.
    uint64_t now                  # ms, once per batch
    uint64_t loss_window          # when the window began (ms)
    uint64_t rx_seen[MAX_PEERS]
    int64_t rx_gap[MAX_PEERS]
    Learned learned[LEARN_MAX]
    unsigned nlearned
    RxControl rx_control[RX_CONTROL_MAX]
    unsigned nrx_control
    uint64_t rx_peer[MAX_PEERS][2]
    uint32_t socket_overflows     # the kernel's running count, last seen


cdef extern from "<pthread.h>" nogil:
    int pthread_setname_np(pthread_t t, const char *name)


cdef inline uint32_t now_seconds() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint32_t>ts.tv_sec


# --- peer views ------------------------------------------------------------

cdef void out_refresh(Shared *sh, Out *o) noexcept nogil:
    """Copies every peer's address and sending key (caller holds the lock)."""
    cdef unsigned s
    cdef Peer *p
    for s in range(sh.peer_count):
        p = &sh.peers[s]
        o.key_ids[s] = p.tx_key_id if p.used else 0
        if not o.key_ids[s]:
            continue
        memcpy(&o.names[s], &p.addr, p.addrlen)
        o.namelens[s] = p.addrlen
        o.counters[s] = &p.tx_counter[o.lane]
        o.loss_until[s] = &p.loss_until if p.loss_reports else NULL
        if o.seal[s].gen != p.tx_gen and wf_aead_set_key(&o.seal[s], p.tx_cipher, p.tx_key, p.tx_gen, 1):
            o.key_ids[s] = 0


cdef void opener_refresh(Shared *sh, Worker *w) noexcept nogil:
    """Loads the receive keys that changed into the RX thread's contexts."""
    cdef unsigned s, k
    cdef RxKey *rk
    for s in range(sh.peer_count):
        for k in range(RX_KEYS):
            rk = &sh.peers[s].rx[k]
            if not (sh.peers[s].used and rk.key_id):
                w.open_ids[s][k] = 0
            elif w.opens[s][k].gen != rk.gen:
                w.open_ids[s][k] = rk.key_id
                if wf_aead_set_key(&w.opens[s][k], rk.cipher, rk.key, rk.gen, 0):
                    w.open_ids[s][k] = 0


cdef void view_refresh(Shared *sh, PeerView *v, Out *o) noexcept nogil:
    """Copies the peer table (caller holds the lock) into a thread's view."""
    cdef unsigned s
    cdef Peer *p
    cdef int via
    out_refresh(sh, o)
    v.count = sh.peer_count
    v.nflood = 0
    for s in range(v.count):
        p = &sh.peers[s]
        v.ids[s] = p.id if p.used else 0
        v.hop[s] = -1
        if not (p.used and p.up):
            continue
        memcpy(v.templates[s], p.template, WF_HEADER_LEN)
        via = p.via
        if via < 0:
            v.hop[s] = s
        elif sh.peers[via].used and sh.peers[via].up and sh.peers[via].via < 0:
            v.hop[s] = via
    for s in range(v.count):
        if v.hop[s] >= 0:
            v.flood[v.nflood] = s
            v.nflood += 1
    v.generation = sh.generation


cdef inline void view_sync(Shared *sh, PeerView *v, Out *o) noexcept nogil:
    """Refreshes a view whose peer table changed (caller holds the lock)."""
    if v.generation != wf_load_acquire(&sh.generation):
        view_refresh(sh, v, o)


cdef inline int view_slot(PeerView *v, uint32_t peer_id) noexcept nogil:
    cdef unsigned s
    for s in range(v.count):
        if v.ids[s] == peer_id:
            return s
    return -1


cdef void publish(uint64_t *dst, uint64_t *local) noexcept nogil:
    cdef unsigned i
    for i in range(N_STATS):
        if local[i]:
            wf_count(&dst[i], local[i])


cdef void publish_peers(Shared *sh, uint64_t (*acc)[2], unsigned count, int base) noexcept nogil:
    cdef unsigned s
    for s in range(count):
        if acc[s][0]:
            wf_count(&sh.peers[s].stats[base], acc[s][0])
            wf_count(&sh.peers[s].stats[base + 1], acc[s][1])
            acc[s][0] = 0
            acc[s][1] = 0


# --- TX: TAP -> peers ------------------------------------------------------

cdef void tx_flush(Worker *w, Emitter *e, uint64_t *st) noexcept nogil:
    cdef int err = out_flush(w.tx_out, w.tx_fd, st)
    if err == EIO and e.gso:
        # The egress device cannot checksum GSO segments: plain sends from now on.
        w.sh.gso = 0
        e.gso = 0
        st[C_GSO_FALLBACKS] += 1


cdef inline bint tx_segments(Shared *sh, int hop, uint64_t now) noexcept nogil:
    """Whether TCP super-frames to this next hop go as segments."""
    if sh.segments == SEGMENTS_AUTO:
        return wf_load(&sh.peers[hop].seg_until) > now
    return sh.segments == SEGMENTS_ALWAYS


cdef inline void tx_emit(Worker *w, Emitter *e, uint64_t *st, PeerView *v, int slot,
                         uint8_t *rec, unsigned n, uint64_t now) noexcept nogil:
    cdef int r
    if (rec[2] & WF_RFLAG_VNET and WF_HEADER_LEN + n + WF_TRAILER_LEN > e.max_payload
            and tx_segments(w.sh, v.hop[slot], now)):
        r = emit_segmented(e, slot, v.hop[slot], v.templates[slot], rec, n)
        if r == 1:
            tx_flush(w, e, st)
            r = emit_segmented(e, slot, v.hop[slot], v.templates[slot], rec, n)
        if r == 0:
            st[C_TSO_SEGMENTED] += 1
            wf_count(&w.sh.peers[slot].stats[P_TX_SEGMENTED], 1)
            w.tx_peer[slot][0] += 1
            w.tx_peer[slot][1] += n
            return
    if emit_record(e, slot, v.hop[slot], v.templates[slot], rec, n):
        tx_flush(w, e, st)
        if emit_record(e, slot, v.hop[slot], v.templates[slot], rec, n):
            st[C_COUNT + WF_DROP_OVERSIZE] += 1   # more fragments than an empty Out holds
            return
    w.tx_peer[slot][0] += 1
    w.tx_peer[slot][1] += n


cdef unsigned tx_batch(Worker *w) noexcept nogil:
    cdef Shared *sh = w.sh
    cdef PeerView *v = &w.tx_view
    cdef uint64_t st[N_STATS]
    cdef Emitter e
    cdef int err, slot, last_slot = -1
    cdef unsigned n, i, k, rlen
    cdef size_t flen, elen
    cdef uint8_t *frame
    cdef uint8_t *eth
    cdef uint8_t *rec
    cdef virtio_net_hdr *vh
    cdef bint has_vnet
    cdef int64_t route, last_route = -3
    cdef uint64_t last_gen = 0
    cdef uint32_t now
    cdef uint64_t ms
    n = tap_read_batch(w.tap_fd, &w.tx_arena, w.tx_lens, sh.batch, &err)
    if n == 0:
        return 0
    memset(st, 0, sizeof(st))
    now = now_seconds()
    ms = now_ms()
    e.out = w.tx_out
    e.max_payload = sh.max_payload
    e.gso = sh.gso
    e.msg = w.tx_msg
    pthread_mutex_lock(&sh.lock)
    view_sync(sh, v, w.tx_out)
    for i in range(n):
        frame = arena_slot(&w.tx_arena, i)
        flen = w.tx_lens[i]
        if flen < WF_VNET_HDR_LEN + WF_ETH_HLEN:
            st[C_COUNT + WF_DROP_BAD_LENGTH] += 1
            continue
        vh = <virtio_net_hdr *>frame
        eth = frame + WF_VNET_HDR_LEN
        elen = flen - WF_VNET_HDR_LEN
        if vh.gso_type == VIRTIO_NET_HDR_GSO_NONE and vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            # One frame: finish its checksum so that it travels without the header.
            if wf_csum_finish(eth, elen, vh.csum_start, vh.csum_offset) < 0:
                st[C_COUNT + WF_DROP_BAD_LENGTH] += 1
                continue
            vh.flags = 0
        has_vnet = vh.flags != 0 or vh.gso_type != 0
        st[C_TAP_RX_FRAMES] += 1
        st[C_TAP_RX_BYTES] += elen
        if vh.gso_type:
            st[C_SUPER_FRAMES_TX] += 1
        route = fdb_route(&sh.fdb, eth, elen, now)
        if route == ROUTE_HAIRPIN:
            st[C_COUNT + WF_DROP_HAIRPIN] += 1
            continue
        # The record header goes into the headroom just in front of what is sent.
        rec = (frame if has_vnet else eth) - WF_RECORD_HDR_LEN
        rlen = flen if has_vnet else elen
        if rlen > 0xffff:
            st[C_COUNT + WF_DROP_OVERSIZE] += 1
            continue
        wf_put_record_header(rec, rlen, WF_RFLAG_VNET if has_vnet else 0)
        if route >= 0:
            # Same destination as the last frame and nothing changed: skip the peer search.
            if route == last_route and last_gen == sh.fdb.generation:
                slot = last_slot
            else:
                slot = view_slot(v, <uint32_t>route)
                last_route, last_slot, last_gen = route, slot, sh.fdb.generation
            if slot >= 0 and v.hop[slot] >= 0:
                tx_emit(w, &e, st, v, slot, rec, rlen + WF_RECORD_HDR_LEN, ms)
                continue
        if v.nflood == 0:
            st[C_COUNT + WF_DROP_NO_PEER] += 1
            continue
        st[C_FLOODED_FRAMES] += 1
        for k in range(v.nflood):
            tx_emit(w, &e, st, v, v.flood[k], rec, rlen + WF_RECORD_HDR_LEN, ms)
    w.tx_msg = e.msg
    pthread_mutex_unlock(&sh.lock)
    tx_flush(w, &e, st)
    st[C_TX_BATCHES] += 1
    publish(w.tx_stats, st)
    publish_peers(sh, w.tx_peer, v.count, P_TX_FRAMES)
    return n


cdef void *tx_main(void *arg) noexcept nogil:
    """Parked until the RX thread calls it for bulk traffic; then serves the TAP
    until it has been idle for HELP_IDLE_MS."""
    cdef Worker *w = <Worker *>arg
    cdef pollfd parked[2]
    cdef pollfd serving[2]
    cdef uint64_t value
    parked[0].fd = w.help_efd
    parked[0].events = POLLIN
    serving[0].fd = w.tap_fd
    serving[0].events = POLLIN
    parked[1].fd = serving[1].fd = w.sh.stop_efd
    parked[1].events = serving[1].events = POLLIN
    while not w.sh.stop:
        if poll(parked, 2, POLL_MS) <= 0 or w.sh.stop:
            continue
        read(w.help_efd, &value, sizeof(value))
        wf_store_release(&w.helping, 1)
        while not w.sh.stop:
            pthread_mutex_lock(&w.tx_lock)
            while tx_batch(w) == w.sh.batch and not w.sh.stop:
                pass
            pthread_mutex_unlock(&w.tx_lock)
            if poll(serving, 2, HELP_IDLE_MS) <= 0:
                break
        wf_store_release(&w.helping, 0)
        value = 1
        write(w.back_efd, &value, sizeof(value))   # the RX thread polls the TAP again
    return NULL


# --- RX: peers -> TAP ------------------------------------------------------

cdef void rx_apply(Worker *w) noexcept nogil:
    """Learns sources and queues control messages: the one locked step of a batch."""
    cdef Shared *sh = w.sh
    cdef unsigned i, tail
    cdef uint32_t now = now_seconds()
    cdef RxControl *c
    cdef CtrlMsg *m
    cdef uint64_t one = 1
    cdef bint signal = False
    pthread_mutex_lock(&sh.lock)
    for i in range(w.nlearned):
        wf_fdb_learn(&sh.fdb, w.learned[i].key, w.learned[i].peer, now)
    for i in range(w.nrx_control):
        c = &w.rx_control[i]
        if sh.ctrl_len == CTRL_SLOTS or c.len > CTRL_MAX:
            w.rx_stats[C_COUNT + WF_DROP_CONTROL_QUEUE] += 1
            continue
        tail = (sh.ctrl_head + sh.ctrl_len) % CTRL_SLOTS
        m = &sh.ctrl[tail]
        m.src = c.src
        m.len = c.len
        memcpy(m.data, c.data, c.len)
        m.addrlen = w.rx_msgs[c.name].msg_hdr.msg_namelen
        memcpy(&m.addr, &w.rx_names[c.name], m.addrlen)
        sh.ctrl_len += 1
        signal = True
    pthread_mutex_unlock(&sh.lock)
    w.nlearned = 0
    w.nrx_control = 0
    if signal:
        write(sh.control_efd, &one, sizeof(one))


cdef inline void rx_learn(Worker *w, const uint8_t *eth, size_t elen, uint32_t src_peer) noexcept nogil:
    if w.nlearned == LEARN_MAX:
        rx_apply(w)
    w.learned[w.nlearned].key = frame_key(eth + 6, eth, elen)
    w.learned[w.nlearned].peer = src_peer
    w.nlearned += 1


cdef inline void rx_written(Worker *w, uint64_t *st, bint ok, const uint8_t *data, size_t rlen,
                            bint has_vnet, int src_slot) noexcept nogil:
    if not ok:
        st[C_COUNT + WF_DROP_TAP_WRITE] += 1
        return
    st[C_TAP_TX_FRAMES] += 1
    st[C_TAP_TX_BYTES] += rlen - WF_VNET_HDR_LEN if has_vnet else rlen
    if has_vnet and (<virtio_net_hdr *>data).gso_type:
        st[C_SUPER_FRAMES_RX] += 1
    w.rx_peer[src_slot][0] += 1
    w.rx_peer[src_slot][1] += rlen


cdef void rx_uso_flush(Worker *w, uint64_t *st) noexcept nogil:
    """Writes the datagrams held for coalescing: one super-frame, or the lone frame."""
    cdef unsigned n = w.uso_n
    cdef ssize_t r
    if n == 0:
        return
    w.uso_n = 0
    if n == 1:
        rx_written(w, st, tap_write_frame(w.tap_fd, w.uso_first, WF_USO_HDR_LEN + w.uso_total, False) == 0,
                   w.uso_first, WF_USO_HDR_LEN + w.uso_total, False, w.uso_slot)
        return
    wf_uso_headers(w.uso_hdr, w.uso_first, w.uso_segment, w.uso_total)
    w.uso_iov[0].iov_base = w.uso_hdr
    w.uso_iov[0].iov_len = sizeof(w.uso_hdr)
    while True:
        r = writev(w.tap_fd, w.uso_iov, n + 1)
        if r >= 0 or errno != EINTR:
            break
    if r < 0:
        st[C_COUNT + WF_DROP_TAP_WRITE] += n
        return
    st[C_TAP_TX_FRAMES] += n
    st[C_TAP_TX_BYTES] += n * WF_USO_HDR_LEN + w.uso_total
    st[C_USO_COALESCED] += n
    w.rx_peer[w.uso_slot][0] += n
    w.rx_peer[w.uso_slot][1] += n * WF_USO_HDR_LEN + w.uso_total


cdef void rx_tso_flush(Worker *w, uint64_t *st) noexcept nogil:
    """Writes the TCP segments held for coalescing: one super-frame, or the lone frame."""
    cdef unsigned n = w.tso.n, count
    cdef size_t bytes
    cdef ssize_t r
    if n == 0:
        return
    if n == 1:
        w.tso.n = 0
        rx_written(w, st, tap_write_frame(w.tap_fd, w.tso.first, w.tso.hdr + w.tso.total, False) == 0,
                   w.tso.first, w.tso.hdr + w.tso.total, False, w.tso_slot)
        return
    bytes = n * w.tso.hdr + w.tso.total
    count = wf_tso_finish(&w.tso, w.tso_hdr)
    while True:
        r = writev(w.tap_fd, w.tso.iov, count)
        if r >= 0 or errno != EINTR:
            break
    if r < 0:
        st[C_COUNT + WF_DROP_TAP_WRITE] += n
        return
    st[C_TAP_TX_FRAMES] += n
    st[C_TAP_TX_BYTES] += bytes
    st[C_TSO_COALESCED] += n
    w.rx_peer[w.tso_slot][0] += n
    w.rx_peer[w.tso_slot][1] += bytes


cdef inline bint rx_tso_hold(Worker *w, const uint8_t *eth, size_t n, int src_slot,
                             uint64_t *st) noexcept nogil:
    """Holds a plain TCP segment for coalescing if it can be; False: write it as it is."""
    cdef int r
    if not w.sh.tso:
        return False
    if w.tso.n and src_slot != w.tso_slot:
        rx_tso_flush(w, st)
    r = wf_tso_join(&w.tso, eth, n)
    if r == 0:
        rx_tso_flush(w, st)
        r = wf_tso_join(&w.tso, eth, n)
    if r < 0:
        rx_tso_flush(w, st)
        return False
    if w.tso.n == 1:   # a new chain: at most one coalescer holds frames
        rx_uso_flush(w, st)
        w.tso_slot = src_slot
    return True


cdef inline void rx_hold_flush(Worker *w, uint64_t *st) noexcept nogil:
    rx_tso_flush(w, st)
    rx_uso_flush(w, st)


cdef inline bint rx_uso_hold(Worker *w, const uint8_t *eth, size_t n, int src_slot,
                             uint64_t *st) noexcept nogil:
    """Holds a plain frame for coalescing if it can be; False: write it as it is."""
    cdef size_t payload = wf_uso_payload(eth, n) if w.sh.uso else 0
    if w.uso_n and (payload == 0 or payload > w.uso_segment or src_slot != w.uso_slot
                    or w.uso_n == WF_USO_MAX_SEGMENTS or w.uso_total + payload > WF_USO_MAX_BYTES
                    or w.uso_total != w.uso_n * w.uso_segment   # a shorter one already ended it
                    or not wf_uso_same_flow(w.uso_first, eth)):
        rx_uso_flush(w, st)
    if payload == 0:
        return False
    if w.uso_n == 0:
        rx_tso_flush(w, st)
        w.uso_first = eth
        w.uso_segment = payload
        w.uso_total = 0
        w.uso_slot = src_slot
    w.uso_n += 1
    w.uso_iov[w.uso_n].iov_base = <void *>(eth + WF_USO_HDR_LEN)
    w.uso_iov[w.uso_n].iov_len = payload
    w.uso_total += payload
    return True


cdef void rx_deliver(Worker *w, const uint8_t *p, size_t n, uint32_t src_peer, int src_slot,
                     uint64_t *st) noexcept nogil:
    """Writes every record of a checked FRAMES payload to the TAP."""
    cdef size_t off = 0, rlen
    cdef const uint8_t *data
    cdef bint has_vnet
    while off < n:
        rlen = wf_get16(p + off)
        has_vnet = p[off + 2] & WF_RFLAG_VNET
        data = p + off + WF_RECORD_HDR_LEN
        off += WF_RECORD_HDR_LEN + rlen
        if has_vnet:
            rx_learn(w, data + WF_VNET_HDR_LEN, rlen - WF_VNET_HDR_LEN, src_peer)
        else:
            rx_learn(w, data, rlen, src_peer)
            if rx_tso_hold(w, data, rlen, src_slot, st) or rx_uso_hold(w, data, rlen, src_slot, st):
                continue
        rx_hold_flush(w, st)
        rx_written(w, st, tap_write_frame(w.tap_fd, data, rlen, has_vnet) == 0,
                   data, rlen, has_vnet, src_slot)


cdef void rx_reassemble(Worker *w, uint32_t src_peer, int src_slot, uint32_t msg, uint32_t total,
                        uint32_t offset, const uint8_t *chunk, uint32_t n, uint64_t *st) noexcept nogil:
    cdef unsigned count
    cdef int err
    cdef const uint8_t *whole = wf_reasm_feed(&w.reasm, src_peer, msg, total, offset, chunk, n,
                                              &st[C_COUNT + WF_DROP_REASSEMBLY])
    if whole == NULL:
        return
    err = wf_check_records(whole, total, &count)
    if err:
        st[C_COUNT + err] += 1
        return
    rx_deliver(w, whole, total, src_peer, src_slot, st)
    # Frames held for coalescing point into the reassembly slot, which the next
    # fragment may reuse: write them now.
    rx_hold_flush(w, st)


cdef void rx_gather_spill(Worker *w, uint64_t *st) noexcept nogil:
    """Hands the pieces gathered so far to the reassembler (which copies them)."""
    cdef unsigned i, n = w.gather_n
    cdef uint32_t off = 0
    w.gather_n = 0
    for i in range(1, n + 1):
        rx_reassemble(w, w.gather_src, w.gather_slot, w.gather_msg, w.gather_total, off,
                      <uint8_t *>w.gather_iov[i].iov_base, w.gather_iov[i].iov_len, st)
        off += w.gather_iov[i].iov_len


cdef void rx_gather_deliver(Worker *w, uint64_t *st) noexcept nogil:
    """Writes a whole gathered message that is one record, without copying it."""
    cdef iovec *first = &w.gather_iov[1]
    cdef uint8_t *p = <uint8_t *>first.iov_base
    cdef size_t rlen = wf_get16(p)
    cdef bint has_vnet = p[2] & WF_RFLAG_VNET
    cdef size_t head = WF_RECORD_HDR_LEN + WF_ETH_HLEN + (WF_VNET_HDR_LEN if has_vnet else 0)
    cdef ssize_t r
    cdef int start
    if rlen != w.gather_total - WF_RECORD_HDR_LEN or first.iov_len < head or rlen < head - WF_RECORD_HDR_LEN:
        rx_gather_spill(w, st)   # several records, or an odd split: the general path
        return
    rx_hold_flush(w, st)
    p += WF_RECORD_HDR_LEN
    rx_learn(w, p + WF_VNET_HDR_LEN if has_vnet else p,
             rlen - WF_VNET_HDR_LEN if has_vnet else rlen, w.gather_src)
    first.iov_base = p
    first.iov_len -= WF_RECORD_HDR_LEN
    start = 1
    if not has_vnet:
        w.gather_iov[0].iov_base = ZERO_VNET_HDR
        w.gather_iov[0].iov_len = WF_VNET_HDR_LEN
        start = 0
    while True:
        r = writev(w.tap_fd, &w.gather_iov[start], w.gather_n + 1 - start)
        if r >= 0 or errno != EINTR:
            break
    rx_written(w, st, r >= 0, p, rlen, has_vnet, w.gather_slot)
    w.gather_n = 0


cdef void rx_fragment(Worker *w, wf_header *h, int src_slot, uint32_t msg, uint32_t total,
                      uint32_t offset, uint8_t *chunk, uint32_t n, uint64_t *st) noexcept nogil:
    if w.gather_n and (w.gather_src != h.src_peer or w.gather_msg != msg
                       or offset != w.gather_have or total != w.gather_total):
        rx_gather_spill(w, st)
    if w.gather_n == 0:
        if offset != 0:
            rx_reassemble(w, h.src_peer, src_slot, msg, total, offset, chunk, n, st)
            return
        w.gather_src = h.src_peer
        w.gather_msg = msg
        w.gather_total = total
        w.gather_have = 0
        w.gather_slot = src_slot
    w.gather_n += 1
    w.gather_iov[w.gather_n].iov_base = chunk
    w.gather_iov[w.gather_n].iov_len = n
    w.gather_have += n
    if w.gather_have == total:
        rx_gather_deliver(w, st)
    elif w.gather_n == GATHER_MAX:
        rx_gather_spill(w, st)


cdef void rx_relay(Worker *w, uint8_t *p, size_t n, wf_header *h, uint64_t *st) noexcept nogil:
    cdef PeerView *v = &w.rx_view
    cdef Out *o = w.relay_out
    cdef int slot
    cdef unsigned m
    if h.hops + 1 >= WF_MAX_HOPS:
        st[C_COUNT + WF_DROP_HOP_LIMIT] += 1
        return
    slot = view_slot(v, h.dst_peer)
    if slot < 0 or v.hop[slot] < 0:
        st[C_COUNT + WF_DROP_NO_ROUTE] += 1
        return
    if not out_has_room(o, 2, 0):
        out_flush(o, w.udp_fd, st)
    p[5] = h.hops + 1
    m = out_new_msg(o, v.hop[slot], 2)   # the datagram and, when sent, its new trailer
    msg_append(o, m, p, n)
    st[C_RELAYED_DATAGRAMS] += 1


cdef int rx_open(Worker *w, uint8_t *p, size_t n, wf_header *h) noexcept nogil:
    """Authenticates a datagram and opens it in place. Returns the peer slot of
    the key (the neighbour that sealed it), or -1 - the drop reason."""
    cdef unsigned slot = (h.key_id >> 2) & (MAX_PEERS - 1), k = h.key_id & 3
    cdef wf_aead *a
    cdef wf_replay *r
    cdef int fresh
    cdef int64_t gap
    if n < WF_HEADER_LEN + WF_TRAILER_LEN:
        return -1 - WF_DROP_SHORT
    if h.key_id == 0 or k >= RX_KEYS or slot >= w.rx_view.count or w.open_ids[slot][k] != h.key_id:
        return -1 - WF_DROP_UNKNOWN_KEY
    a = &w.opens[slot][k]
    r = &w.sh.peers[slot].replay[k][h.lane & (MAX_WORKERS - 1)]   # the lane is authenticated below
    fresh = wf_replay_check(r, a.gen, h.counter)
    if fresh <= 0:
        return -1 - (WF_DROP_REPLAYED if fresh == 0 else WF_DROP_UNKNOWN_KEY)
    if wf_aead_open(a, h.counter, p, WF_HEADER_LEN, p + WF_HEADER_LEN, n - WF_HEADER_LEN - WF_TRAILER_LEN):
        return -1 - WF_DROP_BAD_TAG
    fresh = wf_replay_accept_gap(r, a.gen, h.counter, &gap)   # 0: a copy another thread opened meanwhile
    if fresh <= 0:
        return -1 - (WF_DROP_REPLAYED if fresh == 0 else WF_DROP_UNKNOWN_KEY)
    w.rx_seen[slot] += 1
    w.rx_gap[slot] += gap
    if h.loss and wf_load(&w.sh.peers[slot].seg_until) < w.now + SEGMENTS_HOLD_MS - LOSS_WINDOW_MS:
        wf_store_release(&w.sh.peers[slot].seg_until, w.now + SEGMENTS_HOLD_MS)   # authenticated: opened above
    return slot


cdef void rx_loss_window(Worker *w) noexcept nogil:
    """Once a window: a neighbour that lost LOSS_PERMILLE of its datagrams to
    us gets WF_FLAG_LOSS on what we seal for it for LOSS_HOLD_MS."""
    cdef unsigned s
    cdef int64_t lost
    if w.now - w.loss_window < LOSS_WINDOW_MS:
        return
    w.loss_window = w.now
    for s in range(w.rx_view.count):
        lost = w.rx_gap[s]
        if lost > 0:
            wf_count(&w.sh.peers[s].stats[P_RX_LOST], <uint64_t>lost)
            if <uint64_t>lost * 1000 >= w.rx_seen[s] * LOSS_PERMILLE:
                wf_store_release(&w.sh.peers[s].loss_until, w.now + LOSS_HOLD_MS)
        w.rx_gap[s] = 0
        w.rx_seen[s] = 0


cdef void rx_datagram(Worker *w, uint8_t *p, size_t n, unsigned name, uint64_t *st) noexcept nogil:
    cdef wf_header h
    cdef int err, src_slot, key_slot
    cdef unsigned count
    cdef uint32_t msg, total, offset
    cdef uint32_t local = w.sh.local_peer
    err = wf_get_header(p, n, &h)
    if err:
        st[C_COUNT + err] += 1
        return
    key_slot = rx_open(w, p, n, &h)
    if key_slot < 0:
        st[C_COUNT - 1 - key_slot] += 1
        return
    n -= WF_TRAILER_LEN
    if h.type == WF_TYPE_CONTROL:
        st[C_CONTROL_RX] += 1
        if w.nrx_control == RX_CONTROL_MAX:
            rx_apply(w)
        w.rx_control[w.nrx_control].data = p + WF_HEADER_LEN
        w.rx_control[w.nrx_control].len = n - WF_HEADER_LEN
        w.rx_control[w.nrx_control].src = w.rx_view.ids[key_slot]   # who sealed it, not who it claims
        w.rx_control[w.nrx_control].name = name
        w.nrx_control += 1
        return
    src_slot = view_slot(&w.rx_view, h.src_peer)
    if src_slot < 0 or h.src_peer == local:
        st[C_COUNT + WF_DROP_UNKNOWN_PEER] += 1
        return
    if h.dst_peer != 0 and h.dst_peer != local:
        rx_relay(w, p, n, &h, st)
        return
    if h.type == WF_TYPE_FRAMES:
        err = wf_check_records(p + WF_HEADER_LEN, n - WF_HEADER_LEN, &count)
        if err:
            st[C_COUNT + err] += 1
            return
        rx_deliver(w, p + WF_HEADER_LEN, n - WF_HEADER_LEN, h.src_peer, src_slot, st)
        return
    err = wf_check_fragment(p + WF_HEADER_LEN, n - WF_HEADER_LEN, &msg, &total, &offset)
    if err:
        st[C_COUNT + err] += 1
        return
    rx_fragment(w, &h, src_slot, msg, total, offset, p + HDR_BLOCK, n - HDR_BLOCK, st)


cdef inline size_t parse_rx_cmsgs(msghdr *mh, size_t n, uint32_t *overflows) noexcept nogil:
    """Returns the size of the datagrams glued in one buffer (UDP_GRO gives it as
    an int; without it the buffer is one datagram) and picks up the socket's
    running count of datagrams dropped for lack of buffer (SO_RXQ_OVFL)."""
    cdef cmsghdr *c = wf_cmsg_first(mh)
    cdef size_t seg = n
    while c != NULL:
        if c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO:
            seg = (<int *>wf_cmsg_data(c))[0]
        elif c.cmsg_level == SOL_SOCKET and c.cmsg_type == SO_RXQ_OVFL:
            overflows[0] = (<uint32_t *>wf_cmsg_data(c))[0]
        c = wf_cmsg_next(mh, c)
    return seg if seg else n


cdef unsigned rx_batch(Worker *w) noexcept nogil:
    cdef Shared *sh = w.sh
    cdef uint64_t st[N_STATS]
    cdef unsigned i, batch = sh.batch
    cdef int n
    cdef size_t len, seg, off
    cdef msghdr *mh
    cdef uint8_t *buf
    cdef uint32_t overflows = 0
    for i in range(batch):
        mh = &w.rx_msgs[i].msg_hdr
        w.rx_iovs[i].iov_base = arena_slot(&w.rx_arena, i)
        w.rx_iovs[i].iov_len = FRAME_MAX
        mh.msg_iov = &w.rx_iovs[i]
        mh.msg_iovlen = 1
        mh.msg_name = &w.rx_names[i]
        mh.msg_namelen = sizeof(sockaddr_storage)
        mh.msg_control = w.rx_cmsgs[i]
        mh.msg_controllen = CMSG_BUF
        mh.msg_flags = 0
    n = recvmmsg(w.udp_fd, w.rx_msgs, batch, MSG_DONTWAIT, NULL)
    if n <= 0:
        return 0
    memset(st, 0, sizeof(st))
    w.now = now_ms()
    if w.rx_view.generation != wf_load_acquire(&sh.generation):
        pthread_mutex_lock(&sh.lock)
        view_refresh(sh, &w.rx_view, w.relay_out)
        opener_refresh(sh, w)
        pthread_mutex_unlock(&sh.lock)
    for i in range(<unsigned>n):
        mh = &w.rx_msgs[i].msg_hdr
        buf = arena_slot(&w.rx_arena, i)
        len = w.rx_msgs[i].msg_len
        seg = parse_rx_cmsgs(mh, len, &overflows)
        st[C_UDP_RX_BYTES] += len
        off = 0
        while True:   # an empty datagram is still one datagram (and a short one)
            st[C_UDP_RX_DATAGRAMS] += 1
            rx_datagram(w, buf + off, min(seg, len - off), i, st)
            off += seg
            if off >= len:
                break
    if w.relay_out.nmsgs:
        out_flush(w.relay_out, w.udp_fd, st)
    if w.gather_n:
        rx_gather_spill(w, st)   # the receive buffers are about to be reused
    rx_hold_flush(w, st)
    rx_loss_window(w)
    rx_apply(w)
    if overflows > w.socket_overflows:
        st[C_SOCKET_OVERFLOWS] = overflows - w.socket_overflows
        w.socket_overflows = overflows
    st[C_RX_BATCHES] += 1
    publish(w.rx_stats, st)
    publish_peers(sh, w.rx_peer, w.rx_view.count, P_RX_FRAMES)
    return n


cdef inline unsigned rx_round(Worker *w) noexcept nogil:
    """One round of the RX thread: the socket drained, then one TX batch.
    Returns how many datagrams and frames it moved."""
    cdef unsigned n = rx_batch(w), batch = w.sh.batch
    while n == batch and not w.sh.stop:
        n = rx_batch(w)
    # A frame just written to the TAP often has its answer (an ARP or ICMP
    # reply, a TCP ACK) queued on the TAP already: send it now, in this
    # wake-up, unless the TX thread is at it.
    if pthread_mutex_trylock(&w.tx_lock) == 0:
        n += tx_batch(w)
        pthread_mutex_unlock(&w.tx_lock)
    return n


cdef void *rx_main(void *arg) noexcept nogil:
    cdef Worker *w = <Worker *>arg
    cdef pollfd fds[4]
    cdef unsigned busy, i
    cdef uint64_t value
    fds[0].fd = w.udp_fd
    fds[1].fd = w.sh.stop_efd
    fds[2].fd = w.back_efd
    fds[3].fd = w.tap_fd
    for i in range(4):
        fds[i].events = POLLIN
    while not w.sh.stop:
        # The TAP is ours to watch unless the TX thread serves it.
        fds[3].fd = -1 if wf_load_acquire(&w.helping) else w.tap_fd
        if poll(fds, 4, POLL_MS) <= 0 or w.sh.stop:
            continue
        if fds[2].revents:
            read(w.back_efd, &value, sizeof(value))
        busy = 0
        while not w.sh.stop:
            if not rx_round(w):
                break
            busy += 1
            if busy == HELP_AFTER and not wf_load_acquire(&w.helping):
                value = 1
                write(w.help_efd, &value, sizeof(value))
    return NULL


# --- the Python-facing engine ----------------------------------------------

cdef int make_sockaddr(int family, str host, int port, sockaddr_storage *ss,
                       socklen_t *n) except -1:
    cdef sockaddr_in *a4 = <sockaddr_in *>ss
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>ss
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    memset(ss, 0, sizeof(sockaddr_storage))
    if family == AF_INET6 and ":" not in host:
        host = "::ffff:" + host
    raw = host.encode()
    if family == AF_INET:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        ok = inet_pton(AF_INET, raw, &a4.sin_addr)
        n[0] = sizeof(sockaddr_in)
    else:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        ok = inet_pton(AF_INET6, raw, &a6.sin6_addr)
        n[0] = sizeof(sockaddr_in6)
    if ok != 1:
        raise ValueError(f"{host!r} is not a numeric address of this socket's family")
    return 0


cdef tuple sockaddr_tuple(sockaddr_storage *ss):
    cdef char text[INET6_ADDRSTRLEN]
    cdef sockaddr_in *a4 = <sockaddr_in *>ss
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>ss
    if ss.ss_family == AF_INET:
        inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text))
        return text.decode(), ntohs(a4.sin_port)
    inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
    host = text.decode()
    return host[7:] if host.startswith("::ffff:") and "." in host else host, ntohs(a6.sin6_port)


cdef class Engine:
    """Forwarding threads between TAP queues and UDP sockets.

    `workers` lists (tap_fd, udp_fd, tx_fd) per worker: the TAP queue, the
    socket it receives on and the socket it sends from (may be the same)."""
    cdef Shared *sh
    cdef Worker *workers[MAX_WORKERS]
    cdef int nworkers
    cdef int family
    cdef bint started
    cdef Out *control_out          # CONTROL datagrams sent from Python (under the GIL)
    cdef uint64_t control_stats[N_STATS]

    def __cinit__(self, uint32_t local_peer, workers, unsigned max_payload, int family,
                  bint udp_gso=False, unsigned fdb_capacity=8192, unsigned fdb_max_age=300,
                  unsigned batch=64, bint tap_uso=False, bint tap_tso=False, str segments="auto"):
        if local_peer == 0:
            raise ValueError("peer id 0 is reserved for the local side")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch {batch} is not in 1..{MAX_BATCH}")
        if not HDR_BLOCK + WF_TRAILER_LEN + WF_RECORD_HDR_LEN + WF_ETH_HLEN <= max_payload <= 65507:
            raise ValueError(f"max_payload {max_payload} is not in 70..65507")
        if segments not in SEGMENTS_MODES:
            raise ValueError(f"segments {segments!r} is not one of {', '.join(SEGMENTS_MODES)}")
        if not 1 <= len(workers) <= MAX_WORKERS:
            raise ValueError(f"1 to {MAX_WORKERS} workers, got {len(workers)}")
        self.family = family
        self.sh = <Shared *>calloc(1, sizeof(Shared))
        if self.sh == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.sh.lock, NULL)
        self.sh.stop_efd = self.sh.control_efd = -1
        if wf_fdb_init(&self.sh.fdb, fdb_capacity, fdb_max_age):
            raise MemoryError()
        self.sh.local_peer = local_peer
        self.sh.max_payload = max_payload
        self.sh.gso = udp_gso
        self.sh.batch = batch
        self.sh.uso = tap_uso
        self.sh.tso = tap_tso
        self.sh.segments = SEGMENTS_MODES[segments]
        self.sh.generation = 1
        self.control_out = out_alloc(0)
        if self.control_out == NULL:
            raise MemoryError()
        self.sh.stop_efd = check_errno(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd")
        self.sh.control_efd = check_errno(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd")
        for tap_fd, udp_fd, tx_fd in workers:
            w = self._new_worker(tap_fd, udp_fd, tx_fd, batch)
            self.workers[self.nworkers] = w
            self.nworkers += 1

    cdef Worker *_new_worker(self, int tap_fd, int udp_fd, int tx_fd, unsigned batch) except NULL:
        cdef Worker *w = <Worker *>calloc(1, sizeof(Worker))
        if w == NULL:
            raise MemoryError()
        w.sh = self.sh
        pthread_mutex_init(&w.tx_lock, NULL)
        w.help_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        w.back_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        w.tap_fd = tap_fd
        w.udp_fd = udp_fd
        w.tx_fd = tx_fd
        w.tx_msg = <uint32_t>self.nworkers << 24
        w.tx_out = out_alloc(self.nworkers)
        w.relay_out = out_alloc(self.nworkers)
        if (w.help_efd < 0 or w.back_efd < 0
                or arena_init(&w.tx_arena, batch) or arena_init(&w.rx_arena, batch)
                or w.tx_out == NULL or w.relay_out == NULL
                or wf_reasm_init(&w.reasm, REASM_SLOTS)):
            free_worker(w)
            raise MemoryError()
        return w

    def __dealloc__(self):
        self._stop_threads()
        for i in range(self.nworkers):
            free_worker(self.workers[i])
        out_free(self.control_out)
        if self.sh != NULL:
            OPENSSL_cleanse(self.sh.peers, sizeof(self.sh.peers))
            wf_fdb_free(&self.sh.fdb)
            for fd in (self.sh.stop_efd, self.sh.control_efd):
                if fd >= 0:
                    close(fd)
            pthread_mutex_destroy(&self.sh.lock)
            free(self.sh)

    def start(self):
        """Starts the forwarding threads (two per worker)."""
        cdef Worker *w
        if self.started:
            raise RuntimeError("engine already started")
        self.started = True
        for i in range(self.nworkers):
            w = self.workers[i]
            if pthread_create(&w.tx_thread, NULL, tx_main, w) != 0:
                raise RuntimeError("cannot start a forwarding thread")
            w.tx_running = 1
            pthread_setname_np(w.tx_thread, f"wf-tx{i}".encode())
            if pthread_create(&w.rx_thread, NULL, rx_main, w) != 0:
                raise RuntimeError("cannot start a forwarding thread")
            w.rx_running = 1
            pthread_setname_np(w.rx_thread, f"wf-rx{i}".encode())

    def stop(self):
        """Stops and joins the forwarding threads; the engine cannot be restarted."""
        self._stop_threads()

    cdef void _stop_threads(self):
        cdef uint64_t one = 1
        cdef Worker *w
        if self.sh == NULL:
            return
        self.sh.stop = 1
        write(self.sh.stop_efd, &one, sizeof(one))
        for i in range(self.nworkers):
            w = self.workers[i]
            with nogil:
                if w.tx_running:
                    pthread_join(w.tx_thread, NULL)
                if w.rx_running:
                    pthread_join(w.rx_thread, NULL)
            w.tx_running = w.rx_running = 0

    # --- peers (the control plane's levers) ---

    cdef int _slot(self, uint32_t peer_id):
        for s in range(self.sh.peer_count):
            if self.sh.peers[s].used and self.sh.peers[s].id == peer_id:
                return s
        return -1

    cdef int _slot_or_raise(self, uint32_t peer_id) except -1:
        cdef int s = self._slot(peer_id)
        if s < 0:
            raise KeyError(f"no peer with id {peer_id}")
        return s

    cdef void _changed(self):
        wf_store_release(&self.sh.generation, self.sh.generation + 1)

    def add_peer(self, uint32_t peer_id, str host, int port):
        """Adds (or readdresses) a peer; it is up until set_peer_up(False)."""
        cdef sockaddr_storage ss
        cdef socklen_t n
        cdef Peer *p
        cdef int s
        if peer_id == 0 or peer_id == self.sh.local_peer:
            raise ValueError(f"peer id {peer_id} is reserved or our own")
        make_sockaddr(self.family, host, port, &ss, &n)
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot(peer_id)
            if s < 0:
                for s in range(MAX_PEERS):
                    if not self.sh.peers[s].used:
                        break
                else:
                    raise OverflowError(f"at most {MAX_PEERS} peers")
                p = &self.sh.peers[s]
                OPENSSL_cleanse(p, <size_t>(<char *>p.replay - <char *>p))
                for lane in range(MAX_WORKERS):
                    p.tx_counter[lane] = <uint64_t>lane << 56
                p.id = peer_id
                p.used = p.up = 1
                p.via = -1
                wf_put_plain_header(p.template, WF_TYPE_FRAMES, self.sh.local_peer, peer_id)
                self.sh.peer_count = max(self.sh.peer_count, <unsigned>s + 1)
            p = &self.sh.peers[s]
            memcpy(&p.addr, &ss, n)
            p.addrlen = n
            self._changed()
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    def set_peer_address(self, uint32_t peer_id, str host, int port):
        cdef sockaddr_storage ss
        cdef socklen_t n
        make_sockaddr(self.family, host, port, &ss, &n)
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot_or_raise(peer_id)
            memcpy(&self.sh.peers[s].addr, &ss, n)
            self.sh.peers[s].addrlen = n
            self._changed()
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    def remove_peer(self, uint32_t peer_id):
        """Forgets a peer, the MACs learned on it, and routes through it."""
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot_or_raise(peer_id)
            self.sh.peers[s].used = 0
            self.sh.peers[s].tx_key_id = 0
            for k in range(RX_KEYS):
                self._drop_rx_key(s, k)
            for r in range(self.sh.peer_count):
                if self.sh.peers[r].via == s:
                    self.sh.peers[r].via = -1
            wf_fdb_sweep(&self.sh.fdb, 0, peer_id)
            self._changed()
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    def set_peer_up(self, uint32_t peer_id, bint up):
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot_or_raise(peer_id)
            self.sh.peers[s].up = up
            self._changed()
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    # --- session keys (from the control plane's handshake) ---

    def install_rx_key(self, uint32_t peer_id, int cipher, bytes key):
        """Accepts datagrams from the peer sealed with `key` (a token for
        CIPHER_NONE) beside the keys it has already; returns the key id the
        peer must put in them. The oldest of RX_KEYS keys makes room."""
        cdef wf_aead check
        cdef RxKey *rx
        cdef int s
        cdef unsigned i, k
        memset(&check, 0, sizeof(check))
        load_key(&check, cipher, key, 0)   # refuses a bad cipher or length before anything changes
        wf_aead_clear(&check)
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot_or_raise(peer_id)
            rx = self.sh.peers[s].rx
            k = 0
            for i in range(1, RX_KEYS):   # a free place, else the oldest key's
                if (rx[i].key_id != 0, rx[i].gen) < (rx[k].key_id != 0, rx[k].gen):
                    k = i
            self.sh.key_epoch = self.sh.key_epoch % 63 + 1   # never 0, so no key id is 0
            key_id = self.sh.key_epoch << 10 | s << 2 | k
            self.sh.key_gen += 1
            rx[k].key_id = key_id
            rx[k].cipher = cipher
            rx[k].gen = self.sh.key_gen
            memcpy(rx[k].key, <const uint8_t *>key, len(key))
            self._changed()
            return key_id
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    def remove_rx_key(self, int key_id):
        """Stops accepting a key (once its overlap is over); False if it was gone."""
        cdef unsigned s = (key_id >> 2) & (MAX_PEERS - 1), k = key_id & 3
        pthread_mutex_lock(&self.sh.lock)
        try:
            if key_id <= 0 or k >= RX_KEYS or s >= self.sh.peer_count \
                    or self.sh.peers[s].rx[k].key_id != key_id:
                return False
            self._drop_rx_key(s, k)
            self._changed()
            return True
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    cdef void _drop_rx_key(self, unsigned s, unsigned k):
        OPENSSL_cleanse(&self.sh.peers[s].rx[k], sizeof(RxKey))

    def set_tx_key(self, uint32_t peer_id, int key_id, int cipher, bytes key):
        """Seals everything sent to the peer with `key` from now on, under the
        id the peer gave it."""
        cdef wf_aead check
        cdef Peer *p
        if not 0 < key_id < 65536:
            raise ValueError(f"key id {key_id} is not in 1..65535")
        memset(&check, 0, sizeof(check))
        load_key(&check, cipher, key, 1)
        wf_aead_clear(&check)
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot_or_raise(peer_id)
            p = &self.sh.peers[s]
            self.sh.key_gen += 1
            p.tx_key_id = key_id
            p.tx_cipher = cipher
            p.tx_gen = self.sh.key_gen
            OPENSSL_cleanse(p.tx_key, WF_KEY_LEN)
            memcpy(p.tx_key, <const uint8_t *>key, len(key))
            self._changed()
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    def set_peer_loss_reports(self, uint32_t peer_id, bint understood):
        """Whether the peer reads WF_FLAG_LOSS: only then do we set it towards it."""
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot_or_raise(peer_id)
            self.sh.peers[s].loss_reports = understood
            self._changed()
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    def set_route(self, uint32_t dst_peer, via_peer=None):
        """Sends frames for dst_peer through via_peer (None: directly)."""
        pthread_mutex_lock(&self.sh.lock)
        try:
            s = self._slot_or_raise(dst_peer)
            self.sh.peers[s].via = -1 if via_peer is None else self._slot_or_raise(via_peer)
            self._changed()
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    # --- observation ---

    def counters(self):
        """Totals since start: frames, bytes, batches per direction."""
        return {name: v for name, v in zip(COUNTER_NAMES, self._sum_stats()[:C_COUNT])}

    def drops(self):
        """Dropped frames and datagrams by reason."""
        return {name: v for name, v in zip(DROP_REASONS[1:], self._sum_stats()[C_COUNT + 1:])}

    def worker_counters(self):
        """Counters of each worker: how the load spreads over them."""
        return [{name: v for name, v in zip(COUNTER_NAMES, self._sum_stats(i, i + 1)[:C_COUNT])}
                for i in range(self.nworkers)]

    cdef list _sum_stats(self, int first=0, int last=-1):
        totals = [self.control_stats[k] if first == 0 else 0 for k in range(N_STATS)]
        cdef Worker *w
        for i in range(first, self.nworkers if last < 0 else last):
            w = self.workers[i]
            for k in range(N_STATS):
                totals[k] += wf_load(&w.tx_stats[k]) + wf_load(&w.rx_stats[k])
        return totals

    def peer_segments(self):
        """Per peer: whether TCP super-frames to it go as segments now
        ("segments"), and whether we tell it that its datagrams get lost on
        the way to us ("loss_reported")."""
        cdef uint64_t now = now_ms()
        result = {}
        pthread_mutex_lock(&self.sh.lock)
        for s in range(self.sh.peer_count):
            if self.sh.peers[s].used:
                result[self.sh.peers[s].id] = {
                    "segments": bool(tx_segments(self.sh, s, now)),
                    "loss_reported": wf_load(&self.sh.peers[s].loss_until) >= now}
        pthread_mutex_unlock(&self.sh.lock)
        return result

    def peer_counters(self):
        result = {}
        pthread_mutex_lock(&self.sh.lock)
        for s in range(self.sh.peer_count):
            if self.sh.peers[s].used:
                result[self.sh.peers[s].id] = {
                    name: wf_load(&self.sh.peers[s].stats[k])
                    for k, name in enumerate(PEER_COUNTER_NAMES)}
                result[self.sh.peers[s].id]["tx_datagrams_sealed"] = sum(
                    wf_load(&self.sh.peers[s].tx_counter[lane]) - (<uint64_t>lane << 56)
                    for lane in range(MAX_WORKERS))

        pthread_mutex_unlock(&self.sh.lock)
        return result

    @property
    def segments_mode(self):
        """--segments: never, auto or always."""
        return {v: k for k, v in SEGMENTS_MODES.items()}[self.sh.segments]

    @property
    def udp_gso(self):
        """Whether super-frames still go out with UDP GSO (off after an EIO)."""
        return bool(self.sh.gso)

    def fdb_entries(self):
        pthread_mutex_lock(&self.sh.lock)
        try:
            return fdb_entries(&self.sh.fdb, now_seconds())
        finally:
            pthread_mutex_unlock(&self.sh.lock)

    def fdb_expire(self):
        """Removes aged-out MACs; returns how many."""
        pthread_mutex_lock(&self.sh.lock)
        n = wf_fdb_sweep(&self.sh.fdb, now_seconds(), -1)
        pthread_mutex_unlock(&self.sh.lock)
        return n

    def fdb_size(self):
        return self.sh.fdb.count

    # --- control datagrams ---

    @property
    def control_fd(self):
        """Readable (an eventfd) when recv_control() has something."""
        return self.sh.control_efd

    def recv_control(self):
        """Drains the control queue: [(src_peer, (host, port), payload)]."""
        cdef uint64_t ignored
        cdef CtrlMsg *m
        read(self.sh.control_efd, &ignored, sizeof(ignored))
        result = []
        pthread_mutex_lock(&self.sh.lock)
        while self.sh.ctrl_len:
            m = &self.sh.ctrl[self.sh.ctrl_head]
            result.append((m.src, sockaddr_tuple(&m.addr), m.data[:m.len]))
            self.sh.ctrl_head = (self.sh.ctrl_head + 1) % CTRL_SLOTS
            self.sh.ctrl_len -= 1
        pthread_mutex_unlock(&self.sh.lock)
        return result

    def send_control(self, bytes payload, uint32_t peer_id):
        """Sends a CONTROL datagram to a peer, sealed like every other datagram.
        Raises KeyError for an unknown peer, ConnectionError before its session."""
        cdef Out *o = self.control_out
        cdef unsigned m
        cdef int s, err
        cdef uint8_t *h
        if len(payload) > CTRL_MAX:
            raise ValueError(f"control payload of {len(payload)} bytes exceeds {CTRL_MAX}")
        pthread_mutex_lock(&self.sh.lock)
        s = self._slot(peer_id)
        if s >= 0:
            out_refresh(self.sh, o)
        pthread_mutex_unlock(&self.sh.lock)
        if s < 0:
            raise KeyError(f"no peer with id {peer_id}")
        if not o.key_ids[s]:
            raise ConnectionError(f"no session with peer {peer_id} yet")
        h = o.hdrs[0]
        o.nhdrs = 1
        wf_put_plain_header(h, WF_TYPE_CONTROL, self.sh.local_peer, peer_id)
        m = out_new_msg(o, s, 3)
        msg_append(o, m, h, WF_HEADER_LEN)
        msg_append(o, m, <uint8_t *>payload, len(payload))
        cdef int fd = self.workers[0].udp_fd
        cdef uint64_t *st = self.control_stats
        cdef uint64_t failed = st[C_COUNT + WF_DROP_UDP_SEND]
        with nogil:
            err = out_flush(o, fd, st)
        if st[C_COUNT + WF_DROP_UDP_SEND] != failed:
            raise os_error(err, "send control datagram")


cdef void free_worker(Worker *w) noexcept nogil:
    cdef unsigned s, k
    if w == NULL:
        return
    arena_free(&w.tx_arena)
    arena_free(&w.rx_arena)
    out_free(w.tx_out)
    out_free(w.relay_out)
    for s in range(MAX_PEERS):
        for k in range(RX_KEYS):
            wf_aead_clear(&w.opens[s][k])
    wf_reasm_free(&w.reasm)
    pthread_mutex_destroy(&w.tx_lock)
    if w.help_efd >= 0:
        close(w.help_efd)
    if w.back_efd >= 0:
        close(w.back_efd)
    free(w)
