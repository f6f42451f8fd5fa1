"""Routers that reach each other over IPv6 only: the overlay works, and the
default MTU leaves room for the larger outer header (1500 - 106 = 1394)."""
import sys

import pytest
from pyroute2 import IPRoute

IFA_F_NODAD = 0x02
UNDERLAY6 = {"h1": "fd47::1", "h2": "fd47::2"}


@pytest.fixture(scope="module")
def tb(testbed_factory):
    with testbed_factory(hosts=2, containers_per_host=1, overlay_mtu=1394) as tb:
        for host in tb.hosts:
            with IPRoute(netns=host.netns) as ipr:
                ipr.addr("add", index=ipr.link_lookup(ifname="ul0")[0], address=UNDERLAY6[host.name],
                         prefixlen=64, flags=IFA_F_NODAD)
        h1, h2 = tb.hosts
        for host, peer in ((h1, h2), (h2, h1)):
            # No --mtu: the router sizes the overlay from the underlay on its own.
            host.router = tb.start(host, [sys.executable, "-m", "dataplane", "router", "--name", host.netns,
                                          "--peer", f"[{UNDERLAY6[peer.name]}]"], name=f"{host.netns}-router")
        for host in tb.hosts:
            tb.wait_ready(host)
        yield tb


def test_default_mtu_leaves_room_for_the_ipv6_header(tb):
    assert [tb.status(host)["mtu"] for host in tb.hosts] == [1394, 1394]


def test_overlay_over_an_ipv6_underlay(tb):
    c1, c2 = tb.containers
    result = tb.ping(c1, c2.ip4)
    assert result.ok, result.output
    transfer = tb.tcp_transfer(c1, c2, 20 << 20)
    assert transfer.intact, transfer
    status = tb.status(tb.hosts[0])
    assert status["counters"]["super_frames_tx"] > 0
    assert [p["endpoint"] for p in status["peers"]] == ["[fd47::2]:6783"]
