# MAC forwarding table (ext/includes/fdb.h) and fragment reassembly
# (ext/includes/reasm.h), with the forwarding decision shared by the TX
# thread and the Python-facing ForwardingTable.

cdef enum:
    ROUTE_FLOOD = -1
    ROUTE_HAIRPIN = -2


cdef inline uint64_t frame_key(const uint8_t *mac, const uint8_t *eth, size_t n) noexcept nogil:
    return <uint64_t>wf_frame_vlan(eth, n) << 48 | wf_mac48(mac)


cdef inline int64_t fdb_route(wf_fdb *t, const uint8_t *eth, size_t n, uint32_t now) noexcept nogil:
    """Learns the source as local; returns the destination's peer id, ROUTE_FLOOD or ROUTE_HAIRPIN."""
    cdef int64_t peer
    wf_fdb_learn(t, frame_key(eth + 6, eth, n), WF_PEER_LOCAL, now)
    if wf_is_multicast(eth):
        return ROUTE_FLOOD
    peer = wf_fdb_lookup(t, frame_key(eth, eth, n), now)
    if peer < 0:
        return ROUTE_FLOOD
    if peer == WF_PEER_LOCAL:
        return ROUTE_HAIRPIN
    return peer


cdef inline uint64_t mac_key(bytes mac, int vlan) except? 0:
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
    return <uint64_t>(vlan & 0x0fff) << 48 | wf_mac48(mac)


cdef class ForwardingTable:
    """(MAC, VLAN) -> peer with aging; peer 0 is the local TAP side."""
    cdef wf_fdb t

    def __cinit__(self, unsigned capacity=8192, unsigned max_age=300):
        if wf_fdb_init(&self.t, capacity, max_age):
            raise MemoryError()

    def __dealloc__(self):
        wf_fdb_free(&self.t)

    @property
    def capacity(self):
        return self.t.capacity

    def learn(self, bytes mac, int vlan, uint32_t peer, double now):
        wf_fdb_learn(&self.t, mac_key(mac, vlan), peer, <uint32_t>now)

    def lookup(self, bytes mac, int vlan, double now):
        cdef int64_t p = wf_fdb_lookup(&self.t, mac_key(mac, vlan), <uint32_t>now)
        return None if p < 0 else p

    def expire(self, double now):
        return wf_fdb_sweep(&self.t, <uint32_t>now, -1)

    def flush_peer(self, uint32_t peer):
        return wf_fdb_sweep(&self.t, 0, peer)

    def __len__(self):
        return self.t.count

    def entries(self, double now):
        return fdb_entries(&self.t, <uint32_t>now)

    def route_from_tap(self, const uint8_t[:] frame, peers_up, double now):
        if frame.shape[0] < WF_ETH_HLEN:
            raise MalformedDatagram("bad_length")
        cdef int64_t p = fdb_route(&self.t, &frame[0], frame.shape[0], <uint32_t>now)
        if p == ROUTE_HAIRPIN:
            return []
        if p != ROUTE_FLOOD and p in peers_up:
            return [p]
        return list(peers_up)

    def learn_from_peer(self, const uint8_t[:] frame, uint32_t src_peer, double now):
        if frame.shape[0] < WF_ETH_HLEN:
            raise MalformedDatagram("bad_length")
        wf_fdb_learn(&self.t, frame_key(&frame[6], &frame[0], frame.shape[0]), src_peer, <uint32_t>now)


cdef list fdb_entries(wf_fdb *t, uint32_t now):
    cdef uint32_t i
    cdef wf_fdb_entry *e
    result = []
    for i in range(t.capacity):
        e = &t.entries[i]
        if e.key:
            mac = (e.key & 0xffffffffffff).to_bytes(6, "big")
            result.append((mac, (e.key >> 48) & 0x0fff, e.peer, now - e.seen))
    return result


cdef class Reassembler:
    """Joins FRAGMENT datagrams back into one FRAMES payload."""
    cdef wf_reasm r
    cdef uint64_t _dropped

    def __cinit__(self, unsigned slots=16):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if wf_reasm_init(&self.r, slots):
            wf_reasm_free(&self.r)
            raise MemoryError()

    def __dealloc__(self):
        wf_reasm_free(&self.r)

    @property
    def dropped(self):
        return self._dropped

    def feed(self, uint32_t src_peer, uint32_t msg, uint32_t total_len, uint32_t offset,
             const uint8_t[:] chunk):
        cdef uint32_t n = chunk.shape[0]
        if n == 0 or total_len == 0 or total_len > WF_MAX_MESSAGE or offset > total_len \
                or n > total_len - offset:
            raise MalformedDatagram("bad_fragment")
        cdef const uint8_t *done = wf_reasm_feed(&self.r, src_peer, msg, total_len, offset,
                                                 &chunk[0], n, &self._dropped)
        return None if done == NULL else bytes(done[:total_len])
