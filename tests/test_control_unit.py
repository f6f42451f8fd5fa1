"""Control plane without root: protocol, routing, and several ControlPlanes in
one process talking over real loopback TCP and UDP sockets.

FakeDataplane stands in for the facade (the real one needs root and a TAP):
its CONTROL datagrams are real UDP datagrams with the real wire header, sealed
and opened with the session keys through the pure-Python reference (replay
window included); the forwarding levers (add_peer, set_route...) are recorded. tests/test_control_netns.py
runs the same control plane on the real dataplane.
"""
import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dataplane import reference
from dataplane.engine import CIPHERS
from dataplane.control import ControlConfig, ControlPlane, cli, messages, protocol
from dataplane.control.errors import ProtocolError
from dataplane.control.liveness import probe_target
from dataplane.control.mesh import ESTABLISHED, FAILED, backoff_delay
from dataplane.control.routing import next_hops
from dataplane.control.status import StatusServer


class FakeDataplane:
    """The facade's control-plane levers over a loopback UDP socket."""

    def __init__(self, peer_id, port=0):
        self.peer_id = peer_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.peers = {}  # peer id -> {"address", "up", "via"}
        self.silent = False  # drop everything sent and received, like a dead data path
        self.blocked = set()  # peer ids whose datagrams are dropped both ways
        self.sent = self.received = 0
        self.rx_keys = {}  # key id -> (peer id, cipher, key, replay window)
        self.tx_keys = {}  # peer id -> (key id, cipher, key)
        self.counter = 0

    def close(self):
        self.sock.close()

    @property
    def control_fd(self):
        return self.sock.fileno()

    def add_peer(self, peer_id, host, port):
        assert peer_id not in self.peers, "add_peer twice"
        self.peers[peer_id] = {"address": (host, port), "up": True, "via": None}

    def remove_peer(self, peer_id):
        del self.peers[peer_id]

    def set_peer_address(self, peer_id, host, port):
        self.peers[peer_id]["address"] = (host, port)

    def set_peer_up(self, peer_id, up):
        self.peers[peer_id]["up"] = up

    def set_peer_loss_reports(self, peer_id, understood):
        self.peers[peer_id]["loss_reports"] = understood

    def set_route(self, dst_peer, via_peer):
        assert via_peer is None or via_peer in self.peers
        self.peers[dst_peer]["via"] = via_peer

    def install_rx_key(self, peer_id, cipher, key):
        key_id = len(self.rx_keys) + 1 + sum(1 for _ in self.tx_keys)
        self.rx_keys[key_id] = (peer_id, CIPHERS[cipher], key, reference.ReplayWindow())
        return key_id

    def remove_rx_key(self, key_id):
        return self.rx_keys.pop(key_id, None) is not None

    def set_tx_key(self, peer_id, key_id, cipher, key):
        self.tx_keys[peer_id] = (key_id, CIPHERS[cipher], key)

    def send_control(self, payload, peer_id):
        if peer_id not in self.tx_keys:
            raise ConnectionError(f"no session with peer {peer_id} yet")
        if self.silent or peer_id in self.blocked:
            return
        key_id, cipher, key = self.tx_keys[peer_id]
        self.counter += 1
        header = reference.encode_header(reference.TYPE_CONTROL, self.peer_id, peer_id, self.counter,
                                         key_id=key_id)
        self.sock.sendto(reference.seal_datagram(header + payload, cipher, key), self.peers[peer_id]["address"])
        self.sent += 1

    def recv_control(self):
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                data, address = self.sock.recvfrom(2048)
                entry = self.rx_keys.get(int.from_bytes(data[6:8], "big"))
                if entry is None or self.silent or entry[0] in self.blocked:
                    continue
                peer_id, cipher, key, window = entry
                with contextlib.suppress(reference.MalformedDatagram):
                    datagram = reference.decode_datagram(reference.open_datagram(data, cipher, key))
                    if window.update(datagram.counter):
                        messages.append((peer_id, address, datagram.control))
                        self.received += 1
        return messages

    def counters(self):
        return {"udp_rx_datagrams": self.received, "udp_tx_datagrams": self.sent}

    def drops(self):
        return {"bad_magic": 0}

    def peer_counters(self):
        return {pid: {"tx_frames": self.sent, "rx_frames": self.received} for pid in self.peers}

    def peer_segments(self):
        return {pid: {"segments": False, "loss_reported": False} for pid in self.peers}

    segments_mode = "auto"

    def fdb_size(self):
        return 0

    def status_offloads(self):
        return {"udp_gso": False}


