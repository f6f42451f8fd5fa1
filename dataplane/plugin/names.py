"""Containers' names on every host, and the previous address of a container that starts again.

The plugin API never says which container an endpoint is for, so this follows
dockerd's events (container start/die/destroy, network connect/disconnect) and
inspects the containers on weavefast networks: each gives records {names, ip,
subnet} (its name, its network aliases, its short id). Records are kept:

- in the store when there is one, under /weavefast/dns/HOST/, attached to the
  host's lease (also /weavefast/hosts/HOST, with the use of the host's blocks, which
  `weavefast ipam` shows and `weavefast ipam rmpeer` checks):
  a host that dies loses its records when the lease ends; after a store outage the
  host grants itself a new lease and writes its records again;
- in the mesh otherwise (ControlPlane.announce), dropped when a router goes.

Every host's DNS server (dataplane/dns) answers from its own records plus the
store's (read every REFRESH seconds) or the mesh's.

Stable addresses: the last address of each container on each subnet is kept in the
state file. When an address is asked for and exactly one known container that is not
running had an address in that subnet, and dockerd lists no container that was never
started (a new one might be the one asking), that container is the one starting
again: it gets its address back if it is free. When dockerd does not answer at all
it is restoring its containers after a restart, when no new container can be made.
"""
import json
import logging
import threading
import time

from dataplane.plugin.blocks import KEY_PREFIX, host_key
from dataplane.plugin.docker_api import DockerError
from dataplane.store import StoreError

log = logging.getLogger("weavefast.plugin")

MESH_KEY = "dns"
LEASE_TTL = 15  # seconds: a dead host's names disappear within this
REFRESH = 1.0  # seconds between reads of the store's records
RECONNECT = 1.0
ASK_DOCKER_TIMEOUT = 1.0


def records_prefix(host=None):
    return f"{KEY_PREFIX}/dns/" + (f"{host}/" if host else "")


