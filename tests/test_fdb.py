"""Forwarding table and per-frame forwarding rules, against the reference and the core."""
import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from impls import impl  # noqa: F401  (pytest fixture)

A = bytes.fromhex("020000000a0a")
B = bytes.fromhex("020000000b0b")
C = bytes.fromhex("020000000c0c")
BROADCAST = "ff:ff:ff:ff:ff:ff"
HEX_A, HEX_B, HEX_C = (":".join(f"{b:02x}" for b in mac) for mac in (A, B, C))
PEERS_UP = [3, 5, 9]


def udp_frame(src, dst, vlan=None, prio=0):
    eth = Ether(src=src, dst=dst)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan, prio=prio)
    return bytes(eth / IP(src="10.32.0.1", dst="10.32.0.2") / UDP(sport=1, dport=2) / b"payload")


def spec_bucket(mac, vlan, capacity):
    """The bucket of (mac, vlan) by the formula of docs/ARCHITECTURE.md."""
    key = (vlan << 48) | int.from_bytes(mac, "big")
    return ((key * 0x9E3779B97F4A7C15) % 2**64 >> 32) & (capacity // 4 - 1)


def macs_in_one_bucket(count, capacity, vlan=0):
    """`count` unicast MACs that share a bucket, and one MAC of another bucket."""
    rng = random.Random(capacity + vlan)
    candidates = [bytes([0x02]) + rng.randbytes(5) for _ in range(capacity * 4)]
    target = spec_bucket(candidates[0], vlan, capacity)
    same = [mac for mac in candidates if spec_bucket(mac, vlan, capacity) == target]
    other = next(mac for mac in candidates if spec_bucket(mac, vlan, capacity) != target)
    return same[:count], other


def test_learn_and_lookup(impl):
    table = impl.ForwardingTable()
    table.learn(A, 0, 7, 100.0)
    table.learn(B, 0, 0, 100.0)
    assert table.lookup(A, 0, 101.0) == 7
    assert table.lookup(B, 0, 101.0) == 0
    assert table.lookup(C, 0, 101.0) is None
    assert len(table) == 2


def test_defaults(impl):
    table = impl.ForwardingTable()
    assert table.capacity == 8192
    table.learn(A, 0, 1, 0)
    assert table.lookup(A, 0, 300) == 1
    assert table.lookup(A, 0, 301) is None


@pytest.mark.parametrize("mac", [b"", A[:5], A + b"\x00"])
def test_mac_must_be_6_bytes(impl, mac):
    table = impl.ForwardingTable()
    with pytest.raises(ValueError):
        table.learn(mac, 0, 1, 0)
    with pytest.raises(ValueError):
        table.lookup(mac, 0, 0)


def test_learning_again_refreshes_peer_and_time(impl):
    table = impl.ForwardingTable(max_age=300)
    table.learn(A, 0, 7, 0)
    table.learn(A, 0, 9, 250)
    assert len(table) == 1
    assert table.lookup(A, 0, 500) == 9
    assert table.entries(500) == [(A, 0, 9, 250)]


def test_entries(impl):
    table = impl.ForwardingTable()
    table.learn(A, 0, 7, 1000.9)
    table.learn(B, 12, 0, 1010.0)
    assert sorted(table.entries(1020.5)) == [(A, 0, 7, 20), (B, 12, 0, 10)]


def test_time_is_held_in_whole_seconds(impl):
    table = impl.ForwardingTable(max_age=300)
    table.learn(A, 0, 7, 1000.9)
    assert table.lookup(A, 0, 1300.99) == 7
    assert table.lookup(A, 0, 1301.0) is None


def test_aging_and_expire(impl):
    table = impl.ForwardingTable(max_age=300)
    for mac in (A, B):
        table.learn(mac, 0, 1, 0)
    table.learn(C, 0, 2, 200)
    assert table.lookup(A, 0, 400) is None
    assert table.lookup(C, 0, 400) == 2
    assert len(table) == 3  # aged entries stay until expire()
    assert sorted(table.entries(400)) == [(A, 0, 1, 400), (B, 0, 1, 400), (C, 0, 2, 200)]
    assert table.expire(400) == 2
    assert len(table) == 1
    assert table.entries(400) == [(C, 0, 2, 200)]
    assert table.expire(400) == 0
    assert table.expire(501) == 1
    assert len(table) == 0


def test_flush_peer(impl):
    table = impl.ForwardingTable()
    table.learn(A, 0, 1, 0)
    table.learn(B, 5, 1, 0)
    table.learn(C, 0, 2, 0)
    table.learn(C, 5, 0, 0)
    assert table.flush_peer(1) == 2
    assert table.flush_peer(1) == 0
    assert (table.lookup(A, 0, 1), table.lookup(B, 5, 1)) == (None, None)
    assert (table.lookup(C, 0, 1), table.lookup(C, 5, 1)) == (2, 0)
    assert len(table) == 2


def test_vlans_are_distinct_keys(impl):
    table = impl.ForwardingTable()
    table.learn(A, 10, 1, 0)
    table.learn(A, 20, 2, 0)
    assert (table.lookup(A, 10, 0), table.lookup(A, 20, 0), table.lookup(A, 0, 0)) == (1, 2, None)
    assert sorted(table.entries(0)) == [(A, 10, 1, 0), (A, 20, 2, 0)]


@pytest.mark.parametrize("asked,capacity", [(1, 4), (4, 4), (5, 8), (1000, 1024), (8192, 8192)])
def test_capacity_rounds_up_to_a_power_of_two(impl, asked, capacity):
    assert impl.ForwardingTable(capacity=asked).capacity == capacity


@pytest.mark.parametrize("capacity,vlan", [(64, 0), (8192, 0), (8192, 4094)])
def test_full_bucket_replaces_its_oldest_entry(impl, capacity, vlan):
    table = impl.ForwardingTable(capacity=capacity)
    (m0, m1, m2, m3, m4), elsewhere = macs_in_one_bucket(5, capacity, vlan)
    for t, mac in enumerate((m0, m1, m2, m3)):
        table.learn(mac, vlan, 1, 10 + t)
    table.learn(elsewhere, vlan, 1, 14)  # another bucket: evicts nothing
    assert len(table) == 5
    table.learn(m4, vlan, 2, 15)
    assert table.lookup(m0, vlan, 16) is None
    assert [table.lookup(mac, vlan, 16) for mac in (m1, m2, m3, m4, elsewhere)] == [1, 1, 1, 2, 1]
    assert len(table) == 5


def test_refresh_protects_from_replacement(impl):
    table = impl.ForwardingTable(capacity=64)
    (m0, m1, m2, m3, m4), _ = macs_in_one_bucket(5, 64)
    for t, mac in enumerate((m0, m1, m2, m3)):
        table.learn(mac, 0, 1, 10 + t)
    table.learn(m0, 0, 1, 20)
    table.learn(m4, 0, 1, 21)
    assert [table.lookup(mac, 0, 22) for mac in (m0, m1, m2, m3, m4)] == [1, None, 1, 1, 1]


def test_multicast_source_is_not_learned(impl):
    table = impl.ForwardingTable()
    for mac in (bytes.fromhex("01005e000001"), bytes.fromhex("333300000001"), b"\xff" * 6):
        table.learn(mac, 0, 1, 0)
        assert table.lookup(mac, 0, 0) is None
    assert sorted(table.route_from_tap(udp_frame("01:00:5e:00:00:01", HEX_B), PEERS_UP, 0)) == PEERS_UP
    assert len(table) == 0


@pytest.mark.parametrize("frame", [
    bytes(Ether(src=HEX_A, dst=BROADCAST) / ARP(hwsrc=HEX_A, psrc="10.32.0.1", pdst="10.32.0.2")),
    udp_frame(HEX_A, "01:00:5e:00:00:fb"),
    udp_frame(HEX_A, "33:33:00:00:00:01"),
    udp_frame(HEX_A, HEX_B),
], ids=["broadcast-arp", "ipv4-multicast", "ipv6-multicast", "unknown-unicast"])
def test_route_from_tap_floods_to_every_up_peer_once(impl, frame):
    table = impl.ForwardingTable()
    out = table.route_from_tap(frame, PEERS_UP, 0)
    assert sorted(out) == PEERS_UP
    assert table.lookup(A, 0, 0) == 0  # the source is learned as local


def test_flood_without_peers_goes_nowhere(impl):
    assert impl.ForwardingTable().route_from_tap(udp_frame(HEX_A, BROADCAST), [], 0) == []


def test_route_from_tap_to_learned_peer(impl):
    table = impl.ForwardingTable()
    table.learn_from_peer(udp_frame(HEX_B, HEX_A), 5, 0)
    assert table.lookup(B, 0, 0) == 5
    assert table.route_from_tap(udp_frame(HEX_A, HEX_B), PEERS_UP, 1) == [5]


def test_route_from_tap_broadcast_ignores_learned_peers(impl):
    table = impl.ForwardingTable()
    table.learn_from_peer(udp_frame(HEX_B, HEX_A), 5, 0)
    assert sorted(table.route_from_tap(udp_frame(HEX_A, BROADCAST), PEERS_UP, 1)) == PEERS_UP


def test_route_from_tap_to_local_destination_is_dropped(impl):
    table = impl.ForwardingTable()
    assert sorted(table.route_from_tap(udp_frame(HEX_A, HEX_B), PEERS_UP, 0)) == PEERS_UP
    assert table.route_from_tap(udp_frame(HEX_B, HEX_A), PEERS_UP, 1) == []


def test_destination_on_a_down_peer_is_flooded(impl):
    table = impl.ForwardingTable()
    table.learn_from_peer(udp_frame(HEX_B, HEX_A), 4, 0)
    assert sorted(table.route_from_tap(udp_frame(HEX_A, HEX_B), PEERS_UP, 1)) == PEERS_UP


def test_aged_destination_is_flooded(impl):
    table = impl.ForwardingTable(max_age=300)
    table.learn_from_peer(udp_frame(HEX_B, HEX_A), 5, 0)
    assert sorted(table.route_from_tap(udp_frame(HEX_A, HEX_B), PEERS_UP, 301)) == PEERS_UP


def test_vlan_tag_selects_the_table_key(impl):
    table = impl.ForwardingTable()
    table.learn_from_peer(udp_frame(HEX_B, HEX_A, vlan=100, prio=5), 5, 0)
    assert table.entries(0) == [(B, 100, 5, 0)]
    assert table.route_from_tap(udp_frame(HEX_A, HEX_B, vlan=100), PEERS_UP, 0) == [5]
    assert sorted(table.route_from_tap(udp_frame(HEX_A, HEX_B, vlan=200), PEERS_UP, 0)) == PEERS_UP
    assert sorted(table.route_from_tap(udp_frame(HEX_A, HEX_B), PEERS_UP, 0)) == PEERS_UP
    assert sorted((vlan, peer) for mac, vlan, peer, _ in table.entries(0) if mac == A) == \
        [(0, 0), (100, 0), (200, 0)]


def test_learn_from_peer_moves_a_mac(impl):
    table = impl.ForwardingTable()
    table.route_from_tap(udp_frame(HEX_B, BROADCAST), PEERS_UP, 0)
    table.learn_from_peer(udp_frame(HEX_B, HEX_A), 9, 1)
    assert table.route_from_tap(udp_frame(HEX_C, HEX_B), PEERS_UP, 2) == [9]


@pytest.mark.parametrize("length", [0, 1, 13])
def test_frames_shorter_than_ethernet_header_raise(impl, length):
    frame = udp_frame(HEX_A, HEX_B)[:length]
    table = impl.ForwardingTable()
    for call in (lambda: table.route_from_tap(frame, PEERS_UP, 0),
                 lambda: table.learn_from_peer(frame, 5, 0)):
        with pytest.raises(impl.MalformedDatagram) as excinfo:
            call()
        assert excinfo.value.reason == "bad_length"
    assert len(table) == 0


def test_frame_of_exactly_an_ethernet_header_is_forwarded(impl):
    table = impl.ForwardingTable()
    assert sorted(table.route_from_tap(udp_frame(HEX_A, HEX_B)[:14], PEERS_UP, 0)) == PEERS_UP
    assert table.lookup(A, 0, 0) == 0


@pytest.mark.parametrize("length", [14, 16, 17])
def test_frame_too_short_for_its_vlan_tag_counts_as_untagged(impl, length):
    """Not spelled out by the spec: the ethertype says 802.1Q but the frame ends
    before the 18-byte tagged header, so there is no tag to read."""
    table = impl.ForwardingTable()
    table.learn_from_peer(udp_frame(HEX_A, HEX_B, vlan=100)[:length], 5, 0)
    assert table.entries(0) == [(A, 0, 5, 0)]
