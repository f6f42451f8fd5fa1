"""Docker's NetworkDriver: networks and endpoints as veth pairs on the weavefast bridge.

Every weavefast network on a host shares the one overlay bridge (the router's TAP
is its uplink to the other hosts): networks are kept apart by their subnets, as in
Weave Net, not by separate layer-2 segments.

At Join the driver creates a veth pair: the host end (`wfdh` + endpoint id) is
attached to the bridge, the other end (`wfdc` + endpoint id) is handed to dockerd
(`SrcName`), which moves it into the container and renames it `ethN` (`DstPrefix`).
Both ends get the network's MTU: the overlay cannot send "fragmentation needed"
back, so the container itself must not send frames larger than the overlay carries
(dockerd does not apply an MTU option itself). That MTU is the running router's
overlay MTU, asked at Join (see overlay.py), or a smaller `-o mtu=N`; a larger one
is refused when the network is created. At DeleteEndpoint both ends are back in
this namespace and the driver deletes the pair.

The Join answer sets `DisableGatewayService` and no gateway: a weavefast network is
an overlay between containers, and without it dockerd would add a `docker_gwbridge`
interface to every container for a default route. A container that needs the
outside world is also connected to a network that has a gateway (e.g. `bridge`).
It does add a connected route for multicast (224.0.0.0/4) on the first weavefast
interface of a container: without a default route, a send to a group would fail
with "Network is unreachable".
"""
import errno
import secrets

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.plugin.ipam import GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE
from dataplane.plugin.protocol import PluginError, field

GENERIC_OPTIONS = "com.docker.network.generic"  # where `docker network create -o k=v` arrives
MTU_OPTIONS = ("mtu", "com.docker.network.driver.mtu")  # ours, and the bridge driver's name
CONTAINER_IFNAME_PREFIX = "eth"
MIN_MTU, MAX_MTU = 68, 65535
ROUTE_CONNECTED = 1  # libnetwork's route type for an on-link route (no next hop)
MULTICAST_ROUTE = {"Destination": "224.0.0.0/4", "RouteType": ROUTE_CONNECTED}
WEAVEFAST_SPACES = (LOCAL_ADDRESS_SPACE, GLOBAL_ADDRESS_SPACE)


