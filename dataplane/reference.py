"""Pure-Python reference of the weavefast wire format and forwarding rules.

This module is the executable specification of docs/ARCHITECTURE.md ("Wire
format, version 2", its AEAD envelope and replay window, and "Forwarding"). It exposes exactly the API of the Cython
core (`dataplane._core`), and the unit tests run every case against both, so a
behaviour of the core that differs from this module is a bug in one of them.
It favours clarity over speed and is never on the data path.
"""
import hmac
import struct
from collections import namedtuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

MAGIC = 0x5746  # "WF"
VERSION = 2
HEADER_LEN = 24
RECORD_HDR_LEN = 4
FRAG_HDR_LEN = 12
VNET_HDR_LEN = 10
TYPE_FRAMES = 1
TYPE_FRAGMENT = 2
TYPE_CONTROL = 3
RFLAG_VNET = 0x01
MAX_HOPS = 16
TRAILER_LEN = 16  # the AEAD tag, or the session token without a secret
KEY_LEN = 32
TOKEN_LEN = 16
CIPHER_NONE, CIPHER_AES_256_GCM, CIPHER_CHACHA20_POLY1305 = 0, 1, 2
REPLAY_WINDOW = 8192
FLAG_LOSS = 0x80  # top bit of the hops byte: "your datagrams get lost on the way to me"
TSO_MAX_SEGMENTS = 64  # TCP segments joined into one super-frame for the TAP
TSO_MAX_SPLIT = 512  # segments one super-frame may be cut into

ETH_HLEN = 14
ETH_P_8021Q = 0x8100
VLAN_TAGGED_HLEN = 18  # destination, source, 0x8100, TCI, inner ethertype
MAX_REASSEMBLED_LEN = 262144
MAX_RECORD_LEN = 0xFFFF  # the record length field is a u16
MAX_RECORDS_PER_DATAGRAM = 63  # the core sends a datagram as at most 64 iovecs

# magic, version, type, lane, hops, key_id, src_peer, dst_peer, counter
_HEADER = struct.Struct("!HBBBBHIIQ")
# length of what follows, rflags, reserved
_RECORD_HDR = struct.Struct("!HBB")
# message id, total_len, offset
_FRAG_HDR = struct.Struct("!III")
assert _HEADER.size == HEADER_LEN
assert _RECORD_HDR.size == RECORD_HDR_LEN
assert _FRAG_HDR.size == FRAG_HDR_LEN

_KNOWN_TYPES = (TYPE_FRAMES, TYPE_FRAGMENT, TYPE_CONTROL)


