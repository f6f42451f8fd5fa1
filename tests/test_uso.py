"""The headers of a coalesced UDP super-frame (the RX thread's USO writes): the
kernel splits it back into datagrams whose checksums must come out right."""
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

core = pytest.importorskip("dataplane._core", reason="Cython core not built (pip install -e .)")

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_UDP_L4 = 5


def datagram(payload, **ip):
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src="10.32.0.1", dst="10.32.0.2", **ip) / UDP(sport=4000, dport=5000) / payload)


def ones_complement_add(a, b):
    s = a + b
    return (s & 0xffff) + (s >> 16)


def test_headers_of_a_super_frame():
    first = datagram(b"a" * 100, ttl=33, tos=0x10)
    out = core.uso_headers(first, 100, 350)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", out[:10])
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, 42, 100, 34, 6)
    eth = Ether(out[10:])
    assert (eth.src, eth.dst) == ("02:00:00:00:00:01", "02:00:00:00:00:02")
    ip = eth[IP]
    assert (ip.len, ip.ttl, ip.tos, ip[UDP].len) == (20 + 8 + 350, 33, 0x10, 8 + 350)
    checksum = ip.chksum
    del ip.chksum
    assert IP(bytes(ip)).chksum == checksum, "IPv4 header checksum"


@pytest.mark.parametrize("segment, sizes", [(100, [100, 100, 100, 50]), (1400, [1400, 1400]), (18, [18, 7])])
def test_each_segment_gets_the_checksum_it_would_have_alone(segment, sizes):
    payloads = [bytes((i * 7 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    udp = core.uso_headers(datagram(payloads[0]), segment, sum(sizes))[10 + 34:]
    super_len, super_check = struct.unpack("!HH", udp[4:8])
    for payload in payloads:
        # What the kernel does per segment: swap the length in the partial sum,
        # add the UDP header and payload, complement.
        total = ones_complement_add(ones_complement_add(super_check, ~super_len & 0xffff), 8 + len(payload))
        data = udp[:4] + struct.pack("!HH", 8 + len(payload), 0) + payload + b"\0" * (len(payload) % 2)
        for i in range(0, len(data), 2):
            total = ones_complement_add(total, data[i] << 8 | data[i + 1])
        assert (~total & 0xffff or 0xffff) == Ether(datagram(payload))[UDP].chksum, f"{len(payload)}-byte segment"


@pytest.mark.parametrize("frame", [
    datagram(b"x" * 10, flags="MF"),                                   # a fragment
    bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x01" * 4]) / UDP() / b"x"),
    bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / b"tcp?"),     # not UDP
    datagram(b""),                                                      # no payload
    datagram(b"x" * 10) + b"\0" * 4,                                    # Ethernet padding
])
def test_frames_that_are_not_coalesced(frame):
    assert core.uso_headers(frame, 10, 10) is None
