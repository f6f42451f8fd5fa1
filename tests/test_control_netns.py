"""The control plane on real routers: four netns hosts, each router started
with --peer of host 1 only, a container on each.

The tests share one testbed and run in file order; each leaves the mesh whole
for the next (the last two change it for good).
"""
import asyncio
import itertools
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dataplane import testbed
from dataplane.control import protocol

pytestmark = pytest.mark.root

SECRET = "correct horse"
REPO = str(Path(__file__).resolve().parent.parent)


def router_args(host):
    return ["--peer-id", str(host.index), "--password", SECRET]


@pytest.fixture(scope="module")
def mesh():
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    testbed.remove_leftovers("wfc")  # of earlier runs that were killed (live owners are kept)
    tb = testbed.Testbed(hosts=4, containers_per_host=1, prefix=testbed.unique_prefix("wfc"))
    try:
        h1 = tb.hosts[0]
        tb.start_router(h1, peers=[], extra_args=router_args(h1))
        for host in tb.hosts[1:]:
            tb.start_router(host, peers=[h1], extra_args=router_args(host), wait=False)
        for host in tb.hosts:
            tb.wait_ready(host)
        wait_full_mesh(tb)
        yield tb
    finally:
        tb.close()
    assert not any(tb.leftovers().values()), tb.leftovers()


def logs(tb):
    return "\n".join(f"--- {name}\n{out[-3000:]}" for name, out in tb.logs().items())


def peers_by_name(tb, host):
    return {p["name"]: p for p in tb.status(host)["peers"]}


def wait_full_mesh(tb):
    def established():
        return all(sum(p["state"] == "established" for p in tb.status(h)["peers"]) == len(tb.hosts) - 1
                   for h in tb.hosts)
    try:
        tb.wait_for(established, timeout=20, what="every router established with every other")
    except TimeoutError:
        pytest.fail(f"no full mesh:\n{logs(tb)}")


def weavefast(tb, host, *argv):
    return tb.run(host, [sys.executable, "-m", "dataplane", *argv], check=False,
                  env={**os.environ, "PYTHONPATH": REPO})


