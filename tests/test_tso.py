"""Segments mode (issue 13): software TSO of a TAP super-frame into the segments
the kernel would have sent, and the receiver's coalescing of those segments
back into one TSO super-frame; run against the reference and the core."""
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from impls import impl  # noqa: F401  (fixture)

NEEDS_CSUM = 1
GSO_TCPV4, GSO_TCPV6, GSO_ECN = 1, 4, 0x80
MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))]


def payload_of(n, seed=0):
    return bytes((i * 31 + seed) % 251 for i in range(n))


def vnet(gso_size, gso_type=GSO_TCPV4, hdr_len=66, csum_start=34, flags=NEEDS_CSUM):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, 16)


def super_frame(data, mss=1348, flags="PA", ip_id=4000, seq=1000, options=OPTIONS, gso_type=GSO_TCPV4,
                tos=0, ttl=64, sport=40000):
    """A TSO super-frame as the TAP hands it over: a partial TCP checksum
    (the pseudo-header sum) that the segments must not inherit."""
    pkt = (Ether(**MACS) / IP(src="10.32.0.1", dst="10.32.0.2", id=ip_id, flags="DF", tos=tos, ttl=ttl) /
           TCP(sport=sport, dport=5201, seq=seq, ack=777, flags=flags, window=502, options=options) / data)
    raw = bytearray(bytes(pkt))
    raw[14 + 20 + 16:14 + 20 + 18] = b"\x12\x34"   # whatever the kernel left there
    return vnet(mss, gso_type) + bytes(raw)


def kernel_segments(data, mss=1348, flags="PA", ip_id=4000, seq=1000, options=OPTIONS, cwr_first=False):
    """What tcp_gso_segment puts on the wire: ids counting up, sequence numbers
    by MSS, FIN/PSH only on the last, CWR only on the first, fresh checksums."""
    chunks = [data[i:i + mss] for i in range(0, len(data), mss)]
    out = []
    for i, chunk in enumerate(chunks):
        f = flags if i == len(chunks) - 1 else flags.replace("P", "").replace("F", "")
        if cwr_first and i > 0:
            f = f.replace("C", "")
        out.append(bytes(Ether(**MACS) / IP(src="10.32.0.1", dst="10.32.0.2", id=ip_id + i, flags="DF") /
                         TCP(sport=40000, dport=5201, seq=seq + i * mss, ack=777, flags=f, window=502,
                             options=options) / chunk))
    return out


@pytest.mark.parametrize("size, mss", [(64000, 1348), (1349, 1348), (5000, 1000), (100, 1348), (65000, 536)])
def test_segments_are_the_kernels(impl, size, mss):
    data = payload_of(size)
    assert impl.tso_segment(super_frame(data, mss)) == kernel_segments(data, mss)


def test_fin_and_psh_only_on_the_last_cwr_only_on_the_first(impl):
    data = payload_of(4000)
    got = impl.tso_segment(super_frame(data, 1000, flags="FPAC", gso_type=GSO_TCPV4 | GSO_ECN))
    assert got == kernel_segments(data, 1000, flags="FPAC", cwr_first=True)
    assert [TCP in Ether(f) and str(Ether(f)[TCP].flags) for f in got] == ["AC", "A", "A", "FPA"]   # C: CWR


def test_sequence_and_id_wrap_around(impl):
    data = payload_of(3000)
    got = impl.tso_segment(super_frame(data, 1000, ip_id=65535, seq=2**32 - 1500))
    assert [Ether(f)[IP].id for f in got] == [65535, 0, 1]
    assert [Ether(f)[TCP].seq for f in got] == [2**32 - 1500, 2**32 - 500, 500]
    for f in got:   # scapy recomputes the checksums: they must match
        pkt = Ether(f)
        del pkt[IP].chksum, pkt[TCP].chksum
        assert bytes(pkt) == f


@pytest.mark.parametrize("frame", [
    vnet(1348, GSO_TCPV6) + bytes(Ether(**MACS) / IPv6() / TCP() / payload_of(3000)),       # IPv6: fragments
    vnet(1348) + bytes(Ether(**MACS) / Dot1Q(vlan=5) / IP() / TCP() / payload_of(3000)),     # VLAN: fragments
    vnet(1348, 0) + bytes(Ether(**MACS) / IP() / TCP() / payload_of(1000)),                  # not GSO
    vnet(1348, 5) + bytes(Ether(**MACS) / IP() / UDP() / payload_of(3000)),                  # USO
    vnet(0) + bytes(Ether(**MACS) / IP() / TCP() / payload_of(3000)),                        # no segment size
    vnet(1348) + bytes(Ether(**MACS) / IP() / TCP()),                                        # no payload
    vnet(1348) + bytes(Ether(**MACS) / IP() / TCP() / payload_of(3000))[:-5],                # truncated
    vnet(1348) + bytes(Ether(**MACS) / IP(flags="MF") / TCP() / payload_of(3000)),           # a fragment
    vnet(1) + bytes(Ether(**MACS) / IP() / TCP() / payload_of(3000)),                        # too many segments
    vnet(1348)[:6],
    b"",
])
def test_what_is_not_cut_goes_as_fragments(impl, frame):
    assert impl.tso_segment(frame) is None


def test_malformed_header_lengths_are_refused_not_read_past(impl):
    raw = bytearray(super_frame(payload_of(3000)))
    raw[10 + 14] = 0x4F            # IHL 60: the TCP header would lie past the IP header's claims
    assert impl.tso_segment(bytes(raw)[:10 + 14 + 70]) is None
    raw = bytearray(super_frame(payload_of(100)))
    raw[10 + 14 + 32] = 0xF0        # TCP data offset 60 with only 12 bytes of options there
    assert impl.tso_segment(bytes(raw)[:10 + 14 + 20 + 40]) is None