class MalformedDatagram(ValueError):
    """A datagram or frame that must be dropped; `reason` names the drop counter."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


Datagram = namedtuple(
    "Datagram",
    "type lane hops key_id src_peer dst_peer counter records fragment control")


def encode_header(type, src_peer, dst_peer, counter, hops=0, key_id=0, lane=0):
    """The 24-byte datagram header."""
    return _HEADER.pack(MAGIC, VERSION, type, lane, hops, key_id,
                        src_peer, dst_peer, counter)


def _encode_record(rflags, payload):
    if len(payload) > MAX_RECORD_LEN:
        raise ValueError(f"record of {len(payload)} bytes exceeds the u16 length field")
    return _RECORD_HDR.pack(len(payload), rflags, 0) + bytes(payload)


def encode_datagrams(src_peer, dst_peer, counter, records, max_payload, msg=0):
    """Pack `(rflags, payload)` records, in order, into datagrams that take at
    most `max_payload` bytes on the wire once sealed (header and trailer
    included); return them before sealing, without their trailer.

    Every datagram has its own counter, counting up from `counter`. Records are
    packed greedily into FRAMES datagrams of at most 63 records. A record too
    large for a datagram of its own is sent alone as FRAGMENT datagrams that
    share one message id, counting up from `msg`; the FRAMES datagram being
    filled before it is closed first, so the order of records is kept.
    """
    frames_room = max_payload - HEADER_LEN - TRAILER_LEN
    chunk_room = frames_room - FRAG_HDR_LEN
    if chunk_room < 1:
        raise ValueError(f"max_payload {max_payload} leaves no room for data")
    datagrams = []
    pending = []  # encoded records of the FRAMES datagram being filled
    pending_len = 0

    def header(type_):
        return encode_header(type_, src_peer, dst_peer, counter + len(datagrams))

    def close_frames():
        nonlocal pending_len
        if pending:
            datagrams.append(header(TYPE_FRAMES) + b"".join(pending))
            pending.clear()
            pending_len = 0

    for rflags, payload in records:
        record = _encode_record(rflags, payload)
        if len(record) > frames_room:
            close_frames()
            for offset in range(0, len(record), chunk_room):
                datagrams.append(header(TYPE_FRAGMENT) + _FRAG_HDR.pack(msg, len(record), offset)
                                 + record[offset:offset + chunk_room])
            msg = (msg + 1) % 2**32
            continue
        if (pending_len + len(record) > frames_room
                or len(pending) == MAX_RECORDS_PER_DATAGRAM):
            close_frames()
        pending.append(record)
        pending_len += len(record)
    close_frames()
    return datagrams


def _decode_records(payload):
    """The `(rflags, payload)` records of a FRAMES payload."""
    if not payload:
        raise MalformedDatagram("bad_length", "FRAMES datagram without records")
    records = []
    pos = 0
    while pos < len(payload):
        if len(payload) - pos < RECORD_HDR_LEN:
            raise MalformedDatagram("bad_length", "trailing bytes after the last record")
        length, rflags, _reserved = _RECORD_HDR.unpack_from(payload, pos)
        pos += RECORD_HDR_LEN
        if pos + length > len(payload):
            raise MalformedDatagram("bad_length", "record overruns the datagram")
        minimum = ETH_HLEN + (VNET_HDR_LEN if rflags & RFLAG_VNET else 0)
        if length < minimum:
            raise MalformedDatagram("bad_length", f"record of {length} bytes, minimum {minimum}")
        records.append((rflags, bytes(payload[pos:pos + length])))
        pos += length
    return records


def _decode_fragment(payload):
    """`(msg, total_len, offset, chunk)` of a FRAGMENT payload."""
    if len(payload) < FRAG_HDR_LEN:
        raise MalformedDatagram("bad_fragment", "fragment header truncated")
    msg, total_len, offset = _FRAG_HDR.unpack_from(payload)
    chunk = bytes(payload[FRAG_HDR_LEN:])
    if not chunk:
        raise MalformedDatagram("bad_fragment", "empty fragment")
    if total_len == 0 or total_len > MAX_REASSEMBLED_LEN:
        raise MalformedDatagram("bad_fragment", f"total_len {total_len}")
    if offset + len(chunk) > total_len:
        raise MalformedDatagram("bad_fragment", "fragment ends past total_len")
    return msg, total_len, offset, chunk


def _nonce(counter):
    return bytes(4) + counter.to_bytes(8, "big")


def _aead(cipher, key):
    if cipher == CIPHER_AES_256_GCM and len(key) == KEY_LEN:
        return AESGCM(key)
    if cipher == CIPHER_CHACHA20_POLY1305 and len(key) == KEY_LEN:
        return ChaCha20Poly1305(key)
    if cipher == CIPHER_NONE and len(key) == TOKEN_LEN:
        return None
    raise ValueError(f"no cipher {cipher} with a key of {len(key)} bytes")


def seal_datagram(datagram, cipher, key):
    """The datagram as it goes on the wire: the body (after the header) sealed
    with the header as associated data and its counter as the nonce, then the
    tag; for CIPHER_NONE the body as it is, then the token `key`."""
    datagram = bytes(datagram)
    if len(datagram) < HEADER_LEN:
        raise MalformedDatagram("short", f"{len(datagram)} bytes")
    aead = _aead(cipher, key)
    header, body = datagram[:HEADER_LEN], datagram[HEADER_LEN:]
    if aead is None:
        return datagram + key
    counter = _HEADER.unpack(header)[-1]
    return header + aead.encrypt(_nonce(counter), body, header)


def open_datagram(data, cipher, key):
    """The inverse of seal_datagram: the datagram without its trailer, or
    MalformedDatagram("bad_tag") when the tag (or token) is wrong."""
    data = bytes(data)
    if len(data) < HEADER_LEN + TRAILER_LEN:
        raise MalformedDatagram("short", f"{len(data)} bytes")
    aead = _aead(cipher, key)
    header = data[:HEADER_LEN]
    if aead is None:
        if not hmac.compare_digest(data[-TRAILER_LEN:], key):
            raise MalformedDatagram("bad_tag", "wrong session token")
        return data[:-TRAILER_LEN]
    counter = _HEADER.unpack(header)[-1]
    try:
        return header + aead.decrypt(_nonce(counter), data[HEADER_LEN:], header)
    except InvalidTag:
        raise MalformedDatagram("bad_tag", "authentication failed") from None


class ReplayWindow:
    """Which counters of one key were accepted: any above the highest, and
    those among the REPLAY_WINDOW below it not seen yet, are fresh.

    The receiver asks `fresh` before opening a datagram and calls `update`
    only after its tag verified, so forged counters never move the window.
    """

    def __init__(self):
        self.top = 0
        self._seen = set()  # accepted counters within the window below top

    def fresh(self, counter):
        if counter > self.top:
            return True
        return self.top - counter < REPLAY_WINDOW and counter not in self._seen

    def update(self, counter):
        """Marks the counter seen; False (and no change) when it was not fresh."""
        if not self.fresh(counter):
            return False
        if counter > self.top:
            self.top = counter
            self._seen = {c for c in self._seen if self.top - c < REPLAY_WINDOW}
        self._seen.add(counter)
        return True


def decode_datagram(data):
    """Parse one datagram without its trailer (as open_datagram returns it)
    into a Datagram; raise MalformedDatagram if invalid.

    Lane, hops, key_id and peer ids are returned as they are: acting on them
    (hop limit, unknown peers) is the router's business, not the parser's.
    """
    data = memoryview(data)
    if len(data) < HEADER_LEN:
        raise MalformedDatagram("short", f"{len(data)} bytes")
    magic, version, type_, lane, hops, key_id, src_peer, dst_peer, counter = \
        _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedDatagram("bad_magic", f"0x{magic:04x}")
    if version != VERSION:
        raise MalformedDatagram("bad_version", str(version))
    if type_ not in _KNOWN_TYPES:
        raise MalformedDatagram("bad_type", str(type_))
    payload = data[HEADER_LEN:]
    records = fragment = control = None
    if type_ == TYPE_FRAMES:
        records = _decode_records(payload)
    elif type_ == TYPE_FRAGMENT:
        fragment = _decode_fragment(payload)
    else:
        control = bytes(payload)
    return Datagram(type_, lane, hops, key_id, src_peer, dst_peer, counter,
                    records, fragment, control)


class _Partial:
    """A message being reassembled: its message id, expected length and bytes so far."""

    def __init__(self, msg, total_len):
        self.msg = msg
        self.total_len = total_len
        self.data = bytearray()
        self.last_used = 0


class Reassembler:
    """Rebuilds FRAMES payloads from in-order FRAGMENT datagrams.

    One message per peer is reassembled at a time, in at most `slots` slots.
    `dropped` counts fragments that end in a drop: one out of order (its offset
    is not the number of bytes held for its message id, none when nothing is held) or
    inconsistent with the message, and a new message that replaces an
    unfinished one of the same peer or takes the least recently used slot.
    """

    def __init__(self, slots=16):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self.dropped = 0
        self._partials = {}  # src_peer -> _Partial
        self._clock = 0  # orders uses of the partials, to reuse the oldest

    def feed(self, src_peer, msg, total_len, offset, chunk):
        """Add one fragment, as decode_datagram returns it (offset + len(chunk)
        <= total_len); return the whole FRAMES payload once complete."""
        self._clock += 1
        partial = self._partials.get(src_peer)
        if partial is None or partial.msg != msg:
            if offset != 0:
                self.dropped += 1  # the start of this message was lost or dropped
                return None
            if partial is not None:
                self._drop(src_peer)  # a new message replaces the unfinished message
            if len(chunk) == total_len:
                return bytes(chunk)
            if len(self._partials) >= self.slots:
                self._drop(min(self._partials, key=lambda p: self._partials[p].last_used))
            partial = self._partials[src_peer] = _Partial(msg, total_len)
        elif offset != len(partial.data) or total_len != partial.total_len:
            self._drop(src_peer)
            return None
        partial.data += chunk
        partial.last_used = self._clock
        if len(partial.data) < total_len:
            return None
        del self._partials[src_peer]
        return bytes(partial.data)

    def _drop(self, src_peer):
        del self._partials[src_peer]
        self.dropped += 1


def _is_multicast(mac):
    """True for group addresses (broadcast included): bit 0 of the first byte."""
    return bool(mac[0] & 0x01)


def _frame_addresses(frame):
    """`(destination MAC, source MAC, VLAN)` of an Ethernet frame."""
    if len(frame) < ETH_HLEN:
        raise MalformedDatagram("bad_length", f"frame of {len(frame)} bytes")
    dst, src = bytes(frame[0:6]), bytes(frame[6:12])
    vlan = 0
    # A frame too short for the whole tagged header counts as untagged.
    if len(frame) >= VLAN_TAGGED_HLEN and int.from_bytes(frame[12:14], "big") == ETH_P_8021Q:
        vlan = int.from_bytes(frame[14:16], "big") & 0x0FFF
    return dst, src, vlan


class ForwardingTable:
    """MAC learning table: (MAC, VLAN) -> peer id, 0 meaning local (the TAP).

    Fixed capacity in buckets of 4 entries; an entry is (key, peer, time in
    whole seconds) or None for a free slot.
    """

    BUCKET_SIZE = 4
    _HASH_MULTIPLIER = 0x9E3779B97F4A7C15

    def __init__(self, capacity=8192, max_age=300):
        self.capacity = max(self.BUCKET_SIZE, 1 << (max(capacity, 1) - 1).bit_length())
        self.max_age = max_age
        self._buckets = [[None] * self.BUCKET_SIZE
                         for _ in range(self.capacity // self.BUCKET_SIZE)]

    @staticmethod
    def _key(mac, vlan):
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
        return ((vlan & 0x0FFF) << 48) | int.from_bytes(mac, "big")

    def _bucket_index(self, key):
        mixed = (key * self._HASH_MULTIPLIER) % 2**64
        return (mixed >> 32) & (len(self._buckets) - 1)

    def _bucket(self, mac, vlan):
        key = self._key(mac, vlan)
        return key, self._buckets[self._bucket_index(key)]

    def _expired(self, entry, now_s):
        return now_s - entry[2] > self.max_age

    def learn(self, mac, vlan, peer, now):
        key, bucket = self._bucket(mac, vlan)
        if _is_multicast(mac):
            return
        now_s = int(now)
        bucket[self._slot_for(key, bucket, now_s)] = (key, peer, now_s)

    def _slot_for(self, key, bucket, now_s):
        """The key's own slot (a refresh), else a free one, else an expired
        one, else the one of the bucket's oldest entry."""
        for wanted in (lambda entry: entry is not None and entry[0] == key,
                       lambda entry: entry is None,
                       lambda entry: self._expired(entry, now_s)):
            for i, entry in enumerate(bucket):
                if wanted(entry):
                    return i
        return min(range(self.BUCKET_SIZE), key=lambda i: bucket[i][2])

    def lookup(self, mac, vlan, now):
        key, bucket = self._bucket(mac, vlan)
        for entry in bucket:
            if entry is not None and entry[0] == key:
                return None if self._expired(entry, int(now)) else entry[1]
        return None

    def _remove_where(self, condition):
        removed = 0
        for bucket in self._buckets:
            for i, entry in enumerate(bucket):
                if entry is not None and condition(entry):
                    bucket[i] = None
                    removed += 1
        return removed

    def expire(self, now):
        now_s = int(now)
        return self._remove_where(lambda entry: self._expired(entry, now_s))

    def flush_peer(self, peer):
        return self._remove_where(lambda entry: entry[1] == peer)

    def __len__(self):
        """Entries held, aged ones included until expire() removes them."""
        return sum(entry is not None for bucket in self._buckets for entry in bucket)

    def entries(self, now):
        """Entries held, as (mac, vlan, peer, age in seconds), aged ones included
        until expire() removes them."""
        now_s = int(now)
        return [((key & 0xFFFFFFFFFFFF).to_bytes(6, "big"), key >> 48, peer, now_s - learned)
                for bucket in self._buckets
                for key, peer, learned in filter(None, bucket)]

    def route_from_tap(self, frame, peers_up, now):
        """Learn the source as local; return the peers the frame goes to."""
        dst, src, vlan = _frame_addresses(frame)
        self.learn(src, vlan, 0, now)
        if not _is_multicast(dst):
            peer = self.lookup(dst, vlan, now)
            if peer == 0:
                return []  # hairpin: the destination is behind our own TAP
            if peer is not None and peer in peers_up:
                return [peer]
        return list(peers_up)

    def learn_from_peer(self, frame, src_peer, now):
        """Learn the source of a frame received from `src_peer`."""
        _dst, src, vlan = _frame_addresses(frame)
        self.learn(src, vlan, src_peer, now)