class Names:
    def __init__(self, state_store, cluster, docker, usage=dict):
        self.state_store = state_store  # the plugin's StateStore (networks, previous addresses)
        self.usage = usage  # () -> this host's blocks and their use (blocks.summary)
        self._usage_written = self._since = None
        self.cluster = cluster
        self.docker = docker
        self.local = {}  # "container.network" -> {"names", "ip", "subnet", "container"}
        self.remote = []  # records of other hosts (from the store)
        self.running = set()  # ids of the containers dockerd runs now
        self.docker_connected = False
        self._lease = None
        self._dirty = True  # local records changed since they were last written to the store
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._follow_docker, daemon=True,
                                          name="weavefast-names")]
        if cluster.store is not None:
            self._threads.append(threading.Thread(target=self._sync_store, daemon=True,
                                                  name="weavefast-names-store"))
        for thread in self._threads:
            thread.start()

    # -- lookups (DNS server threads) ---------------------------------------------------

    def records(self):
        with self._lock:
            mine = list(self.local.values())
            remote = list(self.remote)
        if self.cluster.store is None and self.cluster.mesh is not None:
            remote = [r for host, records in self.cluster.mesh.peers(MESH_KEY).items()
                      if host != self.cluster.host for r in records]
        return mine + remote

    def lookup(self, name):
        return sorted({r["ip"] for r in self.records() if name in r["names"]})

    def reverse(self, ip):
        for record in self.records():
            if record["ip"] == ip and record["names"]:
                return record["names"][0]
        return None

    # -- stable addresses (called by the IPAM handler, plugin lock held) ----------------

    def previous_address(self, state, subnet):
        taken = set(state["subnets"].get(subnet, {}).get("allocated", []))
        candidates = [addresses[subnet] for container, addresses in state.get("previous", {}).items()
                      if container not in self.running and subnet in addresses
                      and addresses[subnet] not in taken]
        if len(candidates) != 1:
            return None
        try:
            if self.docker.containers({"status": ["created"]}, timeout=ASK_DOCKER_TIMEOUT):
                return None  # a new container may be the one asking
        except DockerError:
            pass  # dockerd is restoring its containers: only known ones start
        return candidates[0]

    # -- following dockerd ---------------------------------------------------------------

    def _follow_docker(self):
        while not self._closing.is_set():
            try:
                events = self.docker.events({"type": ["container", "network"]})
                self._resync_all()
                self.docker_connected = True
                for event in events:
                    if self._closing.is_set():
                        return
                    self._on_event(event)
            except DockerError as e:
                if self.docker_connected:
                    log.warning("lost dockerd (%s): its containers are taken as stopped", e)
            except Exception:  # an answer we did not expect: start over rather than stop
                log.exception("following dockerd failed")
            self.docker_connected = False
            self.running.clear()
            self._set_local({})
            self._closing.wait(RECONNECT)

    def _on_event(self, event):
        kind, action = event.get("Type"), event.get("Action", "")
        actor = event.get("Actor", {})
        if kind == "network" and action in ("connect", "disconnect"):
            container = actor.get("Attributes", {}).get("container")
            if container:
                self._resync(container)
        elif kind == "container" and action == "start":
            self.running.add(actor.get("ID"))
            self._resync(actor.get("ID"))
        elif kind == "container" and action in ("die", "destroy"):
            self.running.discard(actor.get("ID"))
            self._set_local({k: r for k, r in self.local.items()
                             if r["container"] != actor.get("ID")})
            if action == "destroy":
                self._forget_previous(actor.get("ID"))

    def _resync_all(self):
        containers = self.docker.containers()
        existing = {c["Id"] for c in containers}
        running = {c["Id"] for c in containers if c.get("State") == "running"}
        self.running = running
        with self.state_store.transaction() as state:  # removed while we were not looking
            previous = state.setdefault("previous", {})
            for container in set(previous) - existing:
                del previous[container]
        records = {}
        for container in running:
            records.update(self._container_records(container))
        self._set_local(records)

    def _resync(self, container):
        records = {k: r for k, r in self.local.items() if r["container"] != container}
        records.update(self._container_records(container))
        self._set_local(records)

    def _container_records(self, container):
        details = self.docker.inspect(container)
        if not details or not details.get("State", {}).get("Running"):
            return {}
        ours = self.state_store.data["networks"]
        name = details["Name"].lstrip("/")
        records, previous = {}, {}
        for settings in (details.get("NetworkSettings", {}).get("Networks") or {}).values():
            network = settings.get("NetworkID")
            ip = settings.get("IPAddress")
            if network not in ours or not ip:
                continue
            subnet = ours[network].get("subnet")
            names = [name] + [a for a in (settings.get("DNSNames") or settings.get("Aliases") or [])
                              if a != name]
            records[f"{container[:12]}.{network[:12]}"] = {
                "names": [n.lower() for n in names], "ip": ip, "subnet": subnet,
                "container": container}
            if subnet:
                previous[subnet] = ip
        if previous:
            self._remember_previous(container, previous)
        return records

    def _remember_previous(self, container, addresses):
        with self.state_store.transaction() as state:
            state.setdefault("previous", {})[container] = addresses

    def _forget_previous(self, container):
        with self.state_store.transaction() as state:
            state.setdefault("previous", {}).pop(container, None)

    def _set_local(self, records):
        with self._lock:
            if records == self.local:
                return
            self.local = records
            self._dirty = True
        if self.cluster.store is None and self.cluster.mesh is not None:
            self.cluster.mesh.publish(MESH_KEY, [
                {k: v for k, v in r.items() if k != "container"} for r in records.values()])

    # -- the store -----------------------------------------------------------------------

    def _sync_store(self):
        store = self.cluster.store
        while not self._closing.is_set():
            try:
                self._keep_lease(store)
                if self._dirty:
                    self._write_records(store)
                self._read_records(store)
                self.cluster.store_error = self.cluster.store_error_since = None
            except StoreError as e:
                if self.cluster.store_error is None:
                    log.warning("store unreachable: %s (names and new blocks wait for it)", e)
                    self.cluster.store_error_since = time.time()
                self.cluster.store_error = str(e)
            self._closing.wait(REFRESH)

    def _keep_lease(self, store):
        """The host's lease and its key, which also tells `weavefast ipam` its blocks' use."""
        usage = self.usage()
        if self._lease is not None and store.keep_alive(self._lease):
            if usage != self._usage_written:
                store.put(host_key(self.cluster.host), json.dumps(
                    {"since": self._since, "blocks": usage}), self._lease)
                self._usage_written = usage
            return
        self._lease = store.grant_lease(LEASE_TTL)
        self._since = time.time()
        store.put(host_key(self.cluster.host), json.dumps({"since": self._since,
                                                           "blocks": usage}), self._lease)
        self._usage_written = usage
        self._dirty = True  # the old lease took our records with it

    def _write_records(self, store):
        with self._lock:
            records, self._dirty = dict(self.local), False
        mine = records_prefix(self.cluster.host)
        try:  # new records first, then the stale ones go: names never vanish in between
            stale = set(store.get_prefix(mine)) - {mine + key for key in records}
            for key, record in records.items():
                store.put(mine + key,
                          json.dumps({k: v for k, v in record.items() if k != "container"}),
                          self._lease)
            for key in stale:
                store.delete(key)
        except StoreError:
            self._dirty = True
            raise

    def _read_records(self, store):
        found = store.get_prefix(records_prefix())
        mine = records_prefix(self.cluster.host)
        remote = [json.loads(value) for key, (value, _) in found.items()
                  if not key.startswith(mine)]
        with self._lock:
            self.remote = remote

    def status(self):
        return {"docker": "connected" if self.docker_connected else "not connected",
                "local_records": len(self.local), "records": len(self.records())}

    def close(self):
        self._closing.set()
        for thread in self._threads[1:]:  # the store's: it may be renewing the lease
            thread.join()
        if self._lease is not None and self.cluster.store is not None:
            try:  # our names and our host key go at once rather than when the lease ends:
                # a router stopped on purpose is not alive (`weavefast ipam rmpeer`)
                self.cluster.store.delete_prefix(records_prefix(self.cluster.host))
                self.cluster.store.delete(host_key(self.cluster.host))
            except StoreError:
                pass
