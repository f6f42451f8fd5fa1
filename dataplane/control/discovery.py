"""Membership through the cluster store (`weavefast router --store etcd://...`).

Each router registers itself under ROUTERS_PREFIX (`/weavefast/routers/<peer id>`, a
small JSON object: name, peer id, the address and port other routers dial) with a lease
of LEASE_TTL seconds that it keeps alive, and watches the prefix (a listing, then a
watch from the listing's revision; a watch that breaks is opened again with backoff).
Every router found is handed to the control plane (`ControlPlane.learn_peer`, on the
asyncio loop), which connects to it as to one heard of through gossip: no `--peer`
list is needed.

What the store says only adds peers. A key that disappears (the lease ended, the
router stopped) removes nothing: liveness in the mesh decides. The store being away
or the lease lost changes nothing in the mesh either; registration is retried, and
the router's status says so (`membership`, and a degradation). What the store holds
is trusted no more than gossip: entries are size-bounded and validated like gossip
messages (messages.py), at most `max_peers` are kept, and what is refused is counted
and logged once per key.

The control plane does not depend on this module; router.py wires the two.
"""
import base64
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass

from dataplane.addresses import format_address
from dataplane.control import messages
from dataplane.control.errors import ProtocolError
from dataplane.store import StoreError, StoreUnavailable
from dataplane.store.etcd import AnswerTooLarge

log = logging.getLogger("weavefast.discovery")

ROUTERS_PREFIX = "/weavefast/routers/"
MIN_LEASE_TTL = 10            # seconds; the lease is also at least 2 x --down-after
MAX_ENTRY_BYTES = 512         # one router's value (ours is about 100 bytes)
MAX_KEY_BYTES = len(ROUTERS_PREFIX) + 10
MAX_LISTING_BYTES = 1 << 20   # one listing of the prefix
MAX_WATCH_MESSAGE = 256 << 10  # one message of the watch stream
WATCH_IDLE = 30.0             # seconds a quiet watch is kept before it is opened again
RELEARN_INTERVAL = 10.0       # routers in the store are offered to the mesh again this often
BACKOFF_INITIAL, BACKOFF_MAX = 0.5, 5.0
MAX_LOGGED_KEYS = 1024        # refused keys remembered, to log each once


@dataclass(frozen=True)
class RouterEntry:
    peer_id: int
    name: str
    host: str
    port: int


def lease_ttl(down_after):
    return max(MIN_LEASE_TTL, math.ceil(2 * down_after))


def router_key(peer_id):
    return f"{ROUTERS_PREFIX}{peer_id}"


def entry_value(entry):
    return json.dumps({"name": entry.name, "peer_id": entry.peer_id, "host": entry.host,
                       "port": entry.port})


def check_host(value, what="host"):
    """An IP address other hosts can dial (v4 or v6, normalised); ProtocolError if not."""
    try:
        if type(value) is not str or len(value) > 45:
            raise ValueError
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ProtocolError(f"{what} must be an IP address, got {messages.quote(value)}") from None
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise ProtocolError(f"{what} {address} cannot be dialled from other hosts")
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    return str(address)


def parse_entry(key, value):
    """The RouterEntry a store entry (key and value as bytes) describes; ProtocolError
    with one reason for anything else."""
    if len(key) > MAX_KEY_BYTES:
        raise ProtocolError(f"key longer than {MAX_KEY_BYTES} bytes")
    try:
        text_key = key.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"key {messages.quote(key)} is not ASCII") from None
    suffix = text_key[len(ROUTERS_PREFIX):]
    if not text_key.startswith(ROUTERS_PREFIX) or not suffix.isdigit() or suffix != str(int(suffix)):
        raise ProtocolError(f"key {messages.quote(text_key)} is not {ROUTERS_PREFIX}<peer id>")
    if len(value) > MAX_ENTRY_BYTES:
        raise ProtocolError(f"value of {len(value)} bytes, more than {MAX_ENTRY_BYTES}")
    try:
        fields = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"value is not JSON: {messages.quote(value)}") from None
    if type(fields) is not dict:
        raise ProtocolError(f"value must be a JSON object, got {messages.quote(fields)}")
    what = "router entry"
    peer_id = messages.peer_id(fields, "peer_id", what)
    if str(peer_id) != suffix:
        raise ProtocolError(f"peer_id {peer_id} does not match its key {messages.quote(text_key)}")
    name = messages.name(fields, "name", what)
    host = check_host(fields.get("host"), f"{what}: host")
    port = messages.integer(fields, "port", 1, 65535, what)
    return RouterEntry(peer_id, name, host, port)


