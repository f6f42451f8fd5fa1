"""Address blocks: how hosts share a subnet without ever handing out an address twice.

With a store (`--store etcd://...`), the model of Calico: the subnet is cut into
blocks (/26 by default). A host claims a block by creating its key in etcd only if
it is absent (a compare-and-swap transaction), records the claim in its state file,
and then allocates inside its own blocks without asking anyone. It claims another
block when its blocks are full, and gives a block back (a compare-and-swap delete)
once it has been empty for a grace time. Why no address is ever handed out twice:

- a block has at most one owner: etcd is a quorum store, and the create-if-absent
  transaction succeeds for exactly one host, also during a network split (the side
  without a quorum cannot claim anything);
- a host allocates only inside blocks whose claim etcd confirmed and that it wrote
  to its state file before using them, so a restarted router, or one cut off from
  the store, keeps allocating from its own blocks and from nothing else;
- a block leaves its owner only by the owner's own release (once empty, and only
  if the key is unchanged) or by `weavefast ipam rmpeer HOST`, which refuses while
  HOST's router is alive (its lease key exists) and deletes only keys still owned
  by HOST (compare-and-swap): running it twice, or on two machines, is harmless.

A store outage therefore only delays new blocks; forwarding and allocation inside
claimed blocks go on.

Without a store, each host owns one range: its `--ip-range`, or, when none is
given, the whole subnet. Ranges are announced through the mesh; a host whose
range overlaps one that another host announced earlier refuses to allocate, with
an error that names the fix (`--ip-range`, or `--store`).
"""
import ipaddress
import json
import logging
import time

from dataplane.plugin.protocol import PluginError
from dataplane.store import StoreError

log = logging.getLogger("weavefast.plugin")

KEY_PREFIX = "/weavefast"
DEFAULT_BLOCK_PREFIX = 26
DEFAULT_GRACE = 300.0  # seconds a block stays empty before it goes back to the pool
MESH_KEY = "ipam"  # what the plugin announces through the mesh: its ranges per subnet


def blocks_prefix(subnet):
    return f"{KEY_PREFIX}/ipam/{subnet.replace('/', '-')}/"


def block_key(subnet, block):
    return blocks_prefix(subnet) + block.replace("/", "-")


def host_key(host):
    return f"{KEY_PREFIX}/hosts/{host}"


class Cluster:
    """What the plugin knows beyond this host: its name, the store, the mesh."""

    def __init__(self, host, store=None, mesh=None, block_prefix=DEFAULT_BLOCK_PREFIX,
                 grace=DEFAULT_GRACE):
        self.host = host
        self.store = store
        self.mesh = mesh  # an object with publish(key, value) and peers(key) -> {host: value}
        self.block_prefix = block_prefix
        self.grace = grace
        self.store_error = None  # the last error talking to the store, None once it answers
        self.store_error_since = None

    def store_call(self, what, function, *args):
        """Call the store; StoreError becomes a PluginError naming what waits for it."""
        try:
            result = function(*args)
        except StoreError as e:
            if self.store_error is None:
                self.store_error_since = time.time()
            self.store_error = str(e)
            raise PluginError(f"cannot {what}: {e}; this host keeps allocating inside the "
                              "blocks it holds, and claims new ones once the store is back") \
                from None
        self.store_error = self.store_error_since = None
        return result


def usable(subnet, block, trim=False):
    """The block's addresses as integers, without the subnet's network and broadcast
    addresses, nor (`trim`) the first and last of a range given by hand (`--ip-range`):
    valid in a larger subnet, but they look wrong to people and to some programs."""
    first, last = int(block.network_address), int(block.broadcast_address)
    if trim and block.prefixlen < 31:
        first, last = first + 1, last - 1
    if subnet.prefixlen < 31:
        first = max(first, int(subnet.network_address) + 1)
        last = min(last, int(subnet.broadcast_address) - 1)
    return range(first, last + 1)


def subnet_state(state, subnet):
    return state["subnets"].setdefault(str(subnet), {"blocks": {}, "allocated": [], "last": None})


