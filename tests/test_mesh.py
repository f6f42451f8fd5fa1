"""Three hosts in a full mesh (each router peers with both others), a container on each."""
import itertools
import socket

import pytest

pytestmark = pytest.mark.root

ETHERTYPE = 0x88B5  # IEEE 802 local experimental: nothing in the containers answers it
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
PACKET_OUTGOING = 4  # sll_pkttype of a frame the socket's own interface sent


@pytest.fixture(scope="module")
def mesh(testbed_factory):
    with testbed_factory(hosts=3, containers_per_host=1) as tb:
        tb.start_routers()
        yield tb


def test_every_pair_of_containers_pings(mesh):
    for a, b in itertools.combinations(mesh.containers, 2):
        result = mesh.ping(a, b.ip4, count=2)
        assert result.ok, f"{a.name} -> {b.name}: {result.output}"


def test_broadcast_reaches_every_other_container(mesh):
    sender, *others = mesh.containers
    assert mesh.broadcast_copies(sender, others) == {c.name: 1 for c in others}


class FrameTap:
    """A raw socket on a container's eth0: sends and counts frames of ETHERTYPE by tag."""

    def __init__(self, tb, container):
        self.sock = tb.socket(container, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        self.sock.bind((container.ifname, ETHERTYPE))
        self.sock.setblocking(False)
        self.seen = []

    def send(self, src_mac, dst_mac, tag):
        header = bytes.fromhex(dst_mac.replace(":", "") + src_mac.replace(":", ""))
        self.sock.send(header + ETHERTYPE.to_bytes(2, "big") + tag.encode().ljust(46, b"\0"))

    def count(self, tag):
        """Frames with `tag` received so far (not counting those this interface sent)."""
        try:
            while True:
                frame, address = self.sock.recvfrom(2048)
                if address[2] != PACKET_OUTGOING:
                    self.seen.append(frame[14:].rstrip(b"\0").decode())
        except BlockingIOError:
            pass
        return self.seen.count(tag)

    def close(self):
        self.sock.close()


def test_unknown_unicast_is_flooded_once_then_learned(mesh):
    h1, h2, h3 = mesh.hosts
    c1, c2, c3 = mesh.containers
    # MACs nobody has seen yet, so the first frame is unknown unicast everywhere
    mac_a, mac_b = "02:77:66:00:00:0a", "02:77:66:00:00:0b"
    taps = {c.name: FrameTap(mesh, c) for c in mesh.containers}
    t1, t2, t3 = taps.values()
    sentinels = iter(range(1000))

    def flush_through_c3():
        """A broadcast from c1 behind everything c1 sent: once c3 has it, c3 has all the
        frames of c1 that the overlay delivered to it."""
        tag = f"sentinel-{next(sentinels)}"
        mesh.wait_for(lambda: t1.send(mac_a, BROADCAST_MAC, tag) or t3.count(tag),
                      what=f"{tag} at {c3.name}", interval=0.5)

    try:
        t1.send(mac_a, mac_b, "unknown")
        flush_through_c3()
        mesh.wait_for(lambda: t2.count("unknown"), what="the flooded frame at c2")
        assert t2.count("unknown") == 1
        assert t3.count("unknown") == 1

        # the destination answers: every router on the way learns where mac_b lives
        t2.send(mac_b, mac_a, "reply")
        mesh.wait_for(lambda: t1.count("reply"), what="the reply at c1")

        before = {h.name: mesh.status(h)["counters"] for h in mesh.hosts}
        frames = 50
        for _ in range(frames):
            t1.send(mac_a, mac_b, "unicast")
        mesh.wait_for(lambda: t2.count("unicast") == frames, what="the unicast frames at c2")
        after = {h.name: mesh.status(h)["counters"] for h in mesh.hosts}
        moved = {h: {k: after[h][k] - before[h][k] for k in before[h]} for h in before}

        # None of the 50 is flooded. A container may still send a multicast frame of
        # its own meanwhile (an IPv6 MLD report just after start-up): allow for a few.
        background = frames // 10
        assert moved[h1.name]["flooded_frames"] < background, moved
        # heartbeats (CONTROL datagrams) keep arriving at h3; datagrams with frames do not
        assert moved[h3.name]["udp_rx_datagrams"] - moved[h3.name]["control_rx"] < background, moved
        assert moved[h3.name]["tap_tx_frames"] < background, moved
        flush_through_c3()
        assert t3.count("unicast") == 0
        assert t3.count("reply") == 0
        assert t2.count("unicast") == frames  # and none twice
    finally:
        for tap in taps.values():
            tap.close()