def advertise_address(store, given=None):
    """The address to register: `given` (--advertise-address, resolved), or the source
    address this host uses toward the store. ValueError names the flag when neither works."""
    if given:
        try:
            infos = socket.getaddrinfo(given, None, type=socket.SOCK_DGRAM)
        except socket.gaierror:
            raise ValueError(f"--advertise-address {given!r} does not resolve: give this "
                             "host's IP address as other routers reach it") from None
        host = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0][4][0]
        try:
            return check_host(host, f"--advertise-address {given}")
        except ProtocolError as e:
            raise ValueError(f"{e}: give this host's address as other routers reach it") from None
    errors = []
    for store_host, store_port in store.endpoints:
        try:
            infos = socket.getaddrinfo(store_host, store_port, type=socket.SOCK_DGRAM)
        except socket.gaierror as e:
            errors.append(f"{store_host}: {e.strerror}")
            continue
        for family, _, _, _, address in infos:
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect(address)  # no packet: only picks the route and source
                    source = probe.getsockname()[0]
            except OSError as e:
                errors.append(f"{store_host}: {e.strerror}")
                continue
            try:
                return check_host(source.split("%")[0])
            except ProtocolError:
                errors.append(f"{store_host} is reached from {source}, which other hosts "
                              "cannot dial")
    raise ValueError("cannot tell which address other routers should dial ("
                     + "; ".join(errors) + "): give --advertise-address HOST")