def allocate(cluster, state, subnet, limit, preferred=None):
    """A free address of this host's blocks of `subnet` (claiming a block if all are full).

    `limit` is the `--ip-range` the pool was created with (None: the whole subnet).
    `preferred` is tried first (the address a restarted container had)."""
    entry = subnet_state(state, subnet)
    if cluster.store is None:
        own_range(cluster, state, subnet, limit or subnet)
    for candidate in ([preferred] if preferred else []):
        if candidate not in entry["allocated"] and _owned_block(entry, candidate):
            return _take(entry, candidate)
    address = _next_free(entry, subnet)
    if address is None and cluster.store is not None:
        _claim_block(cluster, entry, subnet, limit or subnet)
        address = _next_free(entry, subnet)
    if address is None:
        where = f"--ip-range {limit}" if limit else f"subnet {subnet}"
        raise PluginError(f"no free address left in {where} on this host")
    entry["last"] = address
    return _take(entry, address)


def reserve(cluster, state, subnet, address):
    """An address asked for by value (`docker run --ip`): only inside this host's blocks, or
    in a block nobody holds (then claimed), never inside another host's."""
    entry = subnet_state(state, subnet)
    if address in entry["allocated"]:
        raise PluginError(f"address {address} is already in use")
    if _owned_block(entry, address):
        return _take(entry, address)
    if cluster.store is None:
        owner = _mesh_owner(cluster, subnet, address)
        if owner:
            raise PluginError(f"address {address} is in the range of host {owner}: "
                              "run the container there, or pick an address of this host's range")
        return _take(entry, address)
    ip = ipaddress.ip_address(address)
    block = ipaddress.ip_network(f"{ip}/{max(cluster.block_prefix, subnet.prefixlen)}",
                                 strict=False)
    if not _claim(cluster, entry, subnet, block):
        holder = cluster.store_call("read the store", cluster.store.get,
                                    block_key(str(subnet), str(block)))
        owner = json.loads(holder[0])["host"] if holder else "another host"
        raise PluginError(f"address {address} is in block {block} of host {owner}: "
                          "run the container there, or leave --ip out")
    return _take(entry, address)


def release(state, subnet, address):
    entry = state["subnets"].get(str(subnet))
    if entry is None or address not in entry["allocated"]:
        raise PluginError(f"address {address} is not allocated in {subnet}")
    entry["allocated"].remove(address)
    block = _owned_block(entry, address)
    if block and not any(_in(a, block) for a in entry["allocated"]):
        entry["blocks"][block]["empty_since"] = time.time()


def release_empty_blocks(cluster, state, now=None):
    """Give back blocks empty for longer than the grace time; returns those released.
    Without a store a host keeps its range until its last pool of the subnet goes."""
    if cluster.store is None:
        return []
    now = time.time() if now is None else now
    released = []
    for subnet, entry in list(state["subnets"].items()):
        for block, info in list(entry["blocks"].items()):
            empty_since = info.get("empty_since")
            if empty_since is None or now - empty_since < cluster.grace:
                continue
            if info.get("revision"):
                key = block_key(subnet, block)
                # only if still ours and unchanged since our claim
                cluster.store_call("release a block", cluster.store.delete_if, key,
                                   info["revision"])
            del entry["blocks"][block]
            released.append(block)
        if not entry["blocks"] and not entry["allocated"]:
            del state["subnets"][subnet]
    return released


def drop_subnet_if_unused(cluster, state, subnet):
    """Without a store a host's range is given up with its last pool of the subnet."""
    entry = state["subnets"].get(str(subnet))
    in_use = any(p["subnet"] == str(subnet) for p in state["pools"].values())
    if entry is not None and not in_use and cluster.store is None and not entry["allocated"]:
        del state["subnets"][str(subnet)]


