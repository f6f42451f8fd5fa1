"""Micro-benchmarks of the core stages, reference against Cython core.

    python3 -m pytest bench/ --benchmark-only -q

Each benchmark sets a group named after the stage, so pytest-benchmark prints the
two implementations of a stage side by side. The assertions only check that a
stage did its job (a broken stage must not look fast); they never check a time.
"""
import pytest

# Short rounds keep the whole suite well under a minute on 2 shared cores.
pytestmark = pytest.mark.benchmark(max_time=0.2, min_rounds=5)

MAX_PAYLOAD = 1500 - 20 - 8  # UDP payload on a 1500-byte IPv4 underlay
OVERLAY_MTU = 1414
SRC_PEER, DST_PEER, OTHER_PEER = 1, 2, 3
NOW = 1000.0
LOCAL_MAC = bytes.fromhex("02000000aa01")
REMOTE_MAC = bytes.fromhex("02000000bb02")
UNKNOWN_MAC = bytes.fromhex("02000000cc03")


def ethernet_frame(dst, src, size):
    """An IPv4 Ethernet frame of `size` bytes (headers + filler)."""
    return dst + src + b"\x08\x00" + bytes(range(256)) * (size // 256) + bytes(size % 256 - 14)


FRAME_SIZES = {
    "udp64": 14 + 20 + 8 + 64,  # a 64-byte UDP payload, as in `weavefast bench`
    "mtu": 14 + OVERLAY_MTU,  # a full-size TCP segment
}
SUPER_FRAME = 64 * 1024 - 100  # a TSO super-frame with its virtio-net header, as one record


@pytest.fixture(params=list(FRAME_SIZES))
def frame(request):
    return ethernet_frame(REMOTE_MAC, LOCAL_MAC, FRAME_SIZES[request.param])


def test_encap_one_frame(benchmark, impl, frame):
    benchmark.group = f"encap one frame of {len(frame)} B"
    datagrams = benchmark(impl.encode_datagrams, SRC_PEER, DST_PEER, 0, [(0, frame)], MAX_PAYLOAD)
    assert len(datagrams) == 1 and datagrams[0].endswith(frame)


def test_encap_batch_of_64(benchmark, impl, frame):
    benchmark.group = f"encap a batch of 64 frames of {len(frame)} B"
    records = [(0, frame)] * 64
    datagrams = benchmark(impl.encode_datagrams, SRC_PEER, DST_PEER, 0, records, MAX_PAYLOAD)
    assert sum(len(d) for d in datagrams) == 64 * (len(frame) + impl.RECORD_HDR_LEN) \
        + len(datagrams) * impl.HEADER_LEN


def test_decap(benchmark, impl, frame):
    """One datagram, as full as it gets: one MTU frame, or as many small frames as fit."""
    datagram = impl.encode_datagrams(SRC_PEER, DST_PEER, 0, [(0, frame)] * 64, MAX_PAYLOAD)[0]
    benchmark.group = f"decap a datagram of {len(frame)} B frames"
    decoded = benchmark(impl.decode_datagram, datagram)
    assert decoded.records and all(payload == frame for _, payload in decoded.records)


@pytest.fixture
def table(impl):
    """A forwarding table holding 1000 remote MACs besides the one looked up."""
    fdb = impl.ForwardingTable()
    for i in range(1000):
        fdb.learn(b"\x02\x01" + i.to_bytes(4, "big"), 0, OTHER_PEER, NOW)
    fdb.learn(REMOTE_MAC, 0, DST_PEER, NOW)
    return fdb


@pytest.mark.parametrize("outcome", ["hit", "miss"])
def test_fdb_lookup(benchmark, impl, table, outcome):
    benchmark.group = f"forwarding table lookup, {outcome}"
    mac = REMOTE_MAC if outcome == "hit" else UNKNOWN_MAC
    peer = benchmark(table.lookup, mac, 0, NOW)
    assert peer == (DST_PEER if outcome == "hit" else None)


@pytest.mark.parametrize("outcome", ["hit", "miss"])
def test_route_from_tap(benchmark, impl, table, outcome):
    """The per-frame decision for a frame read from the TAP: learned destination
    (one peer) or unknown destination (flood to every peer up)."""
    benchmark.group = f"route a frame from the TAP, {outcome}"
    dst = REMOTE_MAC if outcome == "hit" else UNKNOWN_MAC
    frame = ethernet_frame(dst, LOCAL_MAC, FRAME_SIZES["mtu"])
    peers = benchmark(table.route_from_tap, frame, [DST_PEER, OTHER_PEER], NOW)
    assert peers == ([DST_PEER] if outcome == "hit" else [DST_PEER, OTHER_PEER])


def super_frame_record(impl):
    return (impl.RFLAG_VNET, bytes(impl.VNET_HDR_LEN) + ethernet_frame(REMOTE_MAC, LOCAL_MAC, SUPER_FRAME))


def test_fragment_split(benchmark, impl):
    benchmark.group = "split a 64 KB super-frame into fragments"
    record = super_frame_record(impl)
    fragments = benchmark(impl.encode_datagrams, SRC_PEER, DST_PEER, 0, [record], MAX_PAYLOAD)
    # Before sealing: each datagram leaves room for its trailer.
    assert len(fragments) > 40 and all(len(f) + impl.TRAILER_LEN <= MAX_PAYLOAD for f in fragments)


def test_reassembly(benchmark, impl):
    benchmark.group = "reassemble a 64 KB super-frame from fragments"
    record = super_frame_record(impl)
    fragments = [impl.decode_datagram(d).fragment
                 for d in impl.encode_datagrams(SRC_PEER, DST_PEER, 0, [record], MAX_PAYLOAD)]
    reassembler = impl.Reassembler()
    msgs = iter(range(1 << 32))

    def reassemble():
        msg = next(msgs)  # a new message id each round, as on the wire
        for _msg, total_len, offset, chunk in fragments:
            whole = reassembler.feed(SRC_PEER, msg, total_len, offset, chunk)
        return whole

    payload = benchmark(reassemble)
    assert impl.decode_datagram(impl.encode_header(impl.TYPE_FRAMES, SRC_PEER, 0, 0) + payload) \
        .records == [record]
    assert reassembler.dropped == 0


SEAL_DATAGRAM_LEN = 1400  # before sealing; 1416 bytes on the wire
CIPHERS = {"aes-256-gcm": ("CIPHER_AES_256_GCM", bytes(range(32))),
           "chacha20-poly1305": ("CIPHER_CHACHA20_POLY1305", bytes(range(32))),
           "none": ("CIPHER_NONE", bytes(range(16)))}


@pytest.fixture(params=list(CIPHERS))
def cipher(request, impl):
    """(cipher, key, a FRAMES datagram of SEAL_DATAGRAM_LEN bytes before sealing)."""
    name, key = CIPHERS[request.param]
    record = ethernet_frame(REMOTE_MAC, LOCAL_MAC,
                            SEAL_DATAGRAM_LEN - impl.HEADER_LEN - impl.RECORD_HDR_LEN)
    datagram = impl.encode_datagrams(SRC_PEER, DST_PEER, 12345, [(0, record)], 1500)[0]
    assert len(datagram) == SEAL_DATAGRAM_LEN
    return request.param, getattr(impl, name), key, datagram


def test_seal(benchmark, impl, cipher):
    name, cipher_id, key, datagram = cipher
    benchmark.group = f"seal a {SEAL_DATAGRAM_LEN} B datagram, {name}"
    sealed = benchmark(impl.seal_datagram, datagram, cipher_id, key)
    assert len(sealed) == len(datagram) + impl.TRAILER_LEN
    assert impl.open_datagram(sealed, cipher_id, key) == datagram


def test_open(benchmark, impl, cipher):
    name, cipher_id, key, datagram = cipher
    benchmark.group = f"open a {SEAL_DATAGRAM_LEN} B datagram, {name}"
    sealed = impl.seal_datagram(datagram, cipher_id, key)
    opened = benchmark(impl.open_datagram, sealed, cipher_id, key)
    assert opened == datagram
