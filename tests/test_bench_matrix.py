"""Every host variant of `weavefast bench --matrix`, once, for correctness: on each,
a TCP transfer between the two containers arrives byte-identical and the routers
report every offload on and nothing degraded (but TAP USO where the kernel lacks it). Real namespaces; the figures are
the bench's business, no timing is asserted here."""
import shutil

import pytest

from dataplane import bench, testbed

pytestmark = pytest.mark.root

PREFIX_BASE = "wfbm"
TRANSFER = 20 << 20
# On by default on any kernel since 5.0 (TAP USO needs 6.2 and is probed, not expected).
EXPECTED_ON = ("tap_csum", "tap_tso", "udp_gso", "udp_gro")


@pytest.fixture(scope="module", autouse=True)
def namespaces_available():
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    testbed.remove_leftovers(PREFIX_BASE)


@pytest.mark.parametrize("variant, system", [
    *((v, "weavefast") for v in bench.VARIANTS),
    (bench.DEFAULT, "weavefast-sealed"),
], ids=lambda x: getattr(x, "name", x))
def test_variant_carries_a_transfer_intact_with_every_offload(variant, system):
    if variant.veth_offloads_off and shutil.which("ethtool") is None:
        pytest.skip("needs ethtool: apt-get install ethtool")
    with bench.build_testbed(variant, system, prefix=testbed.unique_prefix(PREFIX_BASE)) as tb:
        tb.start_routers(extra_args=bench.weavefast_args(variant, system))
        c1, c2 = tb.containers

        transfer = tb.tcp_transfer(c1, c2, TRANSFER)

        assert transfer.intact, transfer
        for host in tb.hosts:
            status = tb.status(host)
            assert all(status["offloads"][name] for name in EXPECTED_ON), status["offloads"]
            # before Linux 6.2 the kernel refuses TAP USO, and the router says so
            allowed = set() if status["offloads"]["tap_uso"] else {"tap_uso off"}
            assert {d["what"] for d in status["degradations"]} <= allowed, status["degradations"]
            assert sum("DEGRADED" in line for line in host.router.output().splitlines()) == len(allowed)
            assert status["mtu"] == variant.container_mtu(system)
            assert len(status["workers"]) == (2 if "--workers" in variant.router_args else 1)
            if variant.operator_tap:
                assert status["tap"] == bench.OPERATOR_TAP
        if system == "weavefast-sealed":
            assert status["peers"][0]["session"]["cipher"] != "none"
    left = tb.leftovers()
    assert not any(left.values()), f"testbed {tb.prefix} left behind {left}"