def reconcile_with_store(cluster, state):
    """After a restart or an outage: blocks the store says are ours but the state file
    lacks (a crash between claim and save) are added; blocks the state file has but the
    store gave to another host (`rmpeer` while this host was away) stop being used."""
    for subnet, entry in state["subnets"].items():
        held = cluster.store.get_prefix(blocks_prefix(subnet))
        for key, (value, revision) in held.items():
            block = key[len(blocks_prefix(subnet)):].replace("-", "/")
            if json.loads(value).get("host") == cluster.host and block not in entry["blocks"]:
                entry["blocks"][block] = {"empty_since": time.time(), "revision": revision}
        for block, info in list(entry["blocks"].items()):
            current = held.get(block_key(subnet, block))
            if current is None:  # the store lost it (wiped?): claim it again
                if cluster.store.create(block_key(subnet, block), _claim_value(cluster)):
                    info["revision"] = cluster.store.get(block_key(subnet, block))[1]
                    continue
                current = cluster.store.get(block_key(subnet, block))
            if current and json.loads(current[0]).get("host") != cluster.host:
                log.error("block %s of %s now belongs to %s: no new addresses from it",
                          block, subnet, json.loads(current[0]).get("host"))
                info["lost"] = True


def mesh_conflicts(cluster, state):
    """[(subnet, our range, other host, its range)] where another host announced an
    overlapping range before us (earlier `since`, then the smaller name, wins)."""
    if cluster.mesh is None or cluster.store is not None:
        return []
    conflicts = []
    for host, announced in cluster.mesh.peers(MESH_KEY).items():
        if host == cluster.host or not isinstance(announced, dict):
            continue
        for subnet, ranges in announced.items():
            entry = state["subnets"].get(subnet)
            if entry is None:
                continue
            for block, info in entry["blocks"].items():
                for other in ranges:
                    if not ipaddress.ip_network(block).overlaps(ipaddress.ip_network(other["range"])):
                        continue
                    if (other["since"], host) < (info["since"], cluster.host):
                        conflicts.append((subnet, block, host, other["range"]))
    return conflicts


def announcement(state):
    """What this host announces through the mesh: {subnet: [{range, since}]}."""
    return {subnet: [{"range": block, "since": info.get("since", 0)}
                     for block, info in entry["blocks"].items()]
            for subnet, entry in state["subnets"].items()}


def summary(state):
    """This host's blocks and their use, for status and `weavefast ipam`."""
    subnets = {}
    for subnet, entry in state["subnets"].items():
        net = ipaddress.ip_network(subnet)
        subnets[subnet] = [{"block": block, "used": sum(_in(a, block) for a in entry["allocated"]),
                            "size": len(usable(net, ipaddress.ip_network(block),
                                               info.get("trim"))),
                            **({"lost": True} if info.get("lost") else {})}
                           for block, info in sorted(entry["blocks"].items())]
    return subnets


# -- helpers ------------------------------------------------------------------------

def _in(address, block):
    return ipaddress.ip_address(address) in ipaddress.ip_network(block)


def _owned_block(entry, address):
    for block, info in entry["blocks"].items():
        if not info.get("lost") and _in(address, block):
            return block
    return None


def _take(entry, address):
    entry["allocated"].append(address)
    block = _owned_block(entry, address)
    if block:
        entry["blocks"][block]["empty_since"] = None
    return address


def _next_free(entry, subnet):
    """The first free address after the last one handed out (wrapping, block by block),
    so that an address just released is the last to be reused: ARP caches elsewhere
    still point at its old owner for a while."""
    candidates = []
    for block, info in sorted(entry["blocks"].items(),
                              key=lambda b: ipaddress.ip_network(b[0])):
        if not info.get("lost"):
            candidates.extend(usable(subnet, ipaddress.ip_network(block), info.get("trim")))
    taken = {int(ipaddress.ip_address(a)) for a in entry["allocated"]}
    start = 0
    if entry["last"] and int(ipaddress.ip_address(entry["last"])) in candidates:
        start = candidates.index(int(ipaddress.ip_address(entry["last"]))) + 1
    for i in range(len(candidates)):
        candidate = candidates[(start + i) % len(candidates)]
        if candidate not in taken:
            return str(ipaddress.ip_address(candidate))
    return None


def _claim_value(cluster):
    return json.dumps({"host": cluster.host, "claimed": time.time()})


def _claim(cluster, entry, subnet, block):
    """Claim `block` of `subnet` in the store (create-if-absent); True if it is now ours."""
    key = block_key(str(subnet), str(block))
    if not cluster.store_call("claim an address block", cluster.store.create, key,
                              _claim_value(cluster)):
        return False
    found = cluster.store_call("read the store", cluster.store.get, key)
    entry["blocks"][str(block)] = {"empty_since": None, "revision": found[1] if found else 0,
                                   "since": time.time()}
    log.info("claimed block %s of %s", block, subnet)
    return True


