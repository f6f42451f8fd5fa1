"""Correctness on every offload path (issue 4): bytes arrive intact with the TAP, UDP GSO
and UDP GRO offloads on and with each one off, small frames mixed with super-frames,
IPv6 and VLAN-tagged inner traffic, a MAC that moves to another peer, two workers.

Real routers in network namespaces (dataplane.testbed); no timing is asserted.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dataplane import testbed

from offload_helpers import (SEQ, Routers, counters, gso_bursts, move_container, moved, numbered_payloads,
                             peer_tx_frames, raw_socket, receive_frame, send_gratuitous_arp, tcp_transfer,
                             udp_send_windows, vlan_frame, wait_established)

pytestmark = pytest.mark.root

PREFIX_BASE = "wfoff"  # namespaces "wfoff<pid>n<k>-h1"...
BULK = 200 << 20
SMALL_BULK = 50 << 20
# On by default on any kernel since 5.0 (TAP USO needs 6.2 and is probed, not expected).
DEFAULT_OFFLOADS = ("tap_csum", "tap_tso", "udp_gso", "udp_gro")


@pytest.fixture(scope="module")
def open_testbed():
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    testbed.remove_leftovers(PREFIX_BASE)

    @contextlib.contextmanager
    def build(**kwargs):
        with testbed.Testbed(prefix=testbed.unique_prefix(PREFIX_BASE), **kwargs) as tb:
            yield tb
        left = tb.leftovers()
        assert not any(left.values()), f"testbed {tb.prefix} left behind {left}"

    return build


@pytest.fixture(scope="module")
def two_hosts(open_testbed):
    """Two hosts, one container each; `.use(*flags)` (re)starts the routers with flags."""
    with open_testbed(hosts=2, containers_per_host=1) as tb:
        yield Routers(tb)


@pytest.fixture
def tb(two_hosts):
    """The two-host testbed with routers on default flags."""
    return two_hosts.use().tb


@pytest.mark.parametrize("flags, turned_off", [
    pytest.param((), (), id="offloads-on"),
    pytest.param(("--no-tap-tso",), ("tap_tso",), id="no-tap-tso"),
    # no TSO (nor USO) without checksum offload
    pytest.param(("--no-tap-csum",), ("tap_csum", "tap_tso", "tap_uso"), id="no-tap-csum"),
    pytest.param(("--no-udp-gso",), ("udp_gso",), id="no-udp-gso"),
    pytest.param(("--no-udp-gro",), ("udp_gro",), id="no-udp-gro"),
])
def test_bulk_tcp_arrives_intact(two_hosts, flags, turned_off):
    tb = two_hosts.use(*flags).tb
    c1, c2 = tb.containers
    h1, h2 = tb.hosts
    for host in tb.hosts:
        offloads = tb.status(host)["offloads"]
        assert not any(offloads[name] for name in turned_off), offloads
        assert all(offloads[name] for name in DEFAULT_OFFLOADS if name not in turned_off), offloads
    before = counters(tb)

    transfer = tcp_transfer(tb, c1, c2, c2.ip4, BULK)

    assert transfer.intact, transfer
    delta = moved(before, counters(tb))
    if "tap_tso" in turned_off:
        assert delta[h1.name]["super_frames_tx"] == 0, delta
    else:  # the sender's kernel handed its router TSO super-frames, carried whole
        assert delta[h1.name]["super_frames_tx"] > 0, delta
        assert delta[h2.name]["super_frames_rx"] > 0, delta


def test_small_udp_datagrams_mixed_with_bulk_tcp_arrive_intact(tb):
    c1, c2 = tb.containers
    payloads = numbered_payloads(1000)
    windows = [[[p] for p in payloads[i:i + 50]] for i in range(0, len(payloads), 50)]
    tcp_started, udp_done = threading.Event(), threading.Event()

    with ThreadPoolExecutor(1) as pool:
        tcp = pool.submit(tcp_transfer, tb, c1, c2, c2.ip4, SMALL_BULK,
                          started=tcp_started, keep_sending=udp_done)
        tcp.add_done_callback(lambda _: tcp_started.set())  # a failed transfer must not keep us waiting
        try:
            tcp_started.wait(60)
            arrived = udp_send_windows(tb, c1, c2, c2.ip4, windows)
        finally:
            udp_done.set()
        transfer = tcp.result()

    assert transfer.intact, transfer
    corrupted = [seq for seq, data in arrived.items() if data != payloads[seq]]
    assert corrupted == []
    assert sorted(arrived) == list(range(len(payloads))), f"{len(payloads) - len(arrived)} datagrams lost"


def test_small_datagrams_of_one_flow_coalesced_intact(tb):
    """Bursts of equal-size datagrams (each window ending with a shorter one) are
    written to the far TAP as UDP GSO super-frames: every payload arrives intact.
    (Not asserted: arrival order. The sending container's veth queues frames on
    the backlog of whichever CPU the sender runs on, which can reorder a burst
    before any router sees it.)"""
    c1, c2 = tb.containers
    h2 = tb.hosts[1]
    windows, seq = [], 0
    for size in (18, 100, 700):
        burst = numbered_payloads(300, min_size=size, max_size=size, seed=size)
        tail = numbered_payloads(1, min_size=SEQ.size, max_size=SEQ.size)
        payloads = [SEQ.pack(seq + i) + p[SEQ.size:] for i, p in enumerate(burst + tail)]
        windows.append([[p] for p in payloads])
        seq += len(payloads)
    expected = {SEQ.unpack_from(p)[0]: p for window in windows for (p,) in window}
    before = counters(tb)

    arrived = udp_send_windows(tb, c1, c2, c2.ip4, windows)

    assert arrived == expected
    if tb.status(h2)["offloads"]["tap_uso"]:
        assert moved(before, counters(tb))[h2.name]["uso_coalesced"] > 0


def test_mtu_sized_frames_travel_in_one_datagram(tb):
    """The overlay MTU is sized so that a full frame fits one underlay datagram, also
    when it carries a virtio-net header for its partial checksum."""
    c1, c2 = tb.containers
    h1 = tb.hosts[0]
    largest, count = tb.overlay_mtu - 28, 100  # IPv4 + UDP headers
    payloads = numbered_payloads(count, min_size=largest, max_size=largest)
    before = counters(tb)

    arrived = udp_send_windows(tb, c1, c2, c2.ip4, [[[p] for p in payloads]])

    assert len(arrived) == count
    delta = moved(before, counters(tb))[h1.name]
    extra_datagrams = delta["udp_tx_datagrams"] - delta["tap_rx_frames"]
    assert extra_datagrams < count // 10, f"frames split into fragments: {delta}"


def test_udp_gso_sends_from_a_container_arrive_segment_by_segment(tb):
    """A container's UDP GSO send reaches the router whole when TAP USO is on."""
    c1, c2 = tb.containers
    h1, h2 = tb.hosts
    bursts = gso_bursts(20, segments=16)
    before = counters(tb)

    arrived = udp_send_windows(tb, c1, c2, c2.ip4, [[burst] for burst in bursts])

    expected = {SEQ.unpack_from(p)[0]: p for burst in bursts for p in burst}
    assert [seq for seq, data in arrived.items() if data != expected[seq]] == []
    assert sorted(arrived) == sorted(expected), f"{len(expected) - len(arrived)} datagrams lost"
    if tb.status(h1)["offloads"]["tap_uso"]:
        delta = moved(before, counters(tb))
        assert delta[h1.name]["super_frames_tx"] >= len(bursts), delta
        assert delta[h2.name]["super_frames_rx"] >= len(bursts), delta


