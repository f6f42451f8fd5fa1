"""Wire format version 1 (docs/ARCHITECTURE.md), against the reference and the core.

Datagrams fed to the decoder are built here with `struct` straight from the
spec, so the decoder is never checked only against its own encoder.
"""
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from impls import impl  # noqa: F401  (pytest fixture)

DROP_REASONS = {"short", "bad_magic", "bad_version", "bad_type", "bad_length",
                "bad_fragment", "unknown_peer", "hop_limit"}


def raw_header(type=1, src_peer=1, dst_peer=0, seq=0, hops=0, key_id=0, flags=0,
               magic=0x5746, version=1):
    return struct.pack("!HBBBBHIIQ", magic, version, type, flags, hops, key_id,
                       src_peer, dst_peer, seq)


def raw_record(payload, rflags=0, length=None):
    return struct.pack("!HBB", len(payload) if length is None else length, rflags, 0) + payload


def raw_fragment(total_len, offset, chunk):
    return raw_header(type=2) + struct.pack("!II", total_len, offset) + chunk


def frame(size=100, src="02:00:00:00:00:01", dst="02:00:00:00:00:02"):
    """An Ethernet/IPv4/UDP frame of exactly `size` bytes."""
    headers = Ether(src=src, dst=dst) / IP(src="10.32.0.1", dst="10.32.0.2") / UDP(sport=4000, dport=5000)
    filler = size - len(headers)
    return bytes(headers / Raw(bytes(i % 251 for i in range(filler))))


def vnet_record(ethernet):
    """A record carrying a virtio_net_hdr (GSO TCPv4, NEEDS_CSUM) before the frame."""
    vnet = struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16)
    return (1, vnet + ethernet)


def assert_malformed(impl, data, reason):
    with pytest.raises(impl.MalformedDatagram) as excinfo:
        impl.decode_datagram(data)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.reason == reason


def records_of(impl, datagrams):
    """Records carried by a stream of datagrams, in order, fragments reassembled."""
    reassembler = impl.Reassembler()
    records = []
    for data in datagrams:
        dgram = impl.decode_datagram(data)
        if dgram.type == impl.TYPE_FRAMES:
            records += dgram.records
        else:
            total_len, offset, chunk = dgram.fragment
            payload = reassembler.feed(dgram.src_peer, dgram.seq, total_len, offset, chunk)
            if payload is not None:
                rebuilt = raw_header(type=1, src_peer=dgram.src_peer, seq=dgram.seq) + payload
                records += impl.decode_datagram(rebuilt).records
    assert reassembler.dropped == 0
    return records


def test_constants(impl):
    assert (impl.MAGIC, impl.VERSION, impl.MAX_HOPS) == (0x5746, 1, 16)
    assert (impl.HEADER_LEN, impl.RECORD_HDR_LEN, impl.FRAG_HDR_LEN, impl.VNET_HDR_LEN) == (24, 4, 8, 10)
    assert (impl.TYPE_FRAMES, impl.TYPE_FRAGMENT, impl.TYPE_CONTROL) == (1, 2, 3)
    assert impl.RFLAG_VNET == 1


def test_encode_header_byte_layout(impl):
    header = impl.encode_header(impl.TYPE_FRAGMENT, 0x01020304, 0x05060708, 0x1112131415161718,
                                hops=3, key_id=0x0A0B, flags=0x80)
    assert header == bytes.fromhex("5746 01 02 80 03 0a0b 01020304 05060708 1112131415161718")


def test_encode_header_defaults(impl):
    assert impl.encode_header(impl.TYPE_FRAMES, 7, 9, 5) == raw_header(type=1, src_peer=7, dst_peer=9, seq=5)


@pytest.mark.parametrize("fields", [
    dict(src_peer=1, dst_peer=0, seq=0, hops=0, key_id=0, flags=0),
    dict(src_peer=0xFFFFFFFF, dst_peer=0xFFFFFFFE, seq=2**64 - 1, hops=15, key_id=0xFFFF, flags=0xFF),
    dict(src_peer=42, dst_peer=7, seq=123456789012, hops=1, key_id=0, flags=0x01),
])
def test_header_round_trip(impl, fields):
    data = impl.encode_header(impl.TYPE_CONTROL, **fields) + b"heartbeat"
    dgram = impl.decode_datagram(data)
    assert isinstance(dgram, tuple)
    assert dgram._fields == ("type", "flags", "hops", "key_id", "src_peer", "dst_peer", "seq",
                             "records", "fragment", "control")
    assert dgram.type == impl.TYPE_CONTROL
    assert {name: getattr(dgram, name) for name in fields} == fields
    assert (dgram.records, dgram.fragment, dgram.control) == (None, None, b"heartbeat")