def test_coalesced_segments_rebuild_the_super_frame(impl):
    data = payload_of(60000, seed=3)
    original = super_frame(data)
    segments = impl.tso_segment(original)
    [out] = impl.tso_coalesce(segments)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", out[:10])
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (NEEDS_CSUM, GSO_TCPV4, 66, 1348, 34, 16)
    pkt = Ether(out[10:])
    assert bytes(pkt[TCP].payload) == data
    assert (pkt[IP].len, pkt[IP].id, str(pkt[TCP].flags), pkt[TCP].seq) == (20 + 32 + 60000, 4000, "PA", 1000)
    ip = pkt[IP].copy()
    del ip.chksum
    assert IP(bytes(ip)).chksum == pkt[IP].chksum, "IPv4 header checksum"
    # The TCP checksum is partial: the pseudo-header sum the kernel finishes.
    pseudo = bytes(out[10 + 26:10 + 34]) + struct.pack("!BBH", 0, 6, 32 + 60000)
    words = struct.unpack("!6H", pseudo)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert pkt[TCP].chksum == total
    # Cut again, the super-frame gives the same segments: it is the original one.
    assert impl.tso_segment(out) == segments == impl.tso_segment(original)


def test_out_of_order_segments_are_not_merged(impl):
    segments = kernel_segments(payload_of(5000), 1000)
    order = [0, 1, 3, 2, 4]
    out = impl.tso_coalesce([segments[i] for i in order])
    # 0+1 join; 3 does not follow 1; 2 does not follow 3; 4 does not follow 2... but
    # 3 then 4? 2 breaks it: nothing is joined across a gap.
    rebuilt = b"".join(bytes(Ether(o[10:])[TCP].payload) for o in out)
    assert rebuilt == b"".join(bytes(Ether(segments[i])[TCP].payload) for i in order)
    assert len(out) == 4
    assert struct.unpack_from("<B", out[0], 1)[0] == GSO_TCPV4
    assert all(o[:10] == bytes(10) and o[10:] == segments[i] for o, i in zip(out[1:], order[2:]))


def test_mixed_flows_are_not_merged(impl):
    a = kernel_segments(payload_of(3000), 1000)
    b = [bytes(Ether(f[:14] + f[14:34] + struct.pack("!H", 40001) + f[36:])) for f in a]   # another source port
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2]]
    assert impl.tso_coalesce(mixed) == [bytes(10) + f for f in mixed]


@pytest.mark.parametrize("change", ["ttl", "tos", "df", "window", "ack", "options", "small_then_big",
                                    "psh_in_the_middle", "syn", "ip_options"])
def test_a_difference_ends_the_chain(impl, change):
    data = payload_of(2000)
    first = Ether(kernel_segments(data, 1000, flags="A")[0])
    second = Ether(kernel_segments(data, 1000, flags="A")[1])
    if change == "ttl":
        second[IP].ttl = 63
    elif change == "tos":
        second[IP].tos = 4
    elif change == "df":
        second[IP].flags = 0
    elif change == "window":
        second[TCP].window = 1
    elif change == "ack":
        second[TCP].ack = 778
    elif change == "options":
        second[TCP].options = [("NOP", None), ("NOP", None), ("Timestamp", (12346, 678))]
    elif change == "small_then_big":
        first = Ether(bytes(first)[:-100])
        first[IP].len = None
        first[TCP].chksum = None
    elif change == "psh_in_the_middle":
        first[TCP].flags = "PA"
    elif change == "syn":
        second[TCP].flags = "SA"
    elif change == "ip_options":
        second[IP].options = [b"\x01\x01\x01\x01"]
        second[IP].ihl = None
        second[IP].len = None
    for pkt in (first, second):
        del pkt[IP].chksum, pkt[TCP].chksum
    frames = [bytes(first), bytes(Ether(bytes(second)))]
    assert impl.tso_coalesce(frames) == [bytes(10) + f for f in frames]


def test_at_most_65535_bytes_of_ip_and_64_segments(impl):
    big = kernel_segments(payload_of(100 * 1000), 1000)
    out = impl.tso_coalesce(big)
    assert [struct.unpack_from("<B", o, 1)[0] for o in out] == [GSO_TCPV4, GSO_TCPV4]
    assert [Ether(o[10:])[IP].len for o in out] == [20 + 32 + 64 * 1000, 20 + 32 + 36 * 1000]
    small = kernel_segments(payload_of(1400 * 60), 1400)
    out = impl.tso_coalesce(small)
    assert max(Ether(o[10:])[IP].len for o in out) <= 65535
    assert b"".join(bytes(Ether(o[10:])[TCP].payload) for o in out) == payload_of(1400 * 60)


def test_anything_else_is_written_as_it_is(impl):
    frames = [bytes(Ether(**MACS) / IP() / UDP() / b"x"), b"\x01" * 14, b"short", b"",
              bytes(Ether(**MACS) / IP() / TCP(flags="A")),                  # no payload: a pure ACK
              bytes(Ether(**MACS) / IP() / TCP(flags="A") / b"x") + b"\0" * 10]   # Ethernet padding
    assert impl.tso_coalesce(frames) == [bytes(10) + f for f in frames]


def test_the_loss_flag_rides_in_the_hops_byte(impl):
    body = struct.pack("!HBB", 14, 0, 0) + bytes(Ether(**MACS))[:14]
    header = impl.encode_header(impl.TYPE_FRAMES, 1, 2, 7, hops=impl.FLAG_LOSS | 3)
    assert header[5] == 0x83
    assert impl.decode_datagram(header + body).hops == impl.FLAG_LOSS | 3
