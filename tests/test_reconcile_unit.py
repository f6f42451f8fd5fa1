"""What the plugin frees when it compares its state with Docker's (reconcile.py), and
the overlay MTU when no router answers; no dockerd, no root."""
import ipaddress

import pytest

from dataplane.plugin import start_plugin
from dataplane.plugin.blocks import Cluster, allocate
from dataplane.plugin.ipam import Ipam
from dataplane.plugin.reconcile import DockerNetwork, free, leaks
from dockerenv import plugin_call

NET, GONE_NET = "n" * 64, "g" * 64
LIVE_EP, LEAKED_EP = "a" * 64, "b" * 64


def plugin_state():
    """A network with a live and a leaked endpoint, a leaked address, and a pool of a
    network Docker lost (with the address it held)."""
    return {
        "networks": {NET: {"mtu": None, "subnet": "10.32.0.0/16", "gateway": "10.32.1.1/16"}},
        "endpoints": {LIVE_EP: {"network": NET}, LEAKED_EP: {"network": NET}},
        "pools": {"p1": {"space": "WeavefastLocal", "subnet": "10.32.0.0/16",
                         "range": "10.32.1.0/24"},
                  "p2": {"space": "WeavefastLocal", "subnet": "10.50.0.0/16",
                         "range": "10.50.1.0/24"}},
        "subnets": {"10.32.0.0/16": {"blocks": {"10.32.1.0/24": {"since": 0, "trim": True}}, "last": "10.32.1.3",
                                     "allocated": ["10.32.1.1", "10.32.1.2", "10.32.1.3"]},
                    "10.50.0.0/16": {"blocks": {"10.50.1.0/24": {"since": 0, "trim": True}}, "last": "10.50.1.1",
                                     "allocated": ["10.50.1.1"]}},
    }


def docker(gateway=True, ours=True):
    return {NET: DockerNetwork(name="mynet", ours=ours, gateway=gateway,
                               subnets={"10.32.0.0/16"},
                               in_use={"10.32.1.2"} | ({"10.32.1.1"} if gateway else set()),
                               endpoints={LIVE_EP: "web"})}


def test_what_no_container_uses_is_a_leak():
    assert leaks(plugin_state(), docker()) == {
        ("endpoint", LEAKED_EP), ("address", "10.32.0.0/16", "10.32.1.3"), ("pool", "p2"),
        ("address", "10.50.0.0/16", "10.50.1.1")}


def test_the_gateway_is_kept_after_dockerd_stops_reporting_it():
    assert ("address", "10.32.0.0/16", "10.32.1.1") not in leaks(plugin_state(), docker(gateway=False))


def test_without_any_known_gateway_no_address_of_a_used_subnet_is_freed():
    state = plugin_state()
    del state["networks"][NET]["gateway"]
    assert not {leak for leak in leaks(state, docker(gateway=False))
                if leak[:2] == ("address", "10.32.0.0/16")}


def test_a_network_docker_does_not_have_is_a_leak_with_its_endpoints():
    state = plugin_state()
    state["networks"][GONE_NET] = {"mtu": None, "subnet": None}
    state["endpoints"]["c" * 64] = {"network": GONE_NET}
    found = leaks(state, docker())
    assert {("network", GONE_NET), ("endpoint", "c" * 64)} <= found


def test_freed_addresses_go_back_to_this_hosts_blocks_and_a_lost_pool_frees_its_subnet():
    state = plugin_state()
    ipam = Ipam(Cluster("h1"))
    for leak in leaks(state, docker()):
        if leak[0] in ("address", "pool"):  # endpoints: veth pairs, netlink
            free(state, None, ipam, leak)
    assert state["subnets"]["10.32.0.0/16"]["allocated"] == ["10.32.1.1", "10.32.1.2"]
    assert set(state["pools"]) == {"p1"} and "10.50.0.0/16" not in state["subnets"]
    # handed out again once the others are used: round-robin from the last one given
    subnet = ipaddress.ip_network("10.32.0.0/16")
    limit = ipaddress.ip_network("10.32.1.0/24")
    given = [allocate(ipam.cluster, state, subnet, limit) for _ in range(252)]  # .1-.254 usable
    assert given[-1] == "10.32.1.3"


@pytest.fixture
def lone_plugin(tmp_path):
    """`weavefast plugin` without --mtu and no router on its status address."""
    socket_path = tmp_path / "weavefast.sock"
    with start_plugin(socket_path=socket_path, state_dir=tmp_path / "state",
                      status_addr="127.0.0.1:9"):
        yield socket_path


def test_without_a_router_an_mtu_option_is_refused_with_what_to_do(lone_plugin):
    status, answer = plugin_call(lone_plugin, "NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "Options": {"com.docker.network.generic": {"mtu": "1400"}}})
    assert status == 200
    assert answer["Err"].startswith("cannot learn the overlay MTU: no router answers at "
                                    "http://127.0.0.1:9/status")
    assert "start `weavefast router` on this host, or give the plugin --mtu" in answer["Err"]
    status, answer = plugin_call(lone_plugin, "NetworkDriver.CreateNetwork", {"NetworkID": NET})
    assert (status, answer) == (200, {})  # without -o mtu: the MTU is asked at Join
