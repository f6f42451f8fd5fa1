"""The plugin's HTTP protocol over its real Unix socket, without dockerd.

`weavefast plugin` runs as a process in a network namespace of its own and is
called the way dockerd calls it (see dockerenv.plugin_call), so Join creates real
veth pairs there. IPAM-only cases run `start_plugin()` in this process.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from dataplane import testbed
from dataplane.plugin import start_plugin
from dockerenv import plugin_call, wait_for_socket

pytestmark = pytest.mark.root

BRIDGE = "wfdbr0"  # absent at first: the plugin creates it
MTU = 1400
IFF_UP = 1


class PluginProcess:
    def __init__(self, tb, workdir):
        self.tb, self.host = tb, tb.hosts[0]
        self.socket = workdir / "weavefast.sock"
        self.state_file = workdir / "state" / "state.json"
        self.process = None
        self.start()

    def start(self):
        self.process = self.tb.start(self.host, [
            sys.executable, "-m", "dataplane", "plugin", "--socket", str(self.socket),
            "--state-dir", str(self.state_file.parent), "--bridge", BRIDGE, "--mtu", str(MTU)])
        wait_for_socket(self.socket, self.process)

    def restart(self):
        assert self.process.stop() == 0, self.process.output()
        assert not self.socket.exists()
        self.start()

    def call(self, method, body=None):
        if isinstance(body, bytes):
            return plugin_call(self.socket, method, raw=body)
        return plugin_call(self.socket, method, body)

    def ok(self, method, body=None):
        status, answer = self.call(method, body)
        assert status == 200 and not (answer.get("Err") or answer.get("Error")), (method, answer)
        return answer

    def links(self):
        with IPRoute(netns=self.host.netns) as ipr:
            return {link.get("ifname"): link for link in ipr.get_links()}


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="wfd-unit-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def plugin(workdir):
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    tb = testbed.Testbed(hosts=1, prefix=testbed.unique_prefix("wfd"))
    try:
        yield PluginProcess(tb, workdir)
    finally:
        tb.close()
        left = tb.leftovers()
        assert not any(left.values()), left


def make_pool(plugin, subnet, ip_range):
    return plugin.ok("IpamDriver.RequestPool", {
        "AddressSpace": "WeavefastLocal", "Pool": subnet, "SubPool": ip_range,
        "Options": {}, "V6": False})["PoolID"]


def test_handshake_answers_for_both_drivers(plugin):
    assert plugin.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert plugin.ok("NetworkDriver.GetCapabilities")["Scope"] == "local"
    spaces = plugin.ok("IpamDriver.GetDefaultAddressSpaces")
    assert spaces["LocalDefaultAddressSpace"] == "WeavefastLocal"
    assert plugin.ok("IpamDriver.GetCapabilities")["RequiresMACAddress"] is False


def test_endpoint_lifecycle_creates_and_removes_a_veth_on_the_bridge(plugin):
    pool = make_pool(plugin, "10.41.0.0/16", "10.41.3.0/24")
    gateway = plugin.ok("IpamDriver.RequestAddress", {
        "PoolID": pool, "Address": "",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
    address = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "",
                                                      "Options": {}})["Address"]
    assert (gateway, address) == ("10.41.3.1/16", "10.41.3.2/16")
    ids = {"NetworkID": "n" * 64, "EndpointID": "e" * 64}
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": ids["NetworkID"], "Options": {"com.docker.network.generic": {"mtu": "1300"}},
        "IPv4Data": [{"AddressSpace": "WeavefastLocal", "Pool": "10.41.0.0/16",
                      "Gateway": gateway}], "IPv6Data": []})
    created = plugin.ok("NetworkDriver.CreateEndpoint", {
        **ids, "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""},
        "Options": {}})
    mac = created["Interface"]["MacAddress"]
    joined = plugin.ok("NetworkDriver.Join", {**ids, "SandboxKey": "/var/run/docker/netns/x",
                                              "Options": {}})

    assert joined["InterfaceName"] == {"SrcName": "wfdceeeeeeeeeee", "DstPrefix": "eth"}
    assert joined["DisableGatewayService"] is True and not joined.get("Gateway")
    links = plugin.links()
    host_end, container_end = links["wfdheeeeeeeeeee"], links["wfdceeeeeeeeeee"]
    assert host_end.get("master") == links[BRIDGE]["index"]  # the plugin made the bridge
    assert host_end["flags"] & IFF_UP
    assert host_end.get("mtu") == container_end.get("mtu") == 1300  # -o mtu beats --mtu
    assert container_end.get("address") == mac
    info = plugin.ok("NetworkDriver.EndpointOperInfo", ids)["Value"]
    assert info["host_interface"] == "wfdheeeeeeeeeee"

    plugin.ok("NetworkDriver.Leave", ids)
    plugin.ok("NetworkDriver.DeleteEndpoint", ids)
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": ids["NetworkID"]})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.41.3.2"})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.41.3.1"})
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    assert not {"wfdheeeeeeeeeee", "wfdceeeeeeeeeee"} & set(plugin.links())


def test_state_survives_a_restart(plugin):
    pool = make_pool(plugin, "10.42.0.0/16", "10.42.7.0/24")
    first = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool})["Address"]
    plugin.ok("NetworkDriver.CreateNetwork", {"NetworkID": "r" * 64, "Options": {}})

    plugin.restart()

    second = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool})["Address"]
    assert (first, second) == ("10.42.7.1/16", "10.42.7.2/16")  # not handed out twice
    ids = {"NetworkID": "r" * 64, "EndpointID": "s" * 64}
    plugin.ok("NetworkDriver.CreateEndpoint", {**ids, "Interface": {}})
    plugin.ok("NetworkDriver.Join", {**ids, "SandboxKey": "x"})
    assert plugin.links()["wfdhsssssssssss"].get("mtu") == MTU  # the plugin's --mtu
    plugin.ok("NetworkDriver.DeleteEndpoint", ids)
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": "r" * 64})
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": pool})


def test_ports_go_back_on_the_bridge_when_it_is_recreated(plugin):
    ids = {"NetworkID": "b" * 64, "EndpointID": "p" * 64}
    plugin.ok("NetworkDriver.CreateNetwork", {"NetworkID": ids["NetworkID"]})
    plugin.ok("NetworkDriver.CreateEndpoint", {**ids, "Interface": {}})
    plugin.ok("NetworkDriver.Join", {**ids, "SandboxKey": "x"})
    with IPRoute(netns=plugin.host.netns) as ipr:  # as a router that made the bridge, on exit
        ipr.link("del", index=ipr.link_lookup(ifname=BRIDGE)[0])
    assert plugin.links()["wfdhppppppppppp"].get("master") is None

    plugin.restart()  # checks before it serves, then every few seconds

    links = plugin.links()
    assert links["wfdhppppppppppp"].get("master") == links[BRIDGE]["index"]
    plugin.ok("NetworkDriver.DeleteEndpoint", ids)
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": ids["NetworkID"]})


@pytest.fixture(scope="module")
def known_ids(plugin):
    """A network and a pool that exist while the bad requests are made."""
    plugin.ok("NetworkDriver.CreateNetwork", {"NetworkID": "k" * 64})
    make_pool(plugin, "10.45.0.0/16", "10.45.1.0/24")


@pytest.mark.parametrize("method, body, status, key, message", [
    ("NetworkDriver.CreateNetwork", b"{not json", 400, "Err", "not JSON"),
    ("NetworkDriver.Join", b"[1, 2]", 400, "Err", "not a JSON object"),
    ("IpamDriver.RequestPool", b"{", 400, "Error", "not JSON"),
    ("NetworkDriver.CreateEndpoint", {"EndpointID": "x"}, 400, "Err", "missing NetworkID"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "nope", "EndpointID": "x"}, 200, "Err",
     "no network with id 'nope'"),
    ("NetworkDriver.Join", {"NetworkID": "k" * 64, "EndpointID": "nope"}, 200, "Err",
     "no endpoint with id 'nope'"),
    ("NetworkDriver.DeleteNetwork", {"NetworkID": "nope"}, 200, "Err", "no network"),
    ("NetworkDriver.EndpointOperInfo", {"NetworkID": "k" * 64, "EndpointID": "nope"}, 200,
     "Err", "no endpoint"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "m" * 64, "Options": {
        "com.docker.network.generic": {"mtu": "jumbo"}}}, 200, "Err",
     "mtu 'jumbo' is not a number"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "m" * 64, "Options": {
        "com.docker.network.generic": {"colour": "blue"}}}, 200, "Err", "unknown option(s) colour"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "m" * 64, "Options": {
        "com.docker.network.generic": {"mtu": "1401"}}}, 200, "Err",
     f"-o mtu=1401 is larger than the overlay carries: at most {MTU}"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "k" * 64}, 200, "Err", "already exists"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "m" * 64, "IPv4Data": [
        {"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16"}]}, 200, "Err",
     "need weavefast's IPAM, which keeps addresses unique across hosts: add --ipam-driver "
     "weavefast"),
    ("IpamDriver.RequestPool", {"AddressSpace": "WeavefastLocal", "Pool": "10.46.0.0/16",
                                "SubPool": "10.47.0.0/24"}, 200, "Error", "not inside --subnet"),
    ("IpamDriver.RequestPool", {"AddressSpace": "WeavefastLocal", "Pool": "10.45.0.0/20",
                                "SubPool": "10.45.0.0/24"}, 200, "Error", "overlaps 10.45.0.0/16"),
    ("IpamDriver.RequestAddress", {"PoolID": "nope"}, 200, "Error", "no pool with id 'nope'"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "nope", "Address": "10.0.0.1"}, 200, "Error",
     "no pool"),
    ("NetworkDriver.Frobnicate", {}, 404, "Err", "no method"),
])
def test_bad_requests_get_a_clear_error_and_change_nothing(plugin, known_ids, method, body,
                                                           status, key, message):
    state_before, links_before = plugin.state_file.read_bytes(), set(plugin.links())

    answer_status, answer = plugin.call(method, body)

    assert (answer_status, key) == (status, next(iter(answer)))
    assert message in answer[key]
    assert plugin.state_file.read_bytes() == state_before
    assert set(plugin.links()) == links_before


def test_two_hosts_with_disjoint_ranges_never_hand_out_the_same_address(workdir):
    """Two plugins for two hosts' halves of one subnet, each asked until it has no more."""
    handed_out = {}
    for host, ip_range in (("h1", "10.43.0.0/29"), ("h2", "10.43.0.8/29")):
        socket_path = workdir / f"{host}.sock"
        with start_plugin(socket_path=socket_path, state_dir=workdir / host):
            pool = plugin_call(socket_path, "IpamDriver.RequestPool", {
                "AddressSpace": "WeavefastLocal", "Pool": "10.43.0.0/28",
                "SubPool": ip_range})[1]["PoolID"]
            handed_out[host] = []
            while "Address" in (answer := plugin_call(socket_path, "IpamDriver.RequestAddress",
                                                      {"PoolID": pool})[1]):
                handed_out[host].append(answer["Address"])
            assert "no free address left in --ip-range" in answer["Error"]
    # 8 addresses each, minus each range's first and last
    assert len(handed_out["h1"]) == len(handed_out["h2"]) == 6
    assert not set(handed_out["h1"]) & set(handed_out["h2"])