def http_get(tb, host, path):
    with tb.socket(host, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", testbed.STATUS_PORT))
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body.decode()


def test_joining_through_host1_meets_every_router_and_every_container(mesh):
    for a, b in itertools.combinations(mesh.containers, 2):
        result = mesh.ping(a, b.ip4, count=2, interval=0.1)
        assert result.ok, f"{a.name} -> {b.name}: {result.output}\n{logs(mesh)}"
    for host in mesh.hosts:
        result = weavefast(mesh, host, "status")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("state: established") == 3, result.stdout
        assert "network secret: yes" in result.stdout
        if host is mesh.hosts[0]:
            print(f"\n$ weavefast status  # on {host.netns}\n{result.stdout}")
    peers = weavefast(mesh, mesh.hosts[1], "status", "peers").stdout.splitlines()
    assert len(peers) == 4 and all(" established " in line for line in peers[1:]), peers


def test_metrics_parse_and_per_peer_counters_move_with_traffic(mesh):
    h1, h2 = mesh.hosts[:2]
    c1, c2 = mesh.containers[:2]

    def sample(family, peer):
        families = {f.name: f for f in text_string_to_metric_families(http_get(mesh, h1, "/metrics"))}
        return next(s.value for s in families[family].samples
                    if s.labels["peer"] == peer and s.name in (family, family + "_total"))

    before = sample("weavefast_peer_tx_bytes", h2.netns)
    assert mesh.ping(c1, c2.ip4, count=5, interval=0.05).ok
    assert sample("weavefast_peer_tx_bytes", h2.netns) > before + 5 * 84
    assert sample("weavefast_peer_up", h2.netns) == 1
    assert sample("weavefast_peer_rtt_seconds", h2.netns) > 0


NFT_CUT = """
table inet wfcut {{
    chain input {{ type filter hook input priority 0; ip saddr {peer} drop; }}
    chain output {{ type filter hook output priority 0; ip daddr {peer} drop; }}
}}
"""


def test_partial_mesh_relays_through_host2(mesh):
    h1, h2, h3, _ = mesh.hosts
    c1, _, c3, _ = mesh.containers
    for near, far in ((h1, h3), (h3, h1)):
        mesh.run(near, ["nft", "-f", "-"], input=NFT_CUT.format(peer=far.underlay_ip))
    try:
        relayed = mesh.status(h2)["counters"]["relayed_datagrams"]
        mesh.wait_for(lambda: peers_by_name(mesh, h1)[h3.netns]["route"] == f"via {h2.netns}",
                      timeout=15, what="h1 routes to h3 through h2 (lowest peer id of h2, h4)")
        h3_seen_from_h1 = peers_by_name(mesh, h1)[h3.netns]
        assert h3_seen_from_h1["state"] != "established" and h3_seen_from_h1["last_error"]
        for a, b in ((c1, c3), (c3, c1)):
            result = mesh.ping(a, b.ip4, count=3, interval=0.1)
            assert result.ok, f"{a.name} -> {b.name}: {result.output}\n{logs(mesh)}"
        assert mesh.status(h2)["counters"]["relayed_datagrams"] > relayed
        others = mesh.containers[1:]
        assert mesh.broadcast_copies(c1, others) == {c.name: 1 for c in others}
        assert f"route: via {h2.netns}" in weavefast(mesh, h1, "status").stdout
    finally:
        for host in (h1, h3):
            mesh.run(host, ["nft", "delete", "table", "inet", "wfcut"], check=False)
    wait_full_mesh(mesh)


def test_killed_router_shows_failed_traffic_between_others_flows_mesh_heals(mesh):
    h1, h2, h3, h4 = mesh.hosts
    c2, c3 = mesh.containers[1:3]
    pinger = mesh.start(c2, ["ping", "-n", "-q", "-i", "0.1", "-c", "30", c3.ip4])
    os.kill(h4.router.pid, signal.SIGKILL)
    for host in (h1, h2, h3):
        mesh.wait_for(lambda: peers_by_name(mesh, host)[h4.netns]["state"] == "failed",
                      timeout=4, what=f"{host.name} sees {h4.name} failed within the 3 s default")
        assert peers_by_name(mesh, host)[h4.netns]["last_error"]
    assert pinger.popen.wait(10) == 0, pinger.output()
    assert " 0% packet loss" in pinger.output(), pinger.output()

    mesh.start_router(h4, peers=[h1], extra_args=router_args(h4))
    wait_full_mesh(mesh)
    assert mesh.ping(mesh.containers[3], mesh.containers[1].ip4, count=2, interval=0.1).ok


def test_forget_and_connect_on_a_running_router(mesh):
    h1, h2 = mesh.hosts[:2]
    result = weavefast(mesh, h1, "forget", h2.underlay_ip)
    assert result.returncode == 0 and f"{h2.netns}: forgotten" in result.stdout, result.stderr
    assert h2.netns not in peers_by_name(mesh, h1)
    mesh.wait_for(lambda: "was told to forget" in (peers_by_name(mesh, h2)[h1.netns]["last_error"] or ""),
                  timeout=10, what="h2 told why h1 refuses it")
    assert h2.netns not in peers_by_name(mesh, h1)

    result = weavefast(mesh, h1, "connect", h2.underlay_ip)
    assert result.returncode == 0, result.stderr
    wait_full_mesh(mesh)


def test_wrong_secret_and_version_mismatch_are_refused_with_clear_messages(mesh):
    h1, h4 = mesh.hosts[0], mesh.hosts[3]
    h4.router.stop()
    mesh.start_router(h4, peers=[h1], extra_args=["--peer-id", "4", "--password", "wrong"])
    mesh.wait_for(lambda: "wrong network secret" in str(mesh.status(h4)["peers"][0]["last_error"]),
                  timeout=10, what="h4 refused by h1")
    for host, other in ((h4, h1), (h1, h4)):
        line = f"refused: wrong network secret: {other.netns} (peer id {other.index}) failed authentication"
        mesh.wait_for(lambda: line in host.router.output(), timeout=5, what=f"{host.name} logs why")

    async def newer_router():
        sock = mesh.socket(h4, socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (h1.underlay_ip, 6783))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            me = protocol.Identity("future", 99, 6783, "00" * 8)
            with pytest.raises(protocol.HandshakeError) as refused:
                await protocol.handshake(protocol.Channel(reader, writer), me, SECRET.encode(), True,
                                         versions=(4, 5))
            return refused.value.reason
        finally:
            writer.close()

    reason = asyncio.run(newer_router())
    assert reason == f"protocol version mismatch: future speaks version 4-5, {h1.netns} (peer id 1) speaks version 2-3"
    mesh.wait_for(lambda: (f"protocol version mismatch: {h1.netns} speaks version 2-3, future (peer id 99) "
                           "speaks version 4-5") in h1.router.output(), timeout=5, what="h1 logs the mismatch")