class StoreDiscovery:
    """Registers this router in the store and hands the routers found there to `learn`
    (called on the asyncio loop). Runs two threads: the registration (lease) and the
    watch."""

    def __init__(self, store, me, ttl=MIN_LEASE_TTL, max_peers=250):
        self.store, self.me, self.ttl, self.max_peers = store, me, ttl, max_peers
        self.key = router_key(me.peer_id)
        self.entries = {}  # key (bytes) -> RouterEntry, other routers' only
        self.rejected = 0  # entries refused (each key and revision once)
        self.registered = False
        self.registrations = 0  # leases granted and keys written
        self.revision = 0  # of the store, as far as the watch has seen
        self._lease = None
        self._errors = {}  # "registration" | "watch" -> (error, since)
        self._logged = {}  # key -> mod revision last refused (bounded)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reregister = threading.Event()
        self._watch = None
        self._threads = []
        self._loop = self._learn = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, loop, learn):
        self._loop, self._learn = loop, learn
        for target, name in ((self._keep_registered, "weavefast-register"),
                             (self._keep_watching, "weavefast-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._loop.call_later(RELEARN_INTERVAL, self._relearn)

    def stop(self):
        """Stops both threads and revokes the lease, so that others see this router leave
        at once (blocking: at most the store's timeout per endpoint)."""
        self._closing.set()
        self._reregister.set()
        self._kick_watch()
        for thread in self._threads:
            thread.join(timeout=self.store.timeout * len(self.store.endpoints) + 1)
        if self._lease is not None:
            try:
                self.store.revoke_lease(self._lease)
                log.info("left the store: lease revoked, %s removed", self.key)
            except StoreError as e:
                log.warning("could not revoke the lease (%s): %s goes when it ends", e, self.key)
            self._lease = None

    # -- status ------------------------------------------------------------------------

    def _set_error(self, what, error):
        with self._lock:
            if error is None:
                gone = self._errors.pop(what, None)
                if gone:
                    log.warning("store reachable again (%s)", what)
                return
            if what not in self._errors:
                log.warning("store: %s failed: %s (the mesh keeps its peers; retrying)",
                            what, error)
                self._errors[what] = (str(error), time.time())
            else:
                self._errors[what] = (str(error), self._errors[what][1])

    def status(self):
        with self._lock:
            errors = dict(self._errors)
        error = errors.get("registration") or errors.get("watch")
        return {
            "store": self.store.display,
            "key": self.key,
            "advertised": format_address((self.me.host, self.me.port)),
            "lease_ttl": self.ttl,
            "state": "unreachable" if error else "registered" if self.registered else "registering",
            "registered": self.registered,
            "error": error[0] if error else None,
            "since": min(e[1] for e in errors.values()) if errors else None,
            "routers": len(self.entries),
            "rejected": self.rejected,
        }

    def degradations(self):
        """[{"what", "why", "fix"}] while the store is away or this router is not in it."""
        status = self.status()
        if status["state"] != "unreachable":
            return []
        seconds = max(0, round(time.time() - status["since"]))
        return [{"what": "membership store",
                 "why": f"etcd {status['store']} unreachable for {seconds} s ({status['error']}): "
                        "the mesh keeps the peers it knows, but this router "
                        f"{'may not be' if self.registered else 'is not'} registered and routers "
                        "that join now are not found through the store",
                 "fix": "bring etcd back (or check --store); registration and the watch are "
                        "retried on their own"}]

    # -- registration --------------------------------------------------------------------

    def _keep_registered(self):
        failures, force = 0, False
        while not self._closing.is_set():
            try:
                self._register(force)
                failures = 0
                self._set_error("registration", None)
                delay = self.ttl / 3
            except Exception as e:  # noqa: BLE001 - StoreError, or a bug: retried alike
                if not isinstance(e, StoreError):
                    log.exception("store registration failed")
                failures += 1
                self._set_error("registration", e)
                if failures == 1:
                    self._kick_watch()  # a silent partition: the watch would not notice
                delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (failures - 1), self.ttl / 3)
            force = self._reregister.wait(delay) or (force and failures > 0)
            self._reregister.clear()

    def _register(self, force=False):
        """Keeps the lease alive; grants a new one and writes the key when the lease is
        lost, or the key again when `force` (it was deleted)."""
        if self._lease is not None and self.registered:
            if self.store.keep_alive(self._lease):
                if not force:
                    return
            else:
                log.warning("store: lease of %s lost (expired): registering again", self.key)
                self.registered = False
                self._lease = None
        if self._lease is None:
            self._lease = self.store.grant_lease(self.ttl)
        try:
            self.store.put(self.key, entry_value(self.me), self._lease)
        except StoreUnavailable:
            raise
        except StoreError:
            self._lease = None  # refused: most likely the lease ended meanwhile
            raise
        if not self.registered:
            log.info("registered in the store as %s (%s, lease %d s)", self.key,
                     format_address((self.me.host, self.me.port)), self.ttl)
        self.registered = True
        self.registrations += 1

    # -- discovery -----------------------------------------------------------------------

    def _kick_watch(self):
        watch = self._watch
        if watch is not None:
            watch.interrupt()

    def _keep_watching(self):
        failures, listed = 0, False
        while not self._closing.is_set():
            try:
                if not listed:
                    self._list()
                    listed = True
                    self._set_error("watch", None)
                self._watch_once()
                failures = 0
                self._set_error("watch", None)
                continue  # quiet for WATCH_IDLE: opened again from the same revision
            except _Relist:
                listed = False
                failures = 0
                self._set_error("watch", None)
                continue
            except StoreError as e:
                if self._closing.is_set():
                    break
                failures += 1
                listed = False  # what changed meanwhile may be compacted away: list again
                self._set_error("watch", e)
            except Exception as e:  # noqa: BLE001 - a bug must not end discovery for good
                failures += 1
                listed = False
                log.exception("store watch failed")
                self._set_error("watch", f"{type(e).__name__}: {e}")
            self._closing.wait(min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (failures - 1)))

    def _list(self):
        limit = 2 * self.max_peers + 2
        try:
            found, revision, more = self.store.range_raw(ROUTERS_PREFIX, limit=limit,
                                                         max_bytes=MAX_LISTING_BYTES)
        except AnswerTooLarge:
            # large values in the prefix: list the keys, then read each one bounded
            keys, revision, more = self.store.range_raw(ROUTERS_PREFIX, limit=limit,
                                                        max_bytes=MAX_LISTING_BYTES,
                                                        keys_only=True)
            found = {}
            for key, (_, mod_revision) in keys.items():
                if len(key) > MAX_KEY_BYTES:
                    found[key] = (b"", mod_revision)  # refused by parse_entry
                    continue
                try:
                    got = self.store.get_raw(key, max_bytes=4 * MAX_ENTRY_BYTES)
                except AnswerTooLarge:
                    self._refuse(key, mod_revision, f"value larger than {MAX_ENTRY_BYTES} bytes")
                    continue
                if got is not None:
                    found[key] = got
        if more:
            log.warning("store: more than %d keys under %s: the rest are not read", limit,
                        ROUTERS_PREFIX)
        with self._lock:
            self.entries = {k: e for k, e in self.entries.items() if k in found}
        for key, (value, mod_revision) in found.items():
            self._put(key, value, mod_revision)
        self.revision = revision
        log.info("store: %d router(s) under %s at revision %d", len(self.entries),
                 ROUTERS_PREFIX, revision)

    def _watch_once(self):
        watch = self.store.watch_prefix(ROUTERS_PREFIX, self.revision + 1, WATCH_IDLE,
                                        MAX_WATCH_MESSAGE)
        self._watch = watch
        self._set_error("watch", None)
        try:
            if self._closing.is_set():
                return
            while not self._closing.is_set():
                try:
                    result = watch.next()
                except TimeoutError:
                    return
                except AnswerTooLarge as e:
                    log.info("store: %s; listing the prefix instead", e)
                    raise _Relist() from None
                if result.get("canceled") or result.get("compact_revision"):
                    raise _Relist()  # compacted past our revision
                for event in result.get("events") or ():
                    self._event(event)
        finally:
            self._watch = None
            watch.close()

    def _event(self, event):
        kv = event.get("kv") or {}
        try:
            key = base64.b64decode(kv.get("key", ""))
            value = base64.b64decode(kv.get("value", ""))
            mod_revision = int(kv.get("mod_revision", 0))
        except (ValueError, TypeError):
            return
        # where the watch goes on from if it is opened again (only events move it: a
        # message's header may be ahead of events still to come)
        self.revision = max(self.revision, mod_revision)
        if event.get("type") == "DELETE":
            with self._lock:
                gone = self.entries.pop(key, None)
            if gone:
                log.info("store: %s (peer id %d) left the store; the mesh decides whether it "
                         "is down", gone.name, gone.peer_id)
            elif key == self.key.encode() and not self._closing.is_set():
                self._reregister.set()  # ours: deleted by hand, or our lease ended
            return
        self._put(key, value, mod_revision)

    def _put(self, key, value, mod_revision):
        if key == self.key.encode():
            return
        try:
            entry = parse_entry(key, value)
            if entry.peer_id == self.me.peer_id:
                raise ProtocolError(f"claims this router's own peer id {entry.peer_id}")
            with self._lock:
                if key not in self.entries and len(self.entries) >= self.max_peers:
                    raise ProtocolError(f"more routers in the store than the peer cap "
                                        f"({self.max_peers})")
                old, self.entries[key] = self.entries.get(key), entry
        except ProtocolError as e:
            with self._lock:
                self.entries.pop(key, None)
            self._refuse(key, mod_revision, str(e))
            return
        if old != entry:
            self._offer([entry])

    def _refuse(self, key, mod_revision, reason):
        with self._lock:
            if self._logged.get(key) == mod_revision:
                return  # the same entry seen again (a listing after a watch)
            self.rejected += 1
            first = key not in self._logged
            if len(self._logged) >= MAX_LOGGED_KEYS:
                self._logged.pop(next(iter(self._logged)))
            self._logged[key] = mod_revision
        if first:
            log.warning("store: ignored %s: %s (counted in status; logged once per key)",
                        messages.quote(key.decode("ascii", "replace")), reason)

    def _offer(self, entries):
        def learn():
            for e in entries:
                self._learn(e.peer_id, e.name, e.host, e.port)
        try:
            self._loop.call_soon_threadsafe(learn)
        except RuntimeError:  # the loop is closed: shutting down
            pass

    def _relearn(self):
        """Runs on the loop: offers every router in the store again, so that one the mesh
        dropped (never reached within its time) is tried again while its key exists."""
        if self._closing.is_set():
            return
        with self._lock:
            entries = list(self.entries.values())
        for e in entries:
            self._learn(e.peer_id, e.name, e.host, e.port)
        self._loop.call_later(RELEARN_INTERVAL, self._relearn)


class _Relist(Exception):
    """The watch cannot go on from our revision: list the prefix again."""

