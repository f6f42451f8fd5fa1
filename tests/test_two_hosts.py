"""Two simulated hosts, a router and a container on each: the overlay end to end.

Also checks that a testbed leaves nothing behind, even when the test using it fails.
"""
import json
import textwrap
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetlinkError

from dataplane import testbed

pytestmark = pytest.mark.root

TRANSFER_BYTES = 50 << 20


@pytest.fixture(scope="module")
def tb(testbed_factory):
    with testbed_factory(hosts=2, containers_per_host=1) as tb:
        tb.start_routers()
        yield tb


def test_arp_resolves_and_ipv4_ping_works(tb):
    c1, c2 = tb.containers
    result = tb.ping(c1, c2.ip4)
    assert result.ok, result.output
    assert tb.neighbours(c1).get(c2.ip4) == c2.mac
    assert tb.neighbours(c2).get(c1.ip4) == c1.mac


def test_ipv6_ping_works(tb):
    c1, c2 = tb.containers
    result = tb.ping(c2, c1.ip6)
    assert result.ok, result.output
    assert tb.neighbours(c2).get(c1.ip6) == c1.mac


def test_tcp_transfer_arrives_intact_and_counters_move(tb):
    c1, c2 = tb.containers
    h1, h2 = tb.hosts
    before = {h.name: tb.status(h)["counters"] for h in tb.hosts}

    result = tb.tcp_transfer(c1, c2, TRANSFER_BYTES)

    assert result.bytes_received == TRANSFER_BYTES
    assert result.received_sha256 == result.sent_sha256
    after = {h.name: tb.status(h)["counters"] for h in tb.hosts}
    moved = {h: {k: after[h][k] - before[h][k] for k in before[h]} for h in before}
    # every payload byte went TAP -> UDP on h1 and UDP -> TAP on h2
    for counter in ("tap_rx_bytes", "udp_tx_bytes"):
        assert moved[h1.name][counter] > TRANSFER_BYTES, (counter, moved)
    for counter in ("udp_rx_bytes", "tap_tx_bytes"):
        assert moved[h2.name][counter] > TRANSFER_BYTES, (counter, moved)
    for counter in ("tap_rx_frames", "udp_tx_datagrams"):
        assert moved[h1.name][counter] > 0, (counter, moved)
    for counter in ("udp_rx_datagrams", "tap_tx_frames"):
        assert moved[h2.name][counter] > 0, (counter, moved)
    # the ACKs came back the other way
    assert moved[h2.name]["udp_tx_datagrams"] > 0 and moved[h1.name]["udp_rx_datagrams"] > 0


def test_broadcast_reaches_the_other_container(tb):
    c1, c2 = tb.containers
    assert tb.broadcast_copies(c1, [c2]) == {c2.name: 1}


COUNTERS = {"tap_rx_frames", "tap_rx_bytes", "tap_tx_frames", "tap_tx_bytes", "udp_rx_datagrams",
            "udp_rx_bytes", "udp_tx_datagrams", "udp_tx_bytes", "flooded_frames"}
DROP_REASONS = {"short", "bad_magic", "bad_version", "bad_type", "bad_length", "bad_fragment",
                "unknown_peer", "hop_limit", "hairpin"}


def test_status_reports_identity_counters_and_drop_reasons(tb):
    for host in tb.hosts:
        status = tb.status(host)
        assert status["name"] == host.netns
        assert status["peer_id"]
        assert COUNTERS <= status["counters"].keys()
        assert DROP_REASONS <= status["drops"].keys()
        assert all(isinstance(v, int) for v in [*status["counters"].values(),
                                                *status["drops"].values()])
        [peer] = status["peers"]
        assert peer["name"] == next(h.netns for h in tb.hosts if h is not host)


def tap_devices(host):
    """{name: bridge index it is attached to} for every TAP device in `host`."""
    with IPRoute(netns=host.netns) as ipr:
        return {link.get("ifname"): link.get("master") for link in ipr.get_links()
                if link.get(("linkinfo", "kind")) == "tun"}


def test_router_stops_on_sigterm_and_removes_its_tap(testbed_factory):
    with testbed_factory(hosts=1) as tb:
        [host] = tb.hosts
        router = tb.start_router(host)
        with IPRoute(netns=host.netns) as ipr:
            bridge_index = ipr.link_lookup(ifname=host.bridge)[0]
        assert list(tap_devices(host).values()) == [bridge_index]

        assert router.stop(grace=10) == 0, router.output()
        assert tap_devices(host) == {}


def test_testbed_that_fails_to_build_leaves_nothing(testbed_factory):
    prefix = testbed.unique_prefix("wfi")
    with pytest.raises(NetlinkError):  # MTU 10 is below the minimum of a veth
        testbed.Testbed(hosts=2, containers_per_host=1, overlay_mtu=10, prefix=prefix)
    assert testbed.leftovers(prefix) == {"namespaces": [], "interfaces": [], "processes": []}


def test_failing_test_leaves_nothing_behind(testbed_factory, pytester, monkeypatch):
    """A test body fails inside a running testbed (routers and all): afterwards nothing
    with its prefix is left, and none of its processes runs."""
    record = pytester.path / "testbed.json"
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(textwrap.dedent(f"""
        import json
        from pathlib import Path

        def test_fails_on_purpose(testbed_factory):
            with testbed_factory(hosts=2, containers_per_host=1) as tb:
                tb.start(tb.hosts[0], ["sleep", "600"])
                tb.start_routers()
                Path({str(record)!r}).write_text(json.dumps(
                    {{"prefix": tb.prefix, "pids": [p.pid for p in tb.processes]}}))
                assert tb.ping(tb.containers[0], tb.containers[1].ip4).ok
                assert False, "fails on purpose"
    """))
    monkeypatch.setenv("PYTHONPATH", str(Path(testbed.__file__).parent.parent))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fails on purpose*"])
    started = json.loads(record.read_text())
    assert len(started["pids"]) == 3
    assert testbed.leftovers(started["prefix"]) == {"namespaces": [], "interfaces": [],
                                                    "processes": []}
    assert [pid for pid in started["pids"] if Path(f"/proc/{pid}").exists()] == []