class Driver:
    """The NetworkDriver methods; each takes (state, request) and returns the answer.

    `overlay_mtu()` returns the running router's overlay MTU or raises PluginError;
    `dns_address` is weavefast's DNS server on the bridge (dataplane/dns), or None.
    """

    def __init__(self, bridge, overlay_mtu, dns_address=None):
        self.bridge = bridge
        self.overlay_mtu = overlay_mtu
        self.dns_address = dns_address

    def get_capabilities(self, state, request):
        # "local": dockerd keeps the network on this host only (it is created on each
        # host); the connectivity itself spans hosts.
        return {"Scope": "local", "ConnectivityScope": "global"}

    def create_network(self, state, request):
        network_id = field(request, "NetworkID")
        if network_id in state["networks"]:
            raise PluginError(f"network {network_id} already exists")
        options = field(request, "Options", dict, required=False)
        generic = options.get(GENERIC_OPTIONS) or {}
        if not isinstance(generic, dict):
            raise PluginError(f"{GENERIC_OPTIONS} must be an object")
        unknown = sorted(set(generic) - set(MTU_OPTIONS))
        if unknown:
            raise PluginError(f"unknown option(s) {', '.join(unknown)}: weavefast networks "
                              "take -o mtu=N")
        mtu = None  # None: the overlay's, whatever it is at Join
        for name in MTU_OPTIONS:
            if name in generic:
                mtu = parse_mtu(generic[name])
        if mtu is not None and mtu > (largest := self.overlay_mtu()):
            raise PluginError(f"-o mtu={mtu} is larger than the overlay carries: at most "
                              f"{largest} (the router's MTU); give mtu={largest} or less, or "
                              "leave it out")
        ipv4_data = field(request, "IPv4Data", list, required=False)
        for data in ipv4_data:
            if isinstance(data, dict) and data.get("AddressSpace") not in WEAVEFAST_SPACES:
                # Docker's default IPAM hands out the same addresses on every host
                raise PluginError("weavefast networks need weavefast's IPAM, which keeps "
                                  "addresses unique across hosts: add --ipam-driver weavefast")
        ipv4 = next((d for d in ipv4_data if isinstance(d, dict)), {})
        state["networks"][network_id] = {"bridge": self.bridge, "mtu": mtu,
                                         "subnet": ipv4.get("Pool"),
                                         "gateway": ipv4.get("Gateway")}
        return {}

    def delete_network(self, state, request):
        network_id = field(request, "NetworkID")
        _network(state, network_id)
        endpoints = state["endpoints"]
        for endpoint_id in [e for e, ep in endpoints.items() if ep["network"] == network_id]:
            delete_veth(endpoint_id)
            del endpoints[endpoint_id]
        del state["networks"][network_id]
        return {}

    def create_endpoint(self, state, request):
        network_id = field(request, "NetworkID")
        endpoint_id = field(request, "EndpointID")
        _network(state, network_id)
        if endpoint_id in state["endpoints"]:
            raise PluginError(f"endpoint {endpoint_id} already exists")
        interface = field(request, "Interface", dict, required=False)
        mac = interface.get("MacAddress") or ""
        answer = {}
        if not mac:  # dockerd refuses an answer that repeats what it supplied
            mac = _random_mac()
            answer = {"Interface": {"MacAddress": mac}}
        state["endpoints"][endpoint_id] = {"network": network_id, "mac": mac, "joined": False,
                                           "address": interface.get("Address") or None}
        return answer

    def endpoint_oper_info(self, state, request):
        endpoint = _endpoint(state, request)
        network = state["networks"][endpoint["network"]]
        host_ifname, _ = veth_names(field(request, "EndpointID"))
        return {"Value": {"bridge": network["bridge"], "host_interface": host_ifname,
                          "mtu": endpoint.get("mtu") or network["mtu"], "mac": endpoint["mac"]}}

    def delete_endpoint(self, state, request):
        _endpoint(state, request)
        endpoint_id = field(request, "EndpointID")
        delete_veth(endpoint_id)
        del state["endpoints"][endpoint_id]
        return {}

    def join(self, state, request):
        endpoint = _endpoint(state, request)
        endpoint_id = field(request, "EndpointID")
        network = state["networks"][endpoint["network"]]
        # min(): an -o mtu accepted before the overlay's MTU shrank must not black-hole
        mtu = min(filter(None, (network["mtu"], self.overlay_mtu())))
        container_ifname = _create_veth(endpoint_id, network["bridge"], mtu, endpoint["mac"])
        sandbox = field(request, "SandboxKey", required=False)
        # the multicast and DNS routes once per container: a second one for the same
        # prefix fails the join
        first_in_container = not sandbox or all(
            other.get("sandbox") != sandbox for other in state["endpoints"].values())
        endpoint.update(joined=True, mtu=mtu, sandbox=sandbox)
        answer = {"InterfaceName": {"SrcName": container_ifname,
                                    "DstPrefix": CONTAINER_IFNAME_PREFIX},
                  "DisableGatewayService": True}
        if first_in_container:
            answer["StaticRoutes"] = [MULTICAST_ROUTE] + (
                [{"Destination": f"{self.dns_address}/32", "RouteType": ROUTE_CONNECTED}]
                if self.dns_address else [])
        return answer

    def leave(self, state, request):
        endpoint = _endpoint(state, request)
        endpoint.update(joined=False, sandbox=None)
        return {}

    def program_external_connectivity(self, state, request):
        _endpoint(state, request)
        return {}

    revoke_external_connectivity = program_external_connectivity

    def discover(self, state, request):
        return {}


