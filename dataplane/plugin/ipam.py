"""Docker's IpamDriver: address spaces, pools and addresses, shared by hosts through blocks.

How hosts share a subnet is in blocks.py: with a store, blocks claimed by
compare-and-swap in etcd; without one, one range per host (its `--ip-range`, or
the whole subnet when it is alone), announced through the mesh and refused when
another host announced an overlapping one first.

`docker network create -d weavefast --ipam-driver weavefast NAME` needs no option:
without `--subnet`, the network gets the router's default subnet (10.32.0.0/12, as
Weave Net), the same on every host. Networks with the same subnet share its
addresses (they share the bridge anyway); overlapping but different subnets are
refused. The gateway Docker asks for is an ordinary address of this host's blocks
(unique per host); the driver does not give it to containers as a default route.
Addresses asked for by value (`docker run --ip`) must lie in a block of this host
or in one nobody holds. A container that starts again asks for its previous
address first (see names.py: Docker does not say who is asking). IPv4 only.
"""
import ipaddress
import time
import uuid

from dataplane.plugin import blocks
from dataplane.plugin.protocol import PluginError, field

LOCAL_ADDRESS_SPACE = "WeavefastLocal"
GLOBAL_ADDRESS_SPACE = "WeavefastGlobal"
GATEWAY_REQUEST = "com.docker.network.gateway"  # Options["RequestAddressType"] for the gateway
DEFAULT_SUBNET = "10.32.0.0/12"
DEFAULT_REFUSALS = 3  # default pools dockerd gave back unused before we stop offering it


class Ipam:
    """The IpamDriver methods; each takes (state, request) and returns the answer."""

    def __init__(self, cluster, default_subnet=DEFAULT_SUBNET, previous_address=None):
        self.cluster = cluster
        self.default_subnet = default_subnet
        # (state, subnet) -> the address the container being started had, or None
        self.previous_address = previous_address or (lambda state, subnet: None)
        self._default_pools = {}  # pool id -> when it was handed out, until it is used
        self._default_refusals = 0

    def get_capabilities(self, state, request):
        # No replay after a dockerd restart: the pools and addresses are kept on disk.
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, state, request):
        return {"LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE}

    def request_pool(self, state, request):
        space = field(request, "AddressSpace")
        if space not in (LOCAL_ADDRESS_SPACE, GLOBAL_ADDRESS_SPACE):
            raise PluginError(f"unknown address space {space!r} (weavefast IPAM has "
                              f"{LOCAL_ADDRESS_SPACE} and {GLOBAL_ADDRESS_SPACE})")
        if field(request, "V6", bool, required=False):
            raise PluginError("weavefast IPAM hands out IPv4 addresses only")
        asked = field(request, "Pool", required=False)
        subnet = _network(asked or self.default_subnet, "Pool")
        if not asked and self._default_refusals >= DEFAULT_REFUSALS:
            self._default_refusals = 0
            raise PluginError(f"the default subnet {subnet} overlaps a route of this host, so "
                              f"dockerd refuses it: give --subnet CIDR, or start the router "
                              f"with --subnet CIDR")
        sub_pool = field(request, "SubPool", required=False)
        ip_range = _network(sub_pool, "SubPool") if sub_pool else None
        if ip_range is not None:
            if not ip_range.subnet_of(subnet):
                raise PluginError(f"--ip-range {ip_range} is not inside --subnet {subnet}")
            if len(blocks.usable(subnet, ip_range, trim=True)) < 2:
                raise PluginError(f"--ip-range {ip_range} leaves fewer than two usable "
                                  "addresses (one goes to the gateway)")
        for other in state["pools"].values():
            other_subnet = ipaddress.ip_network(other["subnet"])
            if other["space"] == space and other_subnet.overlaps(subnet) \
                    and other_subnet != subnet:
                raise PluginError(f"subnet {subnet} overlaps {other['subnet']}, already used "
                                  "by another network on this host")
        if self.cluster.store is None:  # refuse a range another host has, at create time
            blocks.own_range(self.cluster, state, subnet, ip_range or subnet)
        pool_id = uuid.uuid4().hex
        state["pools"][pool_id] = {"space": space, "subnet": str(subnet),
                                   "range": str(ip_range) if ip_range else None}
        if not asked:
            self._default_pools[pool_id] = time.monotonic()
        return {"PoolID": pool_id, "Pool": str(subnet), "Data": {}}

    def release_pool(self, state, request):
        pool_id = field(request, "PoolID")
        pool = _pool(state, pool_id)
        del state["pools"][pool_id]
        # dockerd gives a pool it did not ask for back at once, and asks again, when it
        # overlaps a route of the host: after a few rounds, refuse with the fix instead
        created = self._default_pools.pop(pool_id, None)
        if created is not None and time.monotonic() - created < 1.0:
            self._default_refusals += 1
        blocks.drop_subnet_if_unused(self.cluster, state, pool["subnet"])
        return {}

    def request_address(self, state, request):
        pool_id = field(request, "PoolID")
        pool = _pool(state, pool_id)
        self._default_pools.pop(pool_id, None)
        self._default_refusals = 0
        subnet = ipaddress.ip_network(pool["subnet"])
        limit = ipaddress.ip_network(pool["range"]) if pool["range"] else None
        wanted = field(request, "Address", required=False)
        options = field(request, "Options", dict, required=False)
        if wanted:
            address = _address(wanted, "Address")
            if address not in subnet or address in (subnet.network_address,
                                                    subnet.broadcast_address):
                raise PluginError(f"address {address} is not a usable address of {subnet}")
            address = blocks.reserve(self.cluster, state, subnet, str(address))
        elif options.get("RequestAddressType") == GATEWAY_REQUEST:
            address = blocks.allocate(self.cluster, state, subnet, limit)
        else:
            address = blocks.allocate(self.cluster, state, subnet, limit,
                                      preferred=self.previous_address(state, str(subnet)))
        return {"Address": f"{address}/{subnet.prefixlen}", "Data": {}}

    def release_address(self, state, request):
        pool = _pool(state, field(request, "PoolID"))
        address = str(_address(field(request, "Address"), "Address"))
        blocks.release(state, pool["subnet"], address)
        return {}


def _pool(state, pool_id):
    try:
        return state["pools"][pool_id]
    except KeyError:
        raise PluginError(f"no pool with id {pool_id!r}") from None


def _network(text, name):
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise PluginError(f"{name} {text!r} is not a subnet in CIDR form") from None
    if network.version != 4:
        raise PluginError("weavefast IPAM hands out IPv4 addresses only")
    return network


def _address(text, name):
    try:  # dockerd sends plain addresses; accept CIDR form too
        return ipaddress.ip_interface(text).ip
    except ValueError:
        raise PluginError(f"{name} {text!r} is not an IP address") from None