def test_decode_frames(impl):
    first, second = frame(60), frame(1000, src="02:00:00:00:00:03")
    rflags, vnet_payload = vnet_record(frame(200))
    data = (raw_header(type=1, src_peer=3, dst_peer=4, seq=99)
            + raw_record(first) + raw_record(vnet_payload, rflags) + raw_record(second))
    dgram = impl.decode_datagram(data)
    assert (dgram.type, dgram.src_peer, dgram.dst_peer, dgram.seq) == (1, 3, 4, 99)
    assert dgram.records == [(0, first), (rflags, vnet_payload), (0, second)]
    assert (dgram.fragment, dgram.control) == (None, None)


def test_decode_fragment(impl):
    dgram = impl.decode_datagram(raw_fragment(5000, 1400, b"x" * 1368))
    assert dgram.type == impl.TYPE_FRAGMENT
    assert dgram.fragment == (5000, 1400, b"x" * 1368)
    assert (dgram.records, dgram.control) == (None, None)


@pytest.mark.parametrize("data", [
    raw_record(b"\x00" * 14),                                   # the smallest Ethernet frame
    raw_record(b"\x00" * 24, rflags=1),                         # the smallest VNET record
    raw_record(b"\x00" * 65535),                                # the largest record
], ids=["eth-14", "vnet-24", "record-65535"])
def test_decode_accepts_boundary_records(impl, data):
    dgram = impl.decode_datagram(raw_header() + data)
    assert len(dgram.records) == 1


def test_decode_ignores_unknown_flags(impl):
    dgram = impl.decode_datagram(raw_header(flags=0xFF) + raw_record(frame(64)))
    assert dgram.flags == 0xFF and dgram.records == [(0, frame(64))]


def test_decode_accepts_largest_fragment_total(impl):
    assert impl.decode_datagram(raw_fragment(262144, 262143, b"z")).fragment == (262144, 262143, b"z")


VALID_RECORD = raw_record(frame(64))

MALFORMED = [
    ("short", b""),
    ("short", raw_header()[:23]),
    ("bad_magic", raw_header(magic=0x4657) + VALID_RECORD),
    ("bad_magic", raw_header(magic=0) + VALID_RECORD),
    ("bad_version", raw_header(version=0) + VALID_RECORD),
    ("bad_version", raw_header(version=2) + VALID_RECORD),
    ("bad_type", raw_header(type=0) + VALID_RECORD),
    ("bad_type", raw_header(type=4) + VALID_RECORD),
    ("bad_type", raw_header(type=255) + VALID_RECORD),
    ("bad_length", raw_header()),                                          # zero records
    ("bad_length", raw_header() + raw_record(frame(64), length=65)),        # overruns by 1
    ("bad_length", raw_header() + VALID_RECORD + raw_record(frame(64), length=1000)),
    ("bad_length", raw_header() + VALID_RECORD + b"\x00"),                  # trailing bytes
    ("bad_length", raw_header() + VALID_RECORD + b"\x00\x0e\x00"),
    ("bad_length", raw_header() + VALID_RECORD + b"\x00" * 4),             # empty record
    ("bad_length", raw_header() + raw_record(b"\x00" * 13)),               # shorter than Ethernet
    ("bad_length", raw_header() + VALID_RECORD + raw_record(b"\x00" * 13)),
    ("bad_length", raw_header() + raw_record(b"\x00" * 23, rflags=1)),     # VNET record < 24
    ("bad_length", raw_header() + raw_record(b"\x00" * 14, rflags=1)),
    ("bad_fragment", raw_header(type=2) + struct.pack("!II", 100, 0)),     # empty chunk
    ("bad_fragment", raw_header(type=2) + b"\x00\x00\x00\x64\x00"),        # truncated fragment header
    ("bad_fragment", raw_fragment(0, 0, b"a")),
    ("bad_fragment", raw_fragment(262145, 0, b"a")),
    ("bad_fragment", raw_fragment(100, 90, b"a" * 11)),                    # ends past total_len
    ("bad_fragment", raw_fragment(100, 100, b"a")),
    ("bad_fragment", raw_fragment(100, 0xFFFFFFFF, b"a")),                 # offset + chunk overflows u32
]