def reattach_ports(state):
    """Attach the host ends of joined endpoints back to their bridge; returns their names.

    The router deletes the bridge it made when it stops, and the bridge of its next
    start has none of the containers' ports: without this they stay cut off.
    """
    joined = [(endpoint_id, state["networks"][endpoint["network"]]["bridge"])
              for endpoint_id, endpoint in state["endpoints"].items() if endpoint["joined"]]
    reattached = []
    if not joined:
        return reattached
    with IPRoute() as ipr:
        for endpoint_id, bridge in joined:
            host_ifname, _ = veth_names(endpoint_id)
            found = ipr.link_lookup(ifname=host_ifname)
            if not found:
                continue
            bridge_index = _bridge_index(ipr, bridge)
            if ipr.get_links(found[0])[0].get("master") != bridge_index:
                ipr.link("set", index=found[0], master=bridge_index, state="up")
                reattached.append(host_ifname)
    return reattached


def veth_names(endpoint_id):
    """(host end, container end) of an endpoint's veth pair; <= 15 characters each."""
    return f"wfdh{endpoint_id[:11]}", f"wfdc{endpoint_id[:11]}"


def _network(state, network_id):
    try:
        return state["networks"][network_id]
    except KeyError:
        raise PluginError(f"no network with id {network_id!r}") from None


def _endpoint(state, request):
    network_id = field(request, "NetworkID")
    endpoint_id = field(request, "EndpointID")
    _network(state, network_id)
    endpoint = state["endpoints"].get(endpoint_id)
    if endpoint is None or endpoint["network"] != network_id:
        raise PluginError(f"no endpoint with id {endpoint_id!r} in network {network_id!r}")
    return endpoint


def parse_mtu(text):
    try:
        mtu = int(text)
    except (TypeError, ValueError):
        raise PluginError(f"mtu {text!r} is not a number") from None
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise PluginError(f"mtu {mtu} is outside {MIN_MTU}..{MAX_MTU}")
    return mtu


def _random_mac():
    """A random unicast, locally administered MAC: unique across hosts without asking."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _bridge_index(ipr, bridge):
    """The bridge's index; the bridge is created (and set up) when the router has not yet."""
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        try:
            ipr.link("add", ifname=bridge, kind="bridge")
        except NetlinkError as e:
            if e.code != errno.EEXIST:  # created by the router meanwhile
                raise
        found = ipr.link_lookup(ifname=bridge)
        ipr.link("set", index=found[0], state="up")
    return found[0]


def _create_veth(endpoint_id, bridge, mtu, mac):
    """The endpoint's veth pair, host end up on `bridge`; returns the container end's name."""
    host_ifname, container_ifname = veth_names(endpoint_id)
    try:
        with IPRoute() as ipr:
            bridge_index = _bridge_index(ipr, bridge)
            _delete_links(ipr, host_ifname, container_ifname)  # left by an earlier failed join
            ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu,
                     peer={"ifname": container_ifname, "mtu": mtu, "address": mac})
            try:
                host_index = ipr.link_lookup(ifname=host_ifname)[0]
                ipr.link("set", index=host_index, master=bridge_index, state="up")
            except BaseException:
                _delete_links(ipr, host_ifname)
                raise
    except NetlinkError as e:
        raise PluginError(f"cannot create veth {host_ifname} on bridge {bridge}: {e}") from None
    return container_ifname


def delete_veth(endpoint_id):
    """Remove an endpoint's veth pair, if it is there."""
    try:
        with IPRoute() as ipr:
            _delete_links(ipr, *veth_names(endpoint_id))
    except NetlinkError as e:
        raise PluginError(f"cannot delete the veth of endpoint {endpoint_id}: {e}") from None


def _delete_links(ipr, *names):
    """Delete whichever of `names` exist (deleting one end of a veth removes both)."""
    for name in names:
        for index in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=index)
            except NetlinkError as e:
                if e.code != errno.ENODEV:  # went with its peer
                    raise