# --- TCP segmentation and coalescing (segments mode, ext/includes/tso.h) ---

_VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_ECN = 0x80
TCP_FIN, TCP_PSH, TCP_ACK, TCP_CWR = 0x01, 0x08, 0x10, 0x80


def _csum(data):
    """The one's-complement sum of data (16-bit big-endian words), folded."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _tcp_pseudo(ip, tcp_len):
    return bytes(ip[12:20]) + bytes((0, 6)) + struct.pack("!H", tcp_len)


def _ipv4_checksummed(ip):
    ihl = (ip[0] & 15) * 4
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", ~_csum(bytes(ip[:ihl])) & 0xFFFF)


def tso_segment(super_frame):
    """The Ethernet frames a TCPv4 super-frame read from the TAP (10-byte
    virtio-net header + Ethernet) is sent as in segments mode: the segments the
    kernel would have put on the wire (tcp_gso_segment), with complete
    checksums; None when it is not cut here (not TCPv4 GSO, a VLAN tag,
    lengths that do not add up, more than TSO_MAX_SPLIT segments: it goes as
    fragments)."""
    super_frame = bytes(super_frame)
    if len(super_frame) < VNET_HDR_LEN + ETH_HLEN:
        return None
    _flags, gso_type, _hdr_len, mss, _start, _offset = _VNET_HDR.unpack_from(super_frame)
    eth = super_frame[VNET_HDR_LEN:]
    n = len(eth)
    if gso_type & ~VIRTIO_NET_HDR_GSO_ECN != VIRTIO_NET_HDR_GSO_TCPV4 or mss == 0:
        return None
    if n < ETH_HLEN + 40 or eth[12:14] != b"\x08\x00":
        return None
    ip = eth[ETH_HLEN:]
    ihl = (ip[0] & 15) * 4
    if ip[0] >> 4 != 4 or ip[9] != 6 or struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:
        return None
    if ihl < 20 or struct.unpack_from("!H", ip, 2)[0] != n - ETH_HLEN or n < ETH_HLEN + ihl + 20:
        return None
    doff = (ip[ihl + 12] >> 4) * 4
    hdr = ETH_HLEN + ihl + doff
    if doff < 20 or hdr >= n:
        return None
    payload = eth[hdr:]
    nseg = -(-len(payload) // mss)
    if nseg > TSO_MAX_SPLIT:
        return None
    ip_id, = struct.unpack_from("!H", ip, 4)
    seq, = struct.unpack_from("!I", ip, ihl + 4)
    frames = []
    for i in range(nseg):
        chunk = payload[i * mss:(i + 1) * mss]
        head = bytearray(eth[:hdr])
        iph = memoryview(head)[ETH_HLEN:]
        tcp = iph[ihl:]
        tcp_len = doff + len(chunk)
        struct.pack_into("!HH", iph, 2, ihl + tcp_len, (ip_id + i) & 0xFFFF)
        _ipv4_checksummed(iph)
        struct.pack_into("!I", tcp, 4, (seq + i * mss) & 0xFFFFFFFF)
        if i + 1 < nseg:
            tcp[13] &= ~(TCP_FIN | TCP_PSH) & 0xFF
        if i > 0:
            tcp[13] &= ~TCP_CWR & 0xFF
        tcp[16:18] = b"\0\0"
        check = ~_csum(_tcp_pseudo(iph, tcp_len) + bytes(tcp) + chunk) & 0xFFFF
        struct.pack_into("!H", tcp, 16, check)
        del iph, tcp
        frames.append(bytes(head) + chunk)
    return frames


def _tso_candidate(frame):
    """(header length, payload) of a plain IPv4/TCP frame that may be
    coalesced (flags ACK or ACK|PSH, no IP options, not a fragment, no
    Ethernet padding, some payload), else None."""
    n = len(frame)
    if n < ETH_HLEN + 40 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[ETH_HLEN:]
    if ip[0] != 0x45 or ip[9] != 6 or struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:
        return None
    if struct.unpack_from("!H", ip, 2)[0] != n - ETH_HLEN:
        return None
    if ip[33] & ~TCP_PSH & 0xFF != TCP_ACK:
        return None
    hdr = ETH_HLEN + 20 + (ip[32] >> 4) * 4
    if hdr < ETH_HLEN + 40 or hdr >= n:
        return None
    return hdr, frame[hdr:]


def _tso_follows(first, frame, hdr, next_seq):
    a, b = first[ETH_HLEN:], frame[ETH_HLEN:]
    return (first[:12] == frame[:12] and a[1] == b[1] and a[6] & 0x40 == b[6] & 0x40
            and a[8] == b[8] and a[12:20] == b[12:20]          # ToS, DF, TTL, addresses
            and a[20:24] == b[20:24]                             # ports
            and struct.unpack_from("!I", b, 24)[0] == next_seq  # adjacent
            and a[28:33] == b[28:33]                             # ACK number, data offset
            and a[33] & ~TCP_PSH & 0xFF == b[33] & ~TCP_PSH & 0xFF
            and a[34:36] == b[34:36]                             # window
            and a[40:hdr - ETH_HLEN] == b[40:hdr - ETH_HLEN])  # options


def _tso_super_frame(chain):
    first, hdr = chain[0][0], chain[0][1]
    payloads = [payload for _, _, payload in chain]
    total = sum(len(p) for p in payloads)
    head = bytearray(first[:hdr])
    ip = memoryview(head)[ETH_HLEN:]
    tcp_len = hdr - ETH_HLEN - 20 + total
    struct.pack_into("!H", ip, 2, 20 + tcp_len)
    _ipv4_checksummed(ip)
    if chain[-1][0][ETH_HLEN + 33] & TCP_PSH:
        ip[33] |= TCP_PSH
    struct.pack_into("!H", ip, 36, _csum(_tcp_pseudo(ip, tcp_len)))   # partial: the kernel finishes it
    del ip
    vnet = _VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hdr,
                          len(payloads[0]), ETH_HLEN + 20, 16)
    return vnet + bytes(head) + b"".join(payloads)


def tso_coalesce(frames):
    """What the receiver writes to the TAP for plain Ethernet frames that
    arrive in this order from one peer: a list of 10-byte virtio-net header +
    Ethernet frame. Consecutive TCP segments of one flow become one TSO
    super-frame (same MACs, ToS, TTL, DF, addresses, ports, ACK number,
    window and options; adjacent sequence numbers; all but the last of the
    first one's size; PSH only on the last; at most TSO_MAX_SEGMENTS and 65535
    bytes of IP); anything else is written as it is, with a zero header."""
    out, chain = [], []   # chain: [(frame, header length, payload)]

    def flush():
        if len(chain) == 1:
            out.append(bytes(VNET_HDR_LEN) + chain[0][0])
        elif chain:
            out.append(_tso_super_frame(chain))
        chain.clear()

    for frame in frames:
        frame = bytes(frame)
        candidate = _tso_candidate(frame)
        if candidate is None:
            flush()
            out.append(bytes(VNET_HDR_LEN) + frame)
            continue
        hdr, payload = candidate
        if chain:
            first, first_hdr, first_payload = chain[0]
            total = sum(len(p) for _, _, p in chain)
            next_seq = (struct.unpack_from("!I", first, ETH_HLEN + 24)[0] + total) & 0xFFFFFFFF
            last_psh = chain[-1][0][ETH_HLEN + 33] & TCP_PSH
            if (last_psh or len(chain) == TSO_MAX_SEGMENTS or hdr != first_hdr
                    or len(payload) > len(first_payload) or total != len(chain) * len(first_payload)
                    or hdr - ETH_HLEN + total + len(payload) > 65535
                    or not _tso_follows(first, frame, hdr, next_seq)):
                flush()
        chain.append((frame, hdr, payload))
    flush()
    return out
