"""Docker's IpamDriver: address spaces, pools and addresses, one disjoint range per host.

How two hosts never hand out the same address in one network: every host allocates
only from its own range of the network's subnet, given with Docker's own
`--ip-range`, which reaches the driver as `SubPool` in RequestPool:

    host1$ docker network create -d weavefast --ipam-driver weavefast \\
               --subnet 10.32.0.0/16 --ip-range 10.32.1.0/24 mynet
    host2$ docker network create -d weavefast --ipam-driver weavefast \\
               --subnet 10.32.0.0/16 --ip-range 10.32.2.0/24 mynet

Why this and not the alternatives:

- Coordinating through the router's peers (a shared allocation ring, as Weave Net
  did) needs every peer reachable while addresses are handed out, a protocol to
  split and hand back ranges, and a story for partitions; a host would be unable to
  start a container while cut off. Disjoint ranges need no messages at all: a host
  allocates while alone, and nothing can conflict when peers meet again.
- Deriving a slice per host from something the host already has (a hash of its
  name, its peer id) cannot be collision-free: the slice index is much shorter than
  the identity, so two hosts can land on the same slice, and "never" becomes
  "rarely". Only an operator-assigned range is certain.
- `--ip-range` is Docker's own flag: it shows in `docker network inspect`, and the
  per-host choice is made once, where the network is created on that host.

So a pool request without `--ip-range` is refused with an error that says what to
type, rather than silently allocating from the whole subnet, which would collide
as soon as the network exists on a second host. Addresses asked for by value
(`docker run --ip`) may lie anywhere in the subnet; keeping those apart across
hosts is the operator's choice, as it is with any static address.

Within a range, addresses are handed out in turn (after the last one handed out,
wrapping around), so an address just released is the last to be reused: other
containers' ARP caches still point at its old owner for a while. The range's own
first and last addresses (10.32.1.0 and 10.32.1.255 above) are not handed out. The
gateway Docker asks for is the first usable address of the host's range (10.32.1.1,
unique per host); the driver does not give it to containers as a default route (see
driver.py). IPv4 only.
"""
import ipaddress
import uuid

from dataplane.plugin.protocol import PluginError, field

LOCAL_ADDRESS_SPACE = "WeavefastLocal"
GLOBAL_ADDRESS_SPACE = "WeavefastGlobal"
GATEWAY_REQUEST = "com.docker.network.gateway"  # Options["RequestAddressType"] for the gateway


def get_capabilities(state, request):
    # No replay after a dockerd restart: the pools and addresses are kept on disk.
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


def get_default_address_spaces(state, request):
    return {"LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
            "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE}


def request_pool(state, request):
    space = field(request, "AddressSpace")
    if space not in (LOCAL_ADDRESS_SPACE, GLOBAL_ADDRESS_SPACE):
        raise PluginError(f"unknown address space {space!r} (weavefast IPAM has "
                          f"{LOCAL_ADDRESS_SPACE} and {GLOBAL_ADDRESS_SPACE})")
    if field(request, "V6", bool, required=False):
        raise PluginError("weavefast IPAM hands out IPv4 addresses only")
    pool = field(request, "Pool", required=False)
    if not pool:
        raise PluginError("weavefast IPAM needs --subnet (the same on every host) and "
                          "--ip-range (a different part of it on every host), e.g. "
                          "--subnet 10.32.0.0/16 --ip-range 10.32.1.0/24 on one host and "
                          "--ip-range 10.32.2.0/24 on the next")
    subnet = _network(pool, "Pool")
    sub_pool = field(request, "SubPool", required=False)
    if not sub_pool:
        raise PluginError(f"weavefast IPAM needs --ip-range: give this host its own part of "
                          f"{subnet} (e.g. --ip-range {_example_range(subnet)}), a different "
                          f"one on every host, so that no two hosts hand out the same address")
    ip_range = _network(sub_pool, "SubPool")
    if not ip_range.subnet_of(subnet):
        raise PluginError(f"--ip-range {ip_range} is not inside --subnet {subnet}")
    if len(_usable(subnet, ip_range)) < 2:
        raise PluginError(f"--ip-range {ip_range} leaves fewer than two usable addresses "
                          "(one goes to the gateway)")
    for other in state["pools"].values():
        if other["space"] == space and ipaddress.ip_network(other["subnet"]).overlaps(subnet):
            raise PluginError(f"subnet {subnet} overlaps {other['subnet']}, already used by "
                              "another network on this host")
    pool_id = uuid.uuid4().hex
    state["pools"][pool_id] = {"space": space, "subnet": str(subnet), "range": str(ip_range),
                               "allocated": [], "last": None}
    return {"PoolID": pool_id, "Pool": str(subnet), "Data": {}}


def release_pool(state, request):
    pool_id = field(request, "PoolID")
    _pool(state, pool_id)
    del state["pools"][pool_id]
    return {}


def request_address(state, request):
    pool = _pool(state, field(request, "PoolID"))
    subnet = ipaddress.ip_network(pool["subnet"])
    wanted = field(request, "Address", required=False)
    options = field(request, "Options", dict, required=False)
    if wanted:
        address = _address(wanted, "Address")
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise PluginError(f"address {address} is not a usable address of {subnet}")
        if str(address) in pool["allocated"]:
            raise PluginError(f"address {address} is already in use")
    elif options.get("RequestAddressType") == GATEWAY_REQUEST:
        address = _next_free(pool, subnet, after=None)
    else:
        address = _next_free(pool, subnet, after=pool["last"])
        pool["last"] = str(address)
    pool["allocated"].append(str(address))
    return {"Address": f"{address}/{subnet.prefixlen}", "Data": {}}


def release_address(state, request):
    pool = _pool(state, field(request, "PoolID"))
    address = str(_address(field(request, "Address"), "Address"))
    if address not in pool["allocated"]:
        raise PluginError(f"address {address} is not allocated in pool {pool['subnet']}")
    pool["allocated"].remove(address)
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


def _usable(subnet, ip_range):
    """The range's addresses, as integers, without the subnet's network and broadcast
    addresses, nor the range's own (valid in a larger subnet, but they look wrong to
    people and to some programs)."""
    first, last = int(ip_range.network_address), int(ip_range.broadcast_address)
    if ip_range.prefixlen < 31:
        first, last = first + 1, last - 1
    if subnet.prefixlen < 31:
        first = max(first, int(subnet.network_address) + 1)
        last = min(last, int(subnet.broadcast_address) - 1)
    return range(first, last + 1)


def _next_free(pool, subnet, after):
    """The first free usable address of the pool's range that follows `after` (wrapping)."""
    usable = _usable(subnet, ipaddress.ip_network(pool["range"]))
    start = usable.index(int(ipaddress.ip_address(after))) + 1 if after else 0
    taken = set(pool["allocated"])
    for i in range(len(usable)):
        candidate = ipaddress.ip_address(usable[(start + i) % len(usable)])
        if str(candidate) not in taken:
            return candidate
    raise PluginError(f"no free address left in --ip-range {pool['range']}")


def _example_range(subnet):
    return next(subnet.subnets(new_prefix=24)) if subnet.prefixlen < 24 else subnet