@pytest.mark.parametrize("reason,data", MALFORMED,
                         ids=[f"{reason}-{i}" for i, (reason, _) in enumerate(MALFORMED)])
def test_decode_rejects(impl, reason, data):
    assert_malformed(impl, data, reason)


def test_malformed_datagram_is_value_error(impl):
    err = impl.MalformedDatagram("bad_magic")
    assert isinstance(err, ValueError) and err.reason == "bad_magic"


def test_encode_packs_small_frames_into_one_datagram(impl):
    records = [(0, frame(60, src=f"02:00:00:00:01:{i:02x}")) for i in range(20)]
    datagrams = impl.encode_datagrams(5, 6, 1000, records, 1472)
    assert len(datagrams) == 1
    dgram = impl.decode_datagram(datagrams[0])
    assert (dgram.type, dgram.src_peer, dgram.dst_peer, dgram.seq) == (impl.TYPE_FRAMES, 5, 6, 1000)
    assert (dgram.hops, dgram.key_id, dgram.flags) == (0, 0, 0)
    assert dgram.records == records
    assert len(datagrams[0]) == 24 + sum(4 + len(p) for _, p in records)


def test_encode_puts_at_most_63_records_in_a_datagram(impl):
    records = [(0, frame(60, src=f"02:00:00:00:03:{i:02x}")) for i in range(130)]
    datagrams = impl.encode_datagrams(1, 2, 0, records, 8972)
    decoded = [impl.decode_datagram(d) for d in datagrams]
    assert [(d.seq, len(d.records)) for d in decoded] == [(0, 63), (1, 63), (2, 4)]
    assert [r for d in decoded for r in d.records] == records


def test_encode_nothing(impl):
    assert impl.encode_datagrams(1, 0, 0, [], 1400) == []


def test_encode_splits_greedily_with_seq_counting_up(impl):
    rng = random.Random(6783)
    records = [(0, frame(rng.randrange(60, 1300), src=f"02:00:00:00:02:{i:02x}")) for i in range(60)]
    max_payload = 1400
    datagrams = impl.encode_datagrams(2, 0, 2**32 - 3, records, max_payload)
    assert len(datagrams) > 1
    decoded = [impl.decode_datagram(d) for d in datagrams]
    assert [d.seq for d in decoded] == list(range(2**32 - 3, 2**32 - 3 + len(datagrams)))
    assert all(d.type == impl.TYPE_FRAMES for d in decoded)
    assert all(len(d) <= max_payload for d in datagrams)
    assert [r for d in decoded for r in d.records] == records
    # Greedy: the first record of each datagram did not fit into the one before.
    for data, following in zip(datagrams, decoded[1:]):
        assert len(data) + 4 + len(following.records[0][1]) > max_payload


def test_encode_record_that_exactly_fits_is_not_fragmented(impl):
    record = (0, frame(1400 - 24 - 4))
    datagrams = impl.encode_datagrams(1, 2, 0, [record], 1400)
    assert len(datagrams) == 1 and len(datagrams[0]) == 1400
    assert impl.decode_datagram(datagrams[0]).records == [record]


def test_encode_records_that_exactly_fill_a_datagram_share_it(impl):
    records = [(0, frame(600)), (0, frame(1400 - 24 - 4 - 604))]
    datagrams = impl.encode_datagrams(1, 2, 0, records + [(0, frame(60))], 1400)
    assert [len(d) for d in datagrams] == [1400, 24 + 4 + 60]
    assert records_of(impl, datagrams) == records + [(0, frame(60))]


