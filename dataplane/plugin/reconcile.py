"""Reconciliation with dockerd: free what no container uses any more.

dockerd forgets a container whose removal the plugin could not answer (the plugin
was down or restarting): its endpoint, its veth pair and its address then stay in
the plugin's state for ever, and the address is never handed out again. So the
plugin also asks dockerd itself, through its API socket (the `docker` SDK), what
exists: the networks whose driver or IPAM driver is this plugin, their gateways and
the endpoints and addresses of their containers. Anything of the plugin's state
that Docker does not know is a leak:

- a network Docker does not have (with its endpoints),
- an endpoint no container of its network has (and its veth pair),
- a pool no network of Docker uses,
- an address of this host's blocks of a subnet (blocks.py) that is neither a gateway
  nor a container's address on a network of Docker with that subnet (all of them when
  no network of Docker has the subnet).

A leak is freed once it has looked leaked for `grace` seconds (one reconciliation
interval): a container being created holds its address a moment before Docker
shows it, and a network exists in the plugin a moment before it does in Docker.
Passes run at start, every interval, and a second after each plugin call that
changes something (that pass also learns the new containers' names for the status).
So a leak lives at most about two intervals once both the plugin and dockerd run.

Talking to dockerd happens without the state lock and with a timeout: dockerd may
be waiting on a plugin call itself (at boot it restores containers before its API
answers), and the plugin must never make it wait in return.
"""
import dataclasses
import ipaddress
import logging
import threading
import time

from dataplane.plugin import blocks
from dataplane.plugin.driver import delete_veth
from dataplane.plugin.protocol import PluginError

DEFAULT_INTERVAL = 30.0  # seconds
DOCKER_TIMEOUT = 5.0  # seconds for one API call to dockerd
AFTER_CALL_DELAY = 1.0  # seconds after a plugin call before looking at Docker again

log = logging.getLogger("weavefast.plugin")


@dataclasses.dataclass
class DockerNetwork:
    name: str
    ours: bool  # its driver is this plugin
    gateway: bool  # dockerd told its gateway
    subnets: set  # of its IPAM pools, when its IPAM driver is this plugin
    in_use: set  # gateways and container addresses (no prefix length)
    endpoints: dict  # endpoint id -> container name


def docker_networks(docker, driver_name, timeout=DOCKER_TIMEOUT):
    """{network id: DockerNetwork} for dockerd's networks that use this plugin, asked
    through `docker` (a docker_api.DockerClient).

    Raises DockerError, docker.errors.DockerException or OSError when dockerd does not answer.
    """
    client = docker.api(timeout)
    try:
        networks = {}
        for summary in client.networks():
            ipam_config = summary.get("IPAM") or {}
            ours = summary.get("Driver") == driver_name
            our_ipam = ipam_config.get("Driver") == driver_name
            if not (ours or our_ipam):
                continue
            detail = client.inspect_network(summary["Id"])
            pools = (detail.get("IPAM") or {}).get("Config") or []
            containers = detail.get("Containers") or {}
            gateway = any(pool.get("Gateway") for pool in pools)
            in_use = {_address(pool["Gateway"]) for pool in pools if pool.get("Gateway")}
            in_use |= {_address(c["IPv4Address"]) for c in containers.values()
                       if c.get("IPv4Address")}
            networks[summary["Id"]] = DockerNetwork(
                name=detail.get("Name", ""), ours=ours, gateway=gateway,
                subnets={_normal(pool["Subnet"]) for pool in pools
                         if our_ipam and pool.get("Subnet")},
                in_use=in_use,
                endpoints={c["EndpointID"]: c.get("Name", "") for c in containers.values()
                           if c.get("EndpointID")})
        return networks
    finally:
        client.close()


def leaks(state, networks):
    """What of `state` Docker's `networks` do not use, as keys for `free()`."""
    found = set()
    endpoints_in_docker = {endpoint for network in networks.values()
                           for endpoint in network.endpoints}
    for network_id in state["networks"]:
        if not (network_id in networks and networks[network_id].ours):
            found.add(("network", network_id))
    for endpoint_id, endpoint in state["endpoints"].items():
        if endpoint_id not in endpoints_in_docker:
            found.add(("endpoint", endpoint_id))
    for pool_id, pool in state["pools"].items():
        if not any(_normal(pool["subnet"]) in n.subnets for n in networks.values()):
            found.add(("pool", pool_id))
    # addresses are kept per subnet (blocks.py), shared by the pools of that subnet
    for subnet, entry in state["subnets"].items():
        users = [n for n in networks.values() if subnet in n.subnets]
        in_use = set()  # with no network of Docker on the subnet, none of its addresses
        if users:
            # dockerd reports a gateway it was not given only until it restarts: the one
            # it got at CreateNetwork counts too, and without any, no address is freed
            gateways = {_address(n["gateway"]) for n in state["networks"].values()
                        if n.get("gateway") and n.get("subnet")
                        and _normal(n["subnet"]) == subnet}
            if not gateways and not any(n.gateway for n in users):
                continue
            in_use = in_use.union(gateways, *(n.in_use for n in users))
        found |= {("address", subnet, address) for address in entry["allocated"]
                  if address not in in_use}
    return found