def _claim_block(cluster, entry, subnet, limit):
    """Claim the first block of `limit` that no host holds; PluginError when none is left."""
    held = cluster.store_call("claim an address block", cluster.store.get_prefix,
                              blocks_prefix(str(subnet)))
    size = max(cluster.block_prefix, limit.prefixlen)
    for block in limit.subnets(new_prefix=size):
        if block_key(str(subnet), str(block)) in held:
            continue
        if len(usable(subnet, block)) and _claim(cluster, entry, subnet, block):
            return
    raise PluginError(f"every block of {limit} is held by some host: remove containers, "
                      "reclaim a departed host's blocks (weavefast ipam rmpeer HOST), "
                      "or use a larger subnet")


def own_range(cluster, state, subnet, ip_range):
    """Without a store: this host's one range, and a refusal if another host had it first."""
    entry = subnet_state(state, subnet)
    if str(ip_range) not in entry["blocks"]:
        entry["blocks"][str(ip_range)] = {"empty_since": None, "since": time.time(),
                                          "trim": ip_range != subnet}
    for conflict_subnet, mine, host, theirs in mesh_conflicts(cluster, state):
        if conflict_subnet == str(subnet):
            raise PluginError(
                f"host {host} already hands out addresses from {theirs} of {subnet}, which "
                f"overlaps this host's {mine}: give each host its own part with "
                f"--ip-range, or run every router with --store etcd://HOST:2379")


def _mesh_owner(cluster, subnet, address):
    if cluster.mesh is None:
        return None
    for host, announced in cluster.mesh.peers(MESH_KEY).items():
        if host == cluster.host or not isinstance(announced, dict):
            continue
        for other in announced.get(str(subnet), []):
            if _in(address, other["range"]):
                return host
    return None


class MeshLink:
    """The router's control plane as seen by the plugin: announcements through gossip.

    The plugin starts before the control plane; what it announces meanwhile is held."""

    def __init__(self):
        self.control = None
        self._held = {}

    def attach(self, control):
        self.control = control
        for key, value in self._held.items():
            control.announce(key, value)

    def publish(self, key, value):
        if self.control is None:
            self._held[key] = value
        else:
            self.control.announce(key, value)

    def peers(self, key):
        return self.control.announcements(key) if self.control is not None else {}


def cluster_blocks(store):
    """({host: {subnet: [block]}} as the store holds them, {live host: its blocks' use})."""
    hosts = {}
    prefix = f"{KEY_PREFIX}/ipam/"
    for key, (value, _) in store.get_prefix(prefix).items():
        subnet, _, block = key[len(prefix):].partition("/")
        owner = json.loads(value).get("host", "?")
        hosts.setdefault(owner, {}).setdefault(subnet.replace("-", "/"), []).append(
            block.replace("-", "/"))
    live = {key.rsplit("/", 1)[1]: json.loads(value).get("blocks") or {}
            for key, (value, _) in store.get_prefix(f"{KEY_PREFIX}/hosts/").items()}
    return hosts, live


def remove_host(store, host):
    """`weavefast ipam rmpeer HOST`: give the blocks of a host that is gone for good back.

    Refused while HOST's router holds its lease. Each block is deleted only if it is
    still HOST's and unchanged since it was read (compare-and-swap), so a second run,
    or one racing with a new claim, removes nothing it should not. Returns the blocks."""
    if store.get(host_key(host)) is not None:
        raise PluginError(f"host {host} is alive (its router holds its lease in the store): "
                          "stop its router first, or wait until the lease ends")
    removed = []
    prefix = f"{KEY_PREFIX}/ipam/"
    for key, (value, revision) in store.get_prefix(prefix).items():
        if json.loads(value).get("host") == host and store.delete_if(key, revision):
            removed.append(key[len(prefix):].replace("-", "/"))
    store.delete_prefix(f"{KEY_PREFIX}/dns/{host}/")
    return removed