def test_encode_fragments_a_big_record(impl):
    big = (0, frame(9000))
    max_payload = 1400
    datagrams = impl.encode_datagrams(7, 8, 41, [big], max_payload)
    decoded = [impl.decode_datagram(d) for d in datagrams]
    assert len(decoded) >= 7
    assert all(d.type == impl.TYPE_FRAGMENT for d in decoded)
    assert all(len(d) <= max_payload for d in datagrams)
    assert {(d.src_peer, d.dst_peer, d.seq) for d in decoded} == {(7, 8, 41)}
    assert {d.fragment[0] for d in decoded} == {4 + 9000}
    offsets = [d.fragment[1] for d in decoded]
    assert offsets == [sum(len(d.fragment[2]) for d in decoded[:i]) for i in range(len(decoded))]
    assert records_of(impl, datagrams) == [big]


def test_encode_record_one_byte_too_big_is_fragmented(impl):
    record = (0, frame(1400 - 24 - 4 + 1))
    datagrams = impl.encode_datagrams(1, 2, 0, [record], 1400)
    assert [impl.decode_datagram(d).type for d in datagrams] == [impl.TYPE_FRAGMENT] * 2
    assert records_of(impl, datagrams) == [record]


def test_encode_keeps_order_around_fragmented_records(impl):
    records = [(0, frame(100)), (0, frame(200)), vnet_record(frame(20000)), (0, frame(300)),
               vnet_record(frame(64000)), vnet_record(frame(5000)), (0, frame(64))]
    datagrams = impl.encode_datagrams(3, 0, 10, records, 1452)
    decoded = [impl.decode_datagram(d) for d in datagrams]
    # One seq per FRAMES datagram and one per fragmented record, counting up.
    seqs = sorted({d.seq for d in decoded})
    assert seqs == list(range(10, 10 + len(seqs)))
    assert [d.seq for d in decoded] == sorted(d.seq for d in decoded)
    assert len(seqs) == 6  # [100, 200], 20000, [300], 64000, 5000, [64]
    assert all(len(d) <= 1452 for d in datagrams)
    assert records_of(impl, datagrams) == records


def test_vnet_records_round_trip(impl):
    records = [vnet_record(frame(1500)), vnet_record(frame(60)), (0, frame(60))]
    datagrams = impl.encode_datagrams(1, 2, 0, records, 8972)
    assert len(datagrams) == 1
    assert impl.decode_datagram(datagrams[0]).records == records


def test_encode_rejects_record_longer_than_length_field(impl):
    with pytest.raises((ValueError, OverflowError)):
        impl.encode_datagrams(1, 2, 0, [(0, bytes(65536))], 1400)


def valid_datagrams(impl):
    frames = impl.encode_datagrams(1, 2, 3, [(0, frame(80)), vnet_record(frame(120)), (0, frame(60))], 1400)
    fragments = impl.encode_datagrams(1, 2, 4, [(0, frame(3000))], 1400)
    control = impl.encode_header(impl.TYPE_CONTROL, 1, 0, 5) + b"hello"
    return frames + fragments + [control]


def test_random_input_decodes_or_raises_malformed(impl):
    """Garbage, truncations and corruptions of valid datagrams never raise anything
    but MalformedDatagram, and what decodes is consistent with its length."""
    rng = random.Random(20240611)
    valid = valid_datagrams(impl)
    cases = []
    for _ in range(1000):
        cases.append(rng.randbytes(rng.randrange(0, 120)))
        cases.append(raw_header(type=rng.randrange(1, 4)) + rng.randbytes(rng.randrange(0, 120)))
        base = rng.choice(valid)
        cases.append(base[:rng.randrange(0, len(base))])
        corrupted = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
        cases.append(bytes(corrupted))
    for data in cases:
        try:
            dgram = impl.decode_datagram(data)
        except impl.MalformedDatagram as err:
            assert err.reason in DROP_REASONS, data
            continue
        if dgram.type == impl.TYPE_FRAMES:
            assert 24 + sum(4 + len(p) for _, p in dgram.records) == len(data)
        elif dgram.type == impl.TYPE_FRAGMENT:
            total_len, offset, chunk = dgram.fragment
            assert 0 < len(chunk) and offset + len(chunk) <= total_len <= 262144
            assert 24 + 8 + len(chunk) == len(data)
        else:
            assert 24 + len(dgram.control) == len(data)
