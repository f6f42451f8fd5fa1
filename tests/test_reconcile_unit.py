"""What the plugin frees when it compares its state with Docker's (reconcile.py), and
the overlay MTU when no router answers; no dockerd, no root."""
import pytest

from dataplane.plugin import start_plugin
from dataplane.plugin.reconcile import DockerNetwork, leaks
from dockerenv import plugin_call

NET, GONE_NET = "n" * 64, "g" * 64
LIVE_EP, LEAKED_EP = "a" * 64, "b" * 64


def plugin_state():
    """A network with a live and a leaked endpoint, and a pool of a network Docker lost."""
    return {
        "networks": {NET: {"mtu": None, "subnet": "10.32.0.0/16", "gateway": "10.32.1.1/16"}},
        "endpoints": {LIVE_EP: {"network": NET}, LEAKED_EP: {"network": NET}},
        "pools": {"p1": {"subnet": "10.32.0.0/16", "range": "10.32.1.0/24",
                         "allocated": ["10.32.1.1", "10.32.1.2", "10.32.1.3"]},
                  "p2": {"subnet": "10.50.0.0/16", "range": "10.50.1.0/24",
                         "allocated": ["10.50.1.1"]}},
    }


def docker(gateway=True, ours=True):
    return {NET: DockerNetwork(name="mynet", ours=ours, gateway=gateway,
                               subnets={"10.32.0.0/16"},
                               in_use={"10.32.1.2"} | ({"10.32.1.1"} if gateway else set()),
                               endpoints={LIVE_EP: "web"})}


def test_what_no_container_uses_is_a_leak():
    assert leaks(plugin_state(), docker()) == {
        ("endpoint", LEAKED_EP), ("address", "p1", "10.32.1.3"), ("pool", "p2")}


def test_the_gateway_is_kept_after_dockerd_stops_reporting_it():
    assert ("address", "p1", "10.32.1.1") not in leaks(plugin_state(), docker(gateway=False))


def test_without_any_known_gateway_no_address_of_the_pool_is_freed():
    state = plugin_state()
    del state["networks"][NET]["gateway"]
    assert not {leak for leak in leaks(state, docker(gateway=False)) if leak[0] == "address"}


def test_a_network_docker_does_not_have_is_a_leak_with_its_endpoints():
    state = plugin_state()
    state["networks"][GONE_NET] = {"mtu": None, "subnet": None}
    state["endpoints"]["c" * 64] = {"network": GONE_NET}
    found = leaks(state, docker())
    assert {("network", GONE_NET), ("endpoint", "c" * 64)} <= found


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