def test_ipv6_inner_traffic(tb):
    c1, c2 = tb.containers
    h1, h2 = tb.hosts
    for src, dst in ((c1, c2), (c2, c1)):
        result = tb.ping(src, dst.ip6)
        assert result.ok, result.output
    before = counters(tb)

    transfer = tcp_transfer(tb, c1, c2, c2.ip6, SMALL_BULK)

    assert transfer.intact, transfer
    delta = moved(before, counters(tb))  # TSO6 super-frames carried whole
    assert delta[h1.name]["super_frames_tx"] > 0 and delta[h2.name]["super_frames_rx"] > 0, delta


def test_vlan_tagged_inner_frames_cross_both_ways(tb):
    """Raw tagged frames: this kernel may lack 802.1Q devices, but a tag is a tag."""
    c1, c2 = tb.containers
    tci = 5 << 13 | 100  # priority 5, VLAN 100: the whole tag must arrive as sent
    with raw_socket(tb, c1) as s1, raw_socket(tb, c2) as s2:
        # payload sizes: the smallest frame (60 bytes), the largest of the MTU
        for size in (42, tb.overlay_mtu - 4, tb.overlay_mtu):
            for (src, out), (dst, into) in (((c1, s1), (c2, s2)), ((c2, s2), (c1, s1))):
                frame = vlan_frame(dst.mac, src.mac, tci, os.urandom(size))
                out.send(frame)
                assert receive_frame(into, src.mac) == frame, f"{size}-byte payload from {src.name}"


@pytest.mark.parametrize("secret", [[], ["--password", "two workers"]], ids=["cleartext", "sealed"])
def test_two_workers_share_parallel_streams_intact(two_hosts, secret):
    """With a secret, the workers of a router draw counters from one per-peer
    counter: nothing is lost to the receiver's replay window either."""
    tb = two_hosts.use("--workers", "2", *secret).tb
    c1, c2 = tb.containers

    transfer = tcp_transfer(tb, c1, c2, c2.ip4, BULK, streams=16)

    assert len(transfer.received) == 16
    assert transfer.intact, transfer
    assert not any(tb.status(h)["drops"][r] for h in tb.hosts for r in ("replayed", "bad_tag", "unknown_key"))
    # 16 flows over 2 TAP queues: all on one would be a 1-in-30000 chance.
    for host in tb.hosts:
        workers = tb.status(host)["workers"]
        assert len(workers) == 2
        assert all(w["tap_rx_frames"] > 0 and w["udp_rx_datagrams"] > 0 for w in workers), workers


def test_traffic_follows_a_mac_that_moves_to_another_peer(open_testbed):
    with open_testbed(hosts=3) as tb:
        h1, h2, h3 = tb.hosts
        c1 = tb.add_container(h1)
        mover = tb.add_container(h2)
        tb.start_routers()
        wait_established(tb)
        result = tb.ping(c1, mover.ip4)
        assert result.ok, result.output

        move_container(tb, mover, h3)
        send_gratuitous_arp(tb, mover)
        to_h2, to_h3 = peer_tx_frames(tb, h1, h2), peer_tx_frames(tb, h1, h3)
        result = tb.ping(c1, mover.ip4, count=5, deadline=5)

        assert result.ok, result.output
        assert peer_tx_frames(tb, h1, h3) - to_h3 >= 5
        assert peer_tx_frames(tb, h1, h2) - to_h2 < 5, "still sending to the MAC's old host"