class Node:
    """A ControlPlane on a FakeDataplane; its control port is its UDP port unless given."""

    def __init__(self, name, peer_id, peers=(), udp_port=0, control_port=None, **options):
        self.dp = FakeDataplane(peer_id, udp_port)
        options = {"down_after": 1.0, "backoff_initial": 0.1, "backoff_max": 0.4, **options}
        self.cp = ControlPlane(self.dp, ControlConfig(
            name, peer_id, port=control_port or self.dp.port,
            peers=[f"127.0.0.1:{p.cp.config.port}" for p in peers], listen_host="127.0.0.1", **options))

    def peer(self, name):
        return next((p for p in self.cp.status()["peers"] if p["name"] == name), None)

    def state(self, name):
        peer = self.peer(name)
        return peer and peer["state"]


@contextlib.asynccontextmanager
async def running(*nodes):
    started = []
    try:
        for node in nodes:
            await node.cp.start()
            started.append(node)
        yield nodes
    finally:
        for node in started:
            await node.cp.stop()
        for node in nodes:
            node.dp.close()


async def until(condition, what, timeout=10.0):
    """Waits for a condition; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout} s: {what}")
        await asyncio.sleep(0.02)


def free_tcp_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def run(coro):
    return asyncio.run(coro)


# Protocol.

def test_messages_are_length_prefixed_json_and_oversized_ones_are_refused():
    async def scenario():
        reader = asyncio.StreamReader()
        frame = protocol.encode_message({"type": "gossip", "peers": []})
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        assert json.loads(frame[4:]) == {"type": "gossip", "peers": []}
        reader.feed_data(frame + (protocol.MAX_MESSAGE + 1).to_bytes(4, "big"))
        assert await protocol.read_message(reader) == {"type": "gossip", "peers": []}
        with pytest.raises(protocol.ProtocolError, match="exceeds"):
            await protocol.read_message(reader)
        reader = asyncio.StreamReader()
        reader.feed_data(b"\0\0\0\x05[1,2]")
        with pytest.raises(protocol.ProtocolError, match="string 'type'"):
            await protocol.read_message(reader)
    run(scenario())


def test_version_negotiation_picks_the_highest_common_version():
    assert protocol.negotiate_version((1, 3), (2, 5)) == 3
    assert protocol.negotiate_version((1, 1), (1, 4)) == 1
    assert protocol.negotiate_version((1, 1), (2, 3)) is None


@pytest.mark.parametrize("n", [2, 3, 5, 64])
def test_each_round_every_member_is_probed_by_exactly_one_other(n):
    members = sorted(random.sample(range(1, 2**32), n))
    for round_number in range(2 * n):
        targets = [probe_target(members, me, round_number) for me in members]
        assert sorted(targets) == members
        assert all(t != me for t, me in zip(targets, members))
    # over n - 1 rounds a router probes every other member once
    me = members[0]
    assert sorted(probe_target(members, me, k) for k in range(n - 1)) == members[1:]
    assert probe_target([me], me, 7) is None


def test_sync_digests_are_checked():
    digest = {"type": "sync", "links": [[7, 12]], "announced": [[7, 3], [9, 0]], "known": [7, 9]}
    assert messages.check_sync(digest) == ({7: 12}, {7: 3, 9: 0}, {7, 9})
    for bad, error in [({"known": [0]}, "sync: known must be peer ids"),
                       ({"links": [[7]]}, "sync: links must be [peer id, version] pairs"),
                       ({"links": [[7, -1]]}, "sync: links must be [peer id, version] pairs"),
                       ({"announced": [[7, 1]] * 1025}, "sync: announced must be a list of at most 1024"),
                       ({"known": "7"}, "sync: known must be a list")]:
        with pytest.raises(ProtocolError, match=re.escape(error)):
            messages.check_sync({**digest, **bad})
    assert messages.check_suspect({"type": "suspect", "peer_id": 5}) == 5
    with pytest.raises(ProtocolError, match="suspect"):
        messages.check_suspect({"type": "suspect", "peer_id": "5"})


def test_heartbeats_decode_and_anything_else_is_refused():
    ping = protocol.encode_heartbeat(protocol.PING, 7, 12.5)
    assert protocol.decode_heartbeat(ping) == (protocol.PING, 7, 12.5)
    assert protocol.decode_heartbeat(ping[:-1]) is None
    assert protocol.decode_heartbeat(b"WFHX" + ping[4:]) is None
    assert protocol.decode_heartbeat(ping[:4] + b"\x09" + ping[5:]) is None


def test_backoff_doubles_up_to_the_cap_with_jitter_below_it():
    for _ in range(20):
        delays = [backoff_delay(n, 0.5, 4) for n in range(1, 7)]
        assert all(0.75 * full <= d <= full for d, full in zip(delays, [0.5, 1, 2, 4, 4, 4]))
    assert len({backoff_delay(6, 0.5, 4) for _ in range(10)}) > 1  # routers do not redial in step


# Routing.

def test_shortest_paths_relay_across_a_partial_mesh():
    # 1-2, 2-3, 3-4, 2-4; 1 and 3 cannot reach each other.
    links = {1: {2}, 2: {1, 3, 4}, 3: {2, 4}, 4: {2, 3}}
    assert next_hops(1, links) == {2: (2, 1), 3: (2, 2), 4: (2, 2)}
    assert next_hops(3, links) == {2: (2, 1), 4: (4, 1), 1: (2, 2)}


def test_routing_ignores_links_only_one_end_reports():
    # 3 still claims a link to 4, which no longer reports it (4 went down).
    links = {1: {2}, 2: {1, 3}, 3: {2, 4}, 4: set()}
    assert next_hops(1, links) == {2: (2, 1), 3: (2, 2)}
    assert next_hops(1, {1: set(), 2: {1}}) == {}


# Mesh over loopback.

def test_joining_through_one_peer_meets_the_whole_mesh():
    async def scenario():
        a = Node("a", 1)
        b, c, d = Node("b", 2, [a]), Node("c", 3, [a]), Node("d", 4, [a])
        async with running(a, b, c, d):
            nodes = {"a": a, "b": b, "c": c, "d": d}
            await until(lambda: all(n.state(o) == ESTABLISHED for m, n in nodes.items()
                                    for o in nodes if o != m), "full mesh of 4")
            await until(lambda: {r["name"]: r["via"] for r in b.cp.status()["routes"]}
                        == {"a": 1, "c": 3, "d": 4}, "b's routes direct to everyone")
            assert all(p["up"] and p["via"] is None for p in b.dp.peers.values())
            assert b.peer("c")["endpoint"] == f"127.0.0.1:{c.dp.port}"
            # One control connection per pair even though both ends dialled.
            assert all(len([p for p in n.cp.peers if p.conn]) == 3 for n in nodes.values())
    run(scenario())


def test_idle_mesh_sends_deltas_only_and_a_digest_exchange_repairs_what_was_missed():
    async def scenario():
        a, b, c = Node("a", 1), Node("b", 2), Node("c", 3)
        b.cp.config.peers = c.cp.config.peers = [f"127.0.0.1:{a.cp.config.port}"]
        async with running(a, b, c):
            nodes = {"a": a, "b": b, "c": c}
            await until(lambda: all(n.state(o) == ESTABLISHED for m, n in nodes.items()
                                    for o in nodes if o != m), "full mesh of 3")
            a.cp.announce("ipam", {"10.32.0.0/12": [{"range": "10.32.1.0/24", "since": 1.5}]})
            await until(lambda: "ipam" in c.cp.announced[1]["data"], "a's announcement at c")
            connection = c.cp._by_id(1).conn
            del c.cp.announced[1]  # as if c had missed it
            c.cp._next_sync = 0  # the next round asks a random peer for a digest exchange
            await until(lambda: "ipam" in c.cp.announced.get(1, {}).get("data", {}),
                        "c got it back from a digest exchange")
            assert c.cp._by_id(1).conn is connection and c.state("a") == ESTABLISHED
    run(scenario())


def test_announcements_travel_through_gossip_and_one_peers_would_refuse_stays_home(caplog):
    ranges = {"10.32.0.0/12": [{"range": "10.32.1.0/24", "since": 1.5}]}

    async def scenario():
        a = Node("a", 1)
        b, c = Node("b", 2, [a]), Node("c", 3, [a])
        async with running(a, b, c):
            b.cp.announce("ipam", ranges)
            b.cp.announce("dns", [{"names": ["web"], "ip": "10.32.1.2", "subnet": "10.32.0.0/12"}])
            await until(lambda: c.cp.announcements("ipam") == {"b": ranges}
                        and c.cp.announcements("dns"), "b's ranges and names at c, through a")
            a.cp.announce("dns", [{"names": ["web"], "ip": "not an address"}])
            await asyncio.sleep(0.2)
            assert set(c.cp.announcements("dns")) == {"b"}
            assert all(n.state(o) == ESTABLISHED for n in (a, b) for o in ("c",))
    run(scenario())
    assert "not announced, other routers would refuse it: gossip announcement: dns: ip must be an " \
        "IPv4 address, got 'not an address'" in caplog.text


def announcement(**data):
    return {"type": "gossip", "peers": [], "links": [],
            "announced": [{"peer_id": 2, "name": "b", "version": 1, "data": data}]}


@pytest.mark.parametrize("data, reason", [
    ({"ipam": []}, "gossip announcement: ipam must be an object of at most 64 subnets"),
    ({"ipam": {f"10.{i}.0.0/16": [] for i in range(65)}}, "at most 64 subnets"),
    ({"ipam": {"10.32.0.0/33": []}}, "ipam: a subnet must be an IPv4 subnet in CIDR form, got '10.32.0.0/33'"),
    ({"ipam": {"fd00::/64": []}}, "must be an IPv4 subnet in CIDR form, got 'fd00::/64'"),
    ({"ipam": {"10.32.0.0/12": [{"range": "10.32.0.0/24"}] * 65}}, "list of at most 64 ranges"),
    ({"ipam": {"10.32.0.0/12": [{"range": "10.64.0.0/24", "since": 0}]}},
     "range '10.64.0.0/24' is not inside 10.32.0.0/12"),
    ({"ipam": {"10.32.0.0/12": [{"range": "10.32.0.0/24"}]}}, "gossip announcement: ipam without 'since'"),
    ({"ipam": {"10.32.0.0/12": [{"range": "10.32.0.0/24", "since": True}]}}, "since must be a time in seconds"),
    ({"dns": {}}, "gossip announcement: dns must be a list of at most 4096 records"),
    ({"dns": [{"names": ["a"], "ip": "10.0.0.1"}] * 4097}, "at most 4096 records"),
    ({"dns": [{"names": [], "ip": "10.0.0.1"}]}, "names must be 1 to 16 names"),
    ({"dns": [{"names": ["x" * 254], "ip": "10.0.0.1"}]}, "of at most 253 characters"),
    ({"dns": [{"names": ["a"], "ip": "fd00::1"}]}, "dns: ip must be an IPv4 address, got 'fd00::1'"),
    ({"dns": [{"names": ["a"], "ip": "10.0.0.1", "subnet": 5}]}, "dns: subnet must be an IPv4 subnet"),
])
def test_bad_announcements_are_refused_with_the_field(data, reason):
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        messages.check_gossip(announcement(**data))


def test_announcements_keep_the_known_keys_and_older_routers_send_none():
    record = {"names": ["web"], "ip": "10.32.1.2", "subnet": None}
    *_, announced = messages.check_gossip(announcement(dns=[record], future={"x": 1}))
    assert announced == [(2, "b", 1, {"dns": [record]})]
    assert messages.check_gossip({"type": "gossip", "peers": [], "links": []})[2] == []
    with pytest.raises(ProtocolError, match="gossip announcement: data must be an object"):
        messages.check_gossip({"type": "gossip", "peers": [], "links": [],
                               "announced": [{"peer_id": 2, "name": "b", "version": 1, "data": []}]})


def test_wrong_secret_is_refused_on_both_sides(caplog):
    async def scenario():
        a = Node("a", 1, password=b"right")
        b = Node("b", 2, [a], password=b"wrong")
        async with running(a, b):
            await until(lambda: b.cp.peers[0].last_error, "b tried a")
            assert b.cp.peers[0].state == FAILED
            # The client proves itself first, so the server is the one to find out and say.
            error = b.cp.peers[0].last_error
            assert error.startswith(f"refused by 127.0.0.1:{a.cp.config.port}: ") and error.endswith(
                "wrong network secret: b (peer id 2) failed authentication (its --password/--key-file "
                "differs from a's)")
            await until(lambda: "refused: wrong network secret: b (peer id 2) failed authentication"
                        in caplog.text, "a logged why")
            assert not a.cp.peers and not a.dp.peers
    with caplog.at_level(logging.WARNING, logger="weavefast.control"):
        run(scenario())


def test_a_secret_on_one_side_only_is_refused(caplog):
    async def scenario():
        a = Node("a", 1, password=b"s3cret")
        b = Node("b", 2, [a])
        async with running(a, b):
            await until(lambda: b.cp.peers[0].last_error, "b tried a")
            assert b.cp.peers[0].last_error == ("refused: a (peer id 1) requires a network secret "
                                                "but b has none (--password/--key-file)")
            await until(lambda: "refused: a requires a network secret but b (peer id 2) has none"
                        in caplog.text, "a logged why")
    with caplog.at_level(logging.WARNING, logger="weavefast.control"):
        run(scenario())


def test_version_mismatch_names_both_ranges(caplog):
    async def scenario():
        a = Node("a", 1)
        b = Node("b", 2, [a], versions=(4, 5))
        async with running(a, b):
            await until(lambda: b.cp.peers[0].last_error, "b tried a")
            assert b.cp.peers[0].state == FAILED
            assert b.cp.peers[0].last_error == ("refused: protocol version mismatch: b speaks "
                                                "version 4-5, a (peer id 1) speaks version 2-3")
            await until(lambda: "refused: protocol version mismatch: a speaks version 2-3, "
                        "b (peer id 2) speaks version 4-5" in caplog.text, "a logged why")
    with caplog.at_level(logging.WARNING, logger="weavefast.control"):
        run(scenario())


def test_the_same_secret_establishes_and_a_silent_peer_is_declared_down_then_heals():
    async def scenario():
        a = Node("a", 1, password=b"s3cret")
        b = Node("b", 2, [a], password=b"s3cret")
        async with running(a, b):
            await until(lambda: a.state("b") == ESTABLISHED, "a-b established")
            assert a.peer("b")["rtt_ms"] is not None
            b.dp.silent = True  # the data path dies, TCP still answers
            await until(lambda: a.state("b") != ESTABLISHED, "b declared down")
            assert "no answer to data-path probes, silent for" in a.peer("b")["last_error"]
            assert a.dp.peers[2]["up"] is False
            b.dp.silent = False
            await until(lambda: a.state("b") == ESTABLISHED and b.state("a") == ESTABLISHED,
                        "a-b established again")
            assert a.dp.peers[2]["up"] is True
    run(scenario())


def test_a_stopped_router_fails_and_a_restarted_one_rejoins():
    async def scenario():
        a = Node("a", 1)
        b = Node("b", 2, [a])
        async with running(a):
            async with running(b):
                await until(lambda: a.state("b") == ESTABLISHED, "a-b established")
            await until(lambda: a.state("b") == FAILED, "b failed")
            assert a.peer("b")["last_error"]
            async with running(Node("b", 2, [a], udp_port=b.dp.port)):
                await until(lambda: a.state("b") == ESTABLISHED, "b back without any command")
    run(scenario())


def test_udp_address_is_learned_from_heartbeats_behind_nat():
    async def scenario():
        a = Node("a", 1)
        # b's UDP does not come from the port it announces: a must learn where it does.
        b = Node("b", 2, [a], control_port=free_tcp_port())
        nat = b.dp.port
        async with running(a, b):
            await until(lambda: a.state("b") == ESTABLISHED, "a-b established")
            assert a.dp.peers[2]["address"] == ("127.0.0.1", nat)
            assert a.peer("b")["endpoint"] == f"127.0.0.1:{nat}"
    run(scenario())


def test_partial_mesh_routes_through_the_middle_router():
    async def scenario():
        a, b = Node("a", 1), Node("b", 2)
        c = Node("c", 3, [b])
        a.cp.config.peers = [f"127.0.0.1:{b.cp.config.port}"]
        async with running(b, c, a):
            # Once a learns about c from b it dials c directly: cut that pair.
            await until(lambda: a.state("c") == ESTABLISHED, "a-c established")
            a.dp.blocked.add(3)
            c.dp.blocked.add(1)
            await until(lambda: a.state("c") != ESTABLISHED and a.peer("c")["route"] == "via b",
                        "a reaches c through b")
            assert a.dp.peers[3] == {"address": ("127.0.0.1", c.dp.port), "up": True, "via": 2,
                                      "loss_reports": True}
            assert {r["name"]: r["via_name"] for r in a.cp.status()["routes"]} == {"b": None, "c": "b"}
    run(scenario())


def test_status_api_metrics_cli_connect_and_forget(capsys, tmp_path):
    async def scenario():
        a, b = Node("a", 1), Node("b", 2)
        async with running(a, b):
            server = StatusServer(a.cp, ("127.0.0.1", 0), details=lambda: {"mtu": 1430},
                                  token_file=tmp_path / "run" / "a.token")
            await server.start()
            try:
                address = "%s:%d" % server.address

                def command(*argv):
                    parser = argparse.ArgumentParser()
                    cli.add_arguments_for(argv[0], parser)
                    args = parser.parse_args(["--status-addr", address, *argv[1:]])
                    args.command = argv[0]
                    code = cli.run(args)
                    return code, capsys.readouterr()

                def cli_async(*argv):
                    return asyncio.get_running_loop().run_in_executor(None, command, *argv)

                code, out = await cli_async("connect", f"127.0.0.1:{b.cp.config.port}")
                assert code == 0 and "connecting to 127.0.0.1" in out.out
                await until(lambda: a.state("b") == ESTABLISHED and b.state("a") == ESTABLISHED,
                            "a-b established after connect")

                code, out = await cli_async("report")
                report = json.loads(out.out)
                assert report["name"] == "a" and report["mtu"] == 1430
                assert report["peers"][0]["state"] == ESTABLISHED and "drops" in report

                code, out = await cli_async("status")
                assert "router: a" in out.out and "peer: b (peer id 2)" in out.out
                assert "state: established" in out.out and "route: direct" in out.out
                code, out = await cli_async("status", "peers")
                assert out.out.splitlines()[1].split()[:3] == ["b", "2", "established"]

                metrics = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: urllib.request.urlopen(
                        f"http://{address}/metrics").read().decode())
                families = {f.name: f for f in text_string_to_metric_families(metrics)}
                up = families["weavefast_peer_up"].samples
                assert [(s.labels["peer"], s.value) for s in up] == [("b", 1.0)]
                sent = [s.value for s in families["weavefast_peer_heartbeats"].samples
                        if s.labels["kind"] == "sent"]
                assert sent and sent[0] > 0
                assert "weavefast_peer_rtt_seconds" in families

                code, out = await cli_async("forget", "127.0.0.1")
                assert code == 0 and "b: forgotten" in out.out
                assert a.peer("b") is None and 2 not in a.dp.peers
                # b keeps trying; a refuses it and says why.
                await until(lambda: "a was told to forget b" in (b.peer("a")["last_error"] or ""),
                            "b told why")
                assert a.peer("b") is None
                code, out = await cli_async("forget", "127.0.0.1")
                assert code == 1 and "no peer matches" in out.err

                await cli_async("connect", f"127.0.0.1:{b.cp.config.port}")
                await until(lambda: a.state("b") == ESTABLISHED, "a-b established again")
            finally:
                await server.stop()
            assert not (tmp_path / "run" / "a.token").exists(), "the token file outlived the router"
    run(scenario())


def test_changes_need_the_token_and_no_browser_may_make_them(tmp_path):
    async def scenario():
        a = Node("a", 1)
        async with running(a):
            token_file = tmp_path / "a.token"
            server = StatusServer(a.cp, ("127.0.0.1", 0), token_file=token_file)
            await server.start()
            try:
                assert oct(token_file.stat().st_mode & 0o777) == "0o600"
                token = token_file.read_text().strip()
                url = "http://%s:%d/connect" % server.address
                body = json.dumps({"host": "127.0.0.1", "port": 9}).encode()

                def post(headers):
                    request = urllib.request.Request(url, data=body, headers=headers)
                    try:
                        with urllib.request.urlopen(request, timeout=5) as reply:
                            return reply.status, json.load(reply)
                    except urllib.error.HTTPError as exc:
                        return exc.code, json.load(exc)

                async def attempt(headers):
                    return await asyncio.get_running_loop().run_in_executor(None, post, headers)

                json_type = {"Content-Type": "application/json"}
                code, reply = await attempt(json_type)
                assert code == 401 and "needs the router's token" in reply["error"]
                code, _ = await attempt({**json_type, "Authorization": "Bearer " + "0" * 64})
                assert code == 401
                code, reply = await attempt({**json_type, "Authorization": f"Bearer {token}",
                                             "Origin": "http://evil.example"})
                assert code == 403 and "cross-origin" in reply["error"]
                code, _ = await attempt({"Content-Type": "text/plain", "Authorization": f"Bearer {token}"})
                assert code == 415
                assert a.peer("127.0.0.1:9") is None and not a.cp.peers, "a refused request changed the router"
                code, reply = await attempt({**json_type, "Authorization": f"Bearer {token}"})
                assert code == 200 and reply == {"connecting": "127.0.0.1:9"}
            finally:
                await server.stop()
    run(scenario())


def test_cli_explains_when_no_router_answers(capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments_for("status", parser)
    args = parser.parse_args(["--status-addr", f"127.0.0.1:{free_tcp_port()}"])
    args.command = "status"
    assert cli.run(args) == 1
    assert "is `weavefast router` running?" in capsys.readouterr().err