def test_in_process_plugin_refuses_a_live_socket_and_removes_its_own(workdir):
    """start_plugin() as `weavefast router --plugin` uses it."""
    socket_path = workdir / "inproc.sock"
    handle = start_plugin(socket_path=socket_path, state_dir=workdir / "inproc")
    try:
        assert plugin_call(socket_path, "Plugin.Activate")[1]["Implements"] == [
            "NetworkDriver", "IpamDriver"]
        with pytest.raises(OSError, match="another plugin is serving"):
            start_plugin(socket_path=socket_path, state_dir=workdir / "other")
    finally:
        handle.close()
    assert not socket_path.exists()


def test_a_pool_without_subnet_gets_the_default_one_unless_dockerd_keeps_refusing_it(workdir):
    """dockerd hands back a pool that overlaps a route of the host and asks again, forever:
    after a few rounds the plugin answers with the fix instead."""
    socket_path = workdir / "default.sock"
    with start_plugin(socket_path=socket_path, state_dir=workdir / "default"):
        def request_pool():
            return plugin_call(socket_path, "IpamDriver.RequestPool",
                               {"AddressSpace": "WeavefastLocal", "V6": False})[1]

        first = request_pool()
        assert first["Pool"] == "10.32.0.0/12"
        address = plugin_call(socket_path, "IpamDriver.RequestAddress",
                              {"PoolID": first["PoolID"]})[1]["Address"]
        assert address == "10.32.0.1/12"  # alone, this host owns the whole subnet
        for _ in range(3):
            refused_by_dockerd = request_pool()["PoolID"]
            plugin_call(socket_path, "IpamDriver.ReleasePool", {"PoolID": refused_by_dockerd})
        assert "overlaps a route of this host" in request_pool()["Error"]
        assert "Pool" in request_pool()  # the next attempt is offered the default again
