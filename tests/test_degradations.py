"""A router slower than it could be says which offload or counter, why, and the fix:
in its start line, in `weavefast status`, in the status JSON and in /metrics."""
import shutil
import sys

import pytest

from dataplane.engine import CLIMB_WINDOW, Dataplane, DataplaneConfig
from dataplane.testbed import STATUS_PORT, _NetnsHTTPConnection


@pytest.fixture(scope="module")
def tb(testbed_factory):
    """Underlay devices that do not checksum what they send: the kernel refuses
    UDP GSO sends through them."""
    if shutil.which("ethtool") is None:
        pytest.skip("needs ethtool: apt-get install ethtool")
    with testbed_factory(hosts=2, containers_per_host=1) as tb:
        for host in tb.hosts:
            tb.run(host, ["ethtool", "-K", "ul0", "tx", "off"])
        tb.start_routers()
        yield tb


def metrics(tb, host):
    conn = _NetnsHTTPConnection(tb, host.netns, "127.0.0.1", STATUS_PORT, 5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.mark.root
def test_udp_gso_refused_by_the_underlay_shows_everywhere_with_the_fix(tb):
    h1 = tb.hosts[0]
    fix = "ethtool -K ul0 tx on"

    start = [line for line in h1.router.output().splitlines() if "DEGRADED" in line]
    status = tb.status(h1)
    cli = tb.run(h1, [sys.executable, "-m", "dataplane", "status"]).stdout

    assert len(start) == 1 and "udp_gso off" in start[0] and fix in start[0], start
    assert not status["offloads"]["udp_gso"]
    [degraded] = status["degradations"]
    assert degraded["what"] == "udp_gso off" and "tx checksumming off" in degraded["why"]
    assert fix in degraded["fix"]
    assert [line for line in cli.splitlines() if "DEGRADED" in line] == [f"  {start[0].split(': ', 1)[1]}"]
    assert 'weavefast_degraded{' in metrics(tb, h1) and fix in metrics(tb, h1)


@pytest.mark.root
def test_a_degraded_router_still_carries_traffic_intact(tb):
    c1, c2 = tb.containers
    assert tb.tcp_transfer(c1, c2, 20 << 20).intact


class FakeEngine:
    udp_gso = True

    def __init__(self):
        self.overflows = self.reassembly = 0

    def counters(self):
        return {"socket_overflows": self.overflows}

    def drops(self):
        return {"reassembly": self.reassembly}


def test_run_time_fallbacks_and_climbing_drops_are_degradations_until_they_stop():
    dp = Dataplane(DataplaneConfig(peer_id=1))
    dp.engine, dp.offloads, dp.underlay_dev = FakeEngine(), {"udp_gso": True}, "eth0"
    assert dp.degradations(now=0) == []

    dp.engine.udp_gso = False   # an EIO turned it off
    dp.engine.overflows, dp.engine.reassembly = 500, 3
    found = {d["what"]: d for d in dp.degradations(now=10)}

    assert set(found) == {"udp_gso off", "socket overflows", "reassembly drops"}
    assert "ethtool -K eth0 tx on" in found["udp_gso off"]["fix"]
    assert found["socket overflows"]["why"].startswith("500 datagrams dropped")
    assert "--workers" in found["socket overflows"]["fix"]
    assert found["reassembly drops"]["why"].startswith("3 super-frames lost")
    # a minute without new drops: only the fallback stays
    later = dp.degradations(now=10 + CLIMB_WINDOW + 1)
    assert [d["what"] for d in later] == ["udp_gso off"]