def free(state, driver, ipam, leak):
    """Free one leak in `state` as the call dockerd could not make would have."""
    kind, key = leak[0], leak[1]
    if kind == "network" and key in state["networks"]:
        driver.delete_network(state, {"NetworkID": key})
    elif kind == "endpoint" and key in state["endpoints"]:
        delete_veth(key)
        del state["endpoints"][key]
    elif kind == "pool" and key in state["pools"]:
        ipam.release_pool(state, {"PoolID": key})
    elif kind == "address" and leak[2] in state["subnets"].get(key, {}).get("allocated", []):
        blocks.release(state, key, leak[2])
        blocks.drop_subnet_if_unused(ipam.cluster, state, key)  # its pool may have gone first

def describe(leak):
    return f"{leak[0]} {leak[2] if leak[0] == 'address' else leak[1][:12]}"


class Reconciler:
    """The thread that compares the plugin's state with dockerd's and frees leaks."""

    def __init__(self, store, driver, ipam, docker, driver_name, interval=DEFAULT_INTERVAL,
                 on_error=lambda message: None):
        self.store, self.driver, self.ipam = store, driver, ipam
        self.docker, self.docker_host = docker, docker.docker_host
        self.driver_name = driver_name
        self.interval = interval
        self.on_error = on_error
        self.networks = {}  # Docker's view at the last pass that reached dockerd
        self.last_pass = None  # {"time", "freed"} of the last pass that reached dockerd
        self._suspects = {}  # leak -> when it was first seen
        self._docker_error = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weavefast-plugin-reconcile",
                                        daemon=True)

    def start(self):
        self._thread.start()

    def close(self):
        self._closing.set()
        self._wake.set()
        self._thread.join()

    def soon(self):
        """Look at Docker again shortly (after a call that changed the state)."""
        self._wake.set()

    def _run(self):
        while not self._closing.is_set():
            self.run_once()
            self._wake.wait(self.interval)
            if self._closing.wait(AFTER_CALL_DELAY if self._wake.is_set() else 0):
                return
            self._wake.clear()

    def run_once(self):
        """One pass; returns the leaks freed (descriptions)."""
        try:
            networks = docker_networks(self.docker, self.driver_name)
        except Exception as e:  # dockerd not running yet (at boot), or gone
            self._report_docker(f"cannot ask dockerd at {self.docker_host} what is in use "
                                f"({e}); leaks are freed once it answers")
            return []
        self._report_docker(None)
        self.networks = networks
        now = time.monotonic()
        freed = []
        try:
            with self.store.transaction() as state:
                current = leaks(state, networks)
                self._suspects = {leak: self._suspects.get(leak, now) for leak in current}
                # networks first: freeing one frees its endpoints too
                for leak in sorted(current, key=lambda leak: leak[0] != "network"):
                    if now - self._suspects[leak] >= self.interval:
                        free(state, self.driver, self.ipam, leak)
                        del self._suspects[leak]
                        freed.append(describe(leak))
        except (PluginError, OSError) as e:
            self.on_error(f"reconciliation: {e}")
            log.warning("reconciliation failed: %s", e)
            return []
        if freed:
            log.info("freed what no container uses any more: %s", ", ".join(freed))
        self.last_pass = {"time": time.time(), "freed": freed}
        return freed

    def _report_docker(self, error):
        """Log a change of dockerd's reachability once, not at every pass."""
        if error == self._docker_error:
            return
        self._docker_error = error
        if error:
            self.on_error(error)
            log.warning("%s", error)
        else:
            log.info("reconciling with dockerd at %s every %g s", self.docker_host, self.interval)


def _address(text):
    return text.split("/")[0]


def _normal(subnet):
    return str(ipaddress.ip_network(subnet, strict=False))
