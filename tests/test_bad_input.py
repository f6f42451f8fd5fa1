"""Garbage sent to a router's UDP port from the peer host is dropped, counted by
reason in the status, and does not disturb the overlay. (Datagrams that would
need a session key to be malformed inside are the unit tests' business.)"""
import random
import socket

import pytest

from dataplane import reference, testbed

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def tb(testbed_factory):
    with testbed_factory(hosts=2, containers_per_host=1) as tb:
        tb.start_routers()
        yield tb


def valid_datagram(src_peer, dst_peer, rng):
    frame = bytes.fromhex("ffffffffffff" "027766000001" "88b5") + rng.randbytes(100)
    [datagram] = reference.encode_datagrams(src_peer, dst_peer, rng.randrange(1 << 32),
                                            [(0, frame)], max_payload=1400)
    return reference.seal_datagram(datagram, reference.CIPHER_NONE, rng.randbytes(reference.TOKEN_LEN))


def malformed_datagrams(src_peer, dst_peer):
    """{drop reason: datagrams that must be dropped for it}."""
    rng = random.Random(6783)
    magic = reference.MAGIC.to_bytes(2, "big")

    def random_bytes(n):
        data = rng.randbytes(n)
        return data if data[:2] != magic else b"\0\0" + data[2:]

    def valid():
        return valid_datagram(src_peer, dst_peer, rng)

    return {
        # an empty datagram is short input too
        "short": [b""] + [random_bytes(rng.randrange(1, reference.HEADER_LEN)) for _ in range(20)]
                 + [valid()[:n] for n in (1, 2, 10, reference.HEADER_LEN - 1, reference.HEADER_LEN,
                                          reference.HEADER_LEN + reference.TRAILER_LEN - 1)],
        "bad_magic": [random_bytes(rng.randrange(reference.HEADER_LEN, 1400)) for _ in range(20)],
        "bad_version": [d[:2] + b"\x09" + d[3:] for d in (valid() for _ in range(5))],
        "bad_type": [d[:3] + b"\x09" + d[4:] for d in (valid() for _ in range(5))],
        # well-formed but under no key this router gave out: key id 0, or made up
        "unknown_key": [valid() for _ in range(5)]
                       + [d[:6] + rng.randbytes(2) + d[8:] for d in (valid() for _ in range(10))],
    }


def test_malformed_datagrams_are_dropped_counted_and_harmless(tb):
    h1, h2 = tb.hosts
    c1, c2 = tb.containers
    assert tb.ping(c1, c2.ip4).ok
    target = tb.status(h1)
    sender_id = tb.status(h2)["peer_id"]
    datagrams = malformed_datagrams(sender_id, target["peer_id"])
    drops_before = target["drops"]

    with tb.socket(h2, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for batch in datagrams.values():
            for datagram in batch:
                sock.sendto(datagram, (h1.underlay_ip, testbed.ROUTER_PORT))

    expected = {reason: len(batch) for reason, batch in datagrams.items()}
    moved = {}

    def all_counted():
        drops = tb.status(h1)["drops"]
        moved.update({r: drops.get(r, 0) - drops_before.get(r, 0) for r in expected})
        return all(moved[r] >= n for r, n in expected.items())

    try:
        tb.wait_for(all_counted, what="every malformed datagram counted")
    except TimeoutError:
        pass  # the assertion below shows what was counted
    assert moved == expected
    result = tb.ping(c1, c2.ip4)
    assert result.ok, result.output
    result = tb.ping(c2, c1.ip6)
    assert result.ok, result.output
