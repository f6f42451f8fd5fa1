"""The control plane a router runs: membership, liveness, routing.

One TCP control connection per peer pair (protocol.py), whose handshake gives
the session keys the dataplane seals datagrams with (rekeyed every
`rekey_after` seconds), data-path heartbeats as CONTROL datagrams through the
Dataplane facade, a link-state database gossiped over the control
connections, and routes pushed to the dataplane.
Everything runs on one asyncio loop; `status()`, `connect()` and `forget()`
are what the status API exposes.
"""
import asyncio
import logging
import os
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from dataplane.addresses import format_address, parse_hostport
from dataplane.control import messages, protocol
from dataplane.control.admission import ACCEPT_BURST, Admission, QuietLog
from dataplane.control.liveness import Timings, probe_target
from dataplane.control.routing import next_hops

log = logging.getLogger("weavefast.control")

CONNECTING, ESTABLISHED, FAILED, RETRYING = "connecting", "established", "failed", "retrying"
MAX_PEERS_PER_ADDRESS = 4  # routers one IP address may bring in (several ports on one host)
MAX_LINK_STATES = messages.MAX_DIGEST
GOSSIP_BATCH = 0.2  # seconds of changes one gossip message carries
GOSSIP_FANOUT = 3  # routers an entry learned from another goes on to
OWN_LINKS_HOLD = (1.0, 0.05, 5.0)  # between sending our own link state: least, per peer, most
SYNC_INTERVAL = 30.0  # between digest exchanges with one random peer (anti-entropy)
FIRST_SYNC = 3.0  # the first one, after start
SILENCE_ALLOWED = 0.8  # of --down-after since a suspect peer was last heard from
STARVED_LAG = 0.25  # of a probe interval: a wake-up this late means the process was starved
ROUTE_HOLD = 0.25  # least seconds between route computations
DIAL_GRACE = 5.0  # a learned router with a lower peer id dials us; we dial it only after this
HANDSHAKE_TIMEOUT = 10.0  # generous: 64 routers starting on one machine share its cores
CONNECT_TIMEOUT = 5.0
TCP_USER_TIMEOUT_MS = 30_000  # unacknowledged control data this long closes the connection
REFUSALS = {  # counter name -> what the log says
    "connection_rate": f"more than {ACCEPT_BURST} new connections in a burst from it",
    "unauthenticated_connections": "too many connections still in their handshake",
    "unauthenticated_from_source": "too many of its connections still in their handshake",
    "handshake": "handshake failed or refused",
    "peer_table_full": "the peer table is full",
    "peers_from_address": f"more than {MAX_PEERS_PER_ADDRESS} routers from one address",
    "invalid_message": "sent an invalid message",
}


@dataclass
class ControlConfig:
    name: str
    peer_id: int
    port: int = 6783  # TCP control connections and UDP data share the number
    peers: Sequence[str] = ()  # "host[:port]" to connect to at start
    password: bytes | None = None  # network secret; None = no authentication
    down_after: float = 3.0  # a peer silent this long is declared down
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    listen_host: str | None = None  # None = every address
    versions: tuple[int, int] = protocol.VERSIONS
    rekey_after: float = 120.0  # new data keys this often
    ciphers: Sequence[str] | None = None  # data ciphers offered, best first; None = by CPU
    max_peers: int = 250  # the dataplane holds 256

    @property
    def forget_unestablished_after(self):
        """A peer learned from gossip or a connection that never got established,
        and whose connection failed, is dropped from the table this long after it
        was added: fake identities cannot pile up."""
        return 4 * self.down_after

    @property
    def establish_within(self):
        """From a connection's start to the first answered data-path heartbeat."""
        return 2 * self.down_after


def backoff_delay(failures: int, initial: float, cap: float) -> float:
    """Delay before the next attempt after `failures` consecutive failures, with
    jitter so that routers which lost a peer together do not redial it together."""
    return min(cap, initial * 2 ** max(0, failures - 1)) * random.uniform(0.75, 1.0)


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed by the peer"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, (protocol.ProtocolError, protocol.HandshakeError)):
        return str(exc)  # built with what the peer sent already cut short
    return f"{type(exc).__name__}: {str(exc)[:messages.MAX_REASON]}"


def unmapped(host):
    """10.0.0.1 for ::ffff:10.0.0.1 (an IPv4 peer on a dual-stack socket)."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class Connection:
    """An authenticated, sealed control connection and the session keys it gave."""

    def __init__(self, channel: protocol.Channel, outbound, handshake: protocol.Handshake):
        self.channel, self.outbound = channel, outbound
        self.handshake = handshake
        self.identity = handshake.identity
        self.version = handshake.version
        self.remote_host = unmapped(channel.writer.get_extra_info("peername")[0])
        self.opened = self.last_rx = time.monotonic()
        self.establish_by = None  # set when attached: a data-path heartbeat answered by then
        self.epoch = None  # of the key we send with; None until the peer gave its key id
        self.keyed_at = None  # monotonic time the sending key last changed
        self.frames_at_key = 0  # frames both ways with the peer when it did
        self.keys = {0: handshake.data}  # epoch -> keys not yet switched to
        self.rx_key_ids = {}  # epoch -> id of the receive key installed for it
        self.rekey = None  # (epoch, Ephemeral) of a rekey this side started
        self.rekeys = 0

    @property
    def legacy(self):
        """A version-2 peer: heartbeats on the connection, a ping every round, full gossip."""
        return self.version < 3

    def send(self, message):
        self.channel.send(message)

    def close(self):
        self.channel.close()


class Peer:
    """A router this one keeps a connection to (or learned about)."""

    def __init__(self, address, peer_id=None, name=None, configured=False):
        self.address = address  # (host, port) to dial
        self.peer_id, self.name = peer_id, name
        self.configured = configured  # given by --peer or `connect`: kept until forgotten
        self.created = time.monotonic()
        self.established_once = False
        self.endpoint = None  # (ip, data port) seen on the control connection
        self.udp_address = None  # where its data-path heartbeats come from (NAT)
        self.state, self.last_error, self.since = CONNECTING, None, time.time()
        self.conn: Connection | None = None
        self.dialing = False
        self.failures = 0
        self.next_attempt = 0.0
        self.dial_after = 0.0  # learned routers with a lower peer id dial us first
        self.last_heard = None  # monotonic time of its last authentic datagram to us
        self.probe_sent_at = self.probe_rx = None  # this round's probe, its rx_frames then
        self.suspect_since = self.report_at = self.suspect_deadline = self.reported_by = None
        self.highest_ping = -1
        self.rtt = None
        self.in_dataplane = False
        self.heartbeats = {"sent": 0, "answered": 0, "rejected": 0}  # data-path pings, pongs, bad MACs

    @property
    def label(self):
        return self.name or format_address(self.address)


class ControlPlane:
    def __init__(self, dataplane, config: ControlConfig):
        self.dp = dataplane
        self.config = config
        self.me = protocol.Identity(config.name, config.peer_id, config.port, os.urandom(8).hex())
        self.peers: list[Peer] = []
        self.forgotten: list[tuple[int | None, str | None, tuple]] = []  # (peer_id, name, address)
        self.link_states = {}  # peer_id -> {"name", "version", "links": set}
        self.link_version = time.time_ns()  # grows across restarts, so peers take the new state
        self.routes = {}  # peer_id -> (next hop, hop count)
        self._pushed = {}  # peer_id -> (up, via) last given to the dataplane
        self.timings = Timings(config.down_after)
        self.bad_heartbeats = 0
        self.suspicions = self.suspects_reported = self.starved_periods = 0
        self._starved_until = 0.0
        self._ping_seq = 0
        self._tasks = set()
        self._writers = set()
        self._outbox = {}  # gossip entry -> peer id it came from (None: ours)
        self._push_pending = self._routes_pending = False
        self._routes_at = self._own_links_sent = 0.0
        self._next_sync = time.monotonic() + FIRST_SYNC
        self._tick_handle = self._tick_due = None
        self._next_round = 0.0
        # Data other subsystems announce through gossip (the Docker plugin's address ranges
        # and names): peer_id -> {"name", "version", "data": {key: value}}, ours included.
        self.announced = {config.peer_id: {"name": config.name, "version": time.time_ns(),
                                           "data": {}}}
        self._stopping = False
        self._server = self._loop = None
        self.admission = Admission()
        self.refused = Counter()  # REFUSALS key -> connections or peers turned away
        self._joining = Counter()  # address -> new routers from it accepted, handshake not over
        self._quiet = QuietLog(log)

    # Lifecycle.

    async def start(self):
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._on_accept, self.config.listen_host,
                                                  self.config.port)
        self._loop.add_reader(self.dp.control_fd, self._on_control)
        for spec in self.config.peers:
            self._add_target(parse_hostport(spec, self.config.port, "peer")).configured = True
        self._links_changed()
        self._schedule_tick(0)
        log.info("control plane of %s (peer id %d) listening on TCP port %d", self.me.name,
                 self.me.peer_id, self.config.port)

    async def stop(self):
        self._stopping = True
        if self._tick_handle:
            self._tick_handle.cancel()
        self._loop.remove_reader(self.dp.control_fd)
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _spawn(self, coro):
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task):
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.error("control plane task failed", exc_info=task.exception())

    # Peer table.

    def _by_id(self, peer_id):
        return next((p for p in self.peers if p.peer_id == peer_id), None)

    def _by_address(self, address):
        return next((p for p in self.peers if address in (p.address, p.endpoint)), None)

    def _is_forgotten(self, peer_id=None, address=None):
        return any(peer_id is not None and peer_id == fid or address is not None and address == faddr
                   for fid, _, faddr in self.forgotten)

    def _add_target(self, address, peer_id=None, name=None):
        peer = self._by_address(address) or (peer_id and self._by_id(peer_id))
        if not peer:
            peer = Peer(address, peer_id, name)
            self.peers.append(peer)
        return peer

    def _set_state(self, peer, state, error=None):
        if error and error != peer.last_error:
            log.warning("%s: %s", peer.label, error)
        if error:
            peer.last_error = error
        if state != peer.state:
            peer.state, peer.since = state, time.time()

    def _refuse(self, reason, source, detail=""):
        """Counts a refusal and logs it, once per source and reason per interval."""
        self.refused[reason] += 1
        self._quiet((source, reason), logging.WARNING,
                    f"{source}: refused ({REFUSALS[reason]}){': ' + detail if detail else ''}")

    def _ensure_in_dataplane(self, peer, host, port):
        if not peer.in_dataplane:
            self.dp.add_peer(peer.peer_id, host, port)
            peer.in_dataplane = True
            # Not up (no floods to it) until routing says it is reachable.
            self.dp.set_peer_up(peer.peer_id, False)
            self._pushed[peer.peer_id] = (False, None)
        else:
            self.dp.set_peer_address(peer.peer_id, host, port)

    def _retire_id(self, peer):
        """Takes the peer's id out of the dataplane and the link-state database."""
        if peer.in_dataplane:
            self.dp.remove_peer(peer.peer_id)
            self._pushed.pop(peer.peer_id, None)
            peer.in_dataplane = False
        self.link_states.pop(peer.peer_id, None)
        self.announced.pop(peer.peer_id, None)
        if peer.conn:
            conn, peer.conn = peer.conn, None
            conn.close()
        peer.peer_id = None

    def _remove(self, peer):
        self.peers.remove(peer)
        self._retire_id(peer)

    def _send_control(self, peer, payload):
        try:
            self.dp.send_control(payload, peer.peer_id)
        except (OSError, KeyError) as exc:  # no session key yet, no route right now
            log.debug("heartbeat to %s: %s", peer.label, describe(exc))

    # Connections.

    def _on_accept(self, reader, writer):
        source = unmapped(writer.get_extra_info("peername")[0])
        reason = self.admission.admit(source)
        if reason:
            self._refuse(reason, source)
            writer.close()
            return
        self._spawn(self._serve(reader, writer, outbound=False, admitted=source))

    async def _dial(self, peer):
        host, port = peer.address
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    max(self.config.down_after, CONNECT_TIMEOUT))
        except (OSError, TimeoutError) as exc:
            peer.dialing = False
            self._failed(peer, f"cannot connect to {format_address(peer.address)}: {describe(exc)}")
            return
        await self._serve(reader, writer, outbound=True, dialed=peer)

    async def _serve(self, reader, writer, outbound, dialed=None, admitted=None):
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # no keepalives: idle connections stay silent; rekeys find dead ones
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
        remote_host = unmapped(writer.get_extra_info("peername")[0])
        remote = format_address(writer.get_extra_info("peername")[:2])
        channel = protocol.Channel(reader, writer)
        joining = []  # this connection's count in self._joining, until it is attached
        try:
            try:
                handshake = await asyncio.wait_for(protocol.handshake(
                    channel, self.me, self.config.password, outbound,
                    accept=lambda identity: self._accept_identity(identity, remote_host, joining),
                    versions=self.config.versions, ciphers=self.config.ciphers),
                    max(self.config.down_after, HANDSHAKE_TIMEOUT))
            except protocol.HandshakeError as exc:
                if exc.itself:  # e.g. the same --peer list on every host
                    if dialed in self.peers:
                        self.peers.remove(dialed)
                        log.info("%s is this router itself: not a peer",
                                 format_address(dialed.address))
                    return
                reason = f"refused by {remote}: {exc.reason}" if exc.by_peer else f"refused: {exc.reason}"
                if dialed:
                    dialed.dialing = False
                    self._failed(dialed, reason)  # logs it
                else:
                    self.refused["handshake"] += 1
                    self._quiet((remote_host, exc.reason[:40]), logging.WARNING, f"{remote}: {reason}")
                return
            except Exception as exc:  # whatever the input: one line, never a traceback
                if not isinstance(exc, (protocol.ProtocolError, OSError, asyncio.IncompleteReadError,
                                        TimeoutError)):
                    log.debug("handshake with %s", remote, exc_info=True)
                if dialed:
                    dialed.dialing = False
                    self._failed(dialed, f"handshake with {remote} failed: {describe(exc)}")
                else:
                    self.refused["handshake"] += 1
                    self._quiet((remote_host, "handshake"), logging.INFO,
                                f"handshake with {remote} failed: {describe(exc)}")
                return
            finally:
                if admitted:
                    self.admission.done(admitted)
                for address in joining:  # no await from here to _attach: the count stays true
                    self._joining[address] -= 1
            if dialed:
                dialed.dialing = False
            conn = Connection(channel, outbound, handshake)
            peer = self._attach(conn, dialed)
            if peer is None:
                return
            reason = "connection closed"
            try:
                while True:
                    message = await channel.read()
                    conn.last_rx = time.monotonic()
                    self._handle(peer, conn, message)
            except protocol.HandshakeError as exc:
                reason = f"refused by {peer.label}: {exc.reason}"
            except protocol.ProtocolError as exc:
                self.refused["invalid_message"] += 1
                reason = f"control connection closed: {describe(exc)}"
            except (OSError, asyncio.IncompleteReadError) as exc:
                reason = f"control connection lost: {describe(exc)}"
            except Exception as exc:  # a bug here must not print a peer's input as a traceback
                log.debug("handling a message from %s", peer.label, exc_info=True)
                reason = f"control connection closed after an internal error: {type(exc).__name__}"
            finally:
                if peer.conn is conn and not self._stopping:
                    self._lost(peer, reason)
        finally:
            self._writers.discard(writer)
            writer.close()

    def _accept_identity(self, identity, remote_host, joining):
        if self._is_forgotten(peer_id=identity.peer_id):
            return (f"{self.me.name} was told to forget {identity.name}; run `weavefast connect` "
                    f"on {self.me.name} to peer again")
        known = self._by_id(identity.peer_id)
        if known and known.conn and known.name != identity.name:
            return f"peer id {identity.peer_id} of {identity.name} is already used by {known.name}"
        if known and known.conn and known.state == ESTABLISHED and known.conn.remote_host != remote_host:
            # Without a secret anyone may claim any identity: not one that is alive elsewhere.
            return (f"{identity.name} (peer id {identity.peer_id}) is connected from {known.conn.remote_host}; "
                    f"another one from {remote_host} is refused while that one answers")
        if known or self._by_address((remote_host, identity.port)):
            return None
        if len(self.peers) >= self.config.max_peers:
            self.refused["peer_table_full"] += 1
            return (f"{self.me.name} has {len(self.peers)} peers, its most: `weavefast forget` "
                    "peers that are gone")
        from_address = sum(1 for p in self.peers if p.endpoint and p.endpoint[0] == remote_host)
        if from_address + self._joining[remote_host] >= MAX_PEERS_PER_ADDRESS:
            self.refused["peers_from_address"] += 1
            return f"{self.me.name} already has {MAX_PEERS_PER_ADDRESS} routers at {remote_host}"
        self._joining[remote_host] += 1
        joining.append(remote_host)
        return None

    def _preferred(self, new, old):
        """Of two connections between the same pair, both ends keep the one the
        router with the lower peer id opened."""
        def opened_by(conn):
            return self.me.peer_id if conn.outbound else conn.identity.peer_id
        lower = min(self.me.peer_id, new.identity.peer_id)
        return opened_by(new) == lower and opened_by(old) != lower

    def _attach(self, conn, dialed):
        identity = conn.identity
        if dialed and dialed not in self.peers:
            return None  # forgotten while the handshake ran
        peer = self._by_id(identity.peer_id)
        # A router that joins through us, or one we were told to join, needs our address
        # book; routers that found each other through gossip or the store have theirs.
        needs_book = (dialed.configured if dialed else peer is None) or peer is not None and peer.configured
        if dialed and peer is not dialed:
            if peer is None:
                peer = dialed
            else:  # the address we dialed belongs to a peer known under another address
                self._remove(dialed)
                if not peer.conn:
                    peer.address = dialed.address
        if peer is None:
            peer = self._add_target((conn.remote_host, identity.port))
        if peer.peer_id not in (None, identity.peer_id):
            log.info("%s now answers as %s (peer id %d), no longer as peer id %d",
                     format_address(peer.address), identity.name, identity.peer_id, peer.peer_id)
            self._retire_id(peer)
        same_router = False
        if peer.conn:
            old = peer.conn
            if old.identity.incarnation == identity.incarnation:
                if not self._preferred(conn, old):
                    return None
                # Both ends dialled: the same router, now over the preferred connection.
                # Its keys stay valid a while for the datagrams under way.
                same_router = True
                self._retire_keys(old, set(old.rx_key_ids))
            peer.conn = None
            old.close()
        peer.conn, peer.peer_id, peer.name = conn, identity.peer_id, identity.name
        conn.establish_by = conn.opened + self.config.establish_within
        peer.highest_ping = -1
        if not same_router:
            was_established = peer.state == ESTABLISHED
            peer.endpoint = (conn.remote_host, identity.port)
            peer.last_heard = peer.rtt = peer.udp_address = None
            peer.probe_sent_at = peer.suspect_since = None
            self._ensure_in_dataplane(peer, *peer.endpoint)
            # version 2 takes the loss flag's bit for hops and drops what it relays with it
            self.dp.set_peer_loss_reports(peer.peer_id, not conn.legacy)
            self._set_state(peer, CONNECTING)
            log.info("control connection with %s (peer id %d) at %s, protocol version %d",
                     identity.name, identity.peer_id, format_address(peer.endpoint), conn.version)
            if was_established:  # it restarted
                self._links_changed()
        self._offer_key(peer, conn, 0, conn.keys[0])
        self._greet(conn, needs_book)
        return peer

    # Session keys.

    def _offer_key(self, peer, conn, epoch, keys):
        """Installs the epoch's receive key and tells the peer its id."""
        key_id = self.dp.install_rx_key(peer.peer_id, keys.cipher, keys.receive)
        conn.rx_key_ids[epoch] = key_id
        conn.send({"type": "session", "epoch": epoch, "key_id": key_id})
        return key_id

    def _switch_key(self, peer, conn, epoch, key_id):
        """Seals what goes to the peer with the epoch's key from now on."""
        keys = conn.keys.pop(epoch, None)
        if keys is None:
            raise protocol.ProtocolError(f"session for epoch {epoch}, which has no keys")
        self.dp.set_tx_key(peer.peer_id, key_id, keys.cipher, keys.send)
        first = conn.epoch is None
        conn.epoch, conn.keyed_at = epoch, time.monotonic()
        conn.frames_at_key = self._frames(peer)
        self._retire_keys(conn, {e for e in conn.rx_key_ids if e < epoch})
        if conn.outbound:  # the client starts every rekey
            self._loop.call_later(self.config.rekey_after, self._start_rekey, peer, conn)
        if first:
            self._send_ping(peer)
        else:
            conn.rekeys += 1
            log.debug("%s: data keys of epoch %d in use", peer.label, epoch)

    def _retire_keys(self, conn, epochs):
        """Stops accepting these epochs' receive keys once the datagrams under way are in."""
        for epoch in epochs:
            key_id = conn.rx_key_ids.pop(epoch)
            self._loop.call_later(protocol.KEY_OVERLAP, self.dp.remove_rx_key, key_id)

    def _frames(self, peer):
        counters = self.dp.peer_counters().get(peer.peer_id, {})
        return counters.get("tx_frames", 0) + counters.get("rx_frames", 0)

    def _start_rekey(self, peer, conn):
        if peer.conn is not conn or conn.rekey or conn.channel.writer.is_closing():
            return  # the connection was replaced or closed meanwhile
        if self._frames(peer) == conn.frames_at_key:
            # As WireGuard: no frames under this key, no new one (only probes used it), so an
            # idle mesh stays quiet; looked at again soon, so traffic that resumes gets one.
            self._loop.call_later(self.config.rekey_after / 4, self._start_rekey, peer, conn)
            return
        epoch = conn.epoch + 1
        conn.rekey = (epoch, protocol.Ephemeral())
        conn.send({"type": "rekey", "epoch": epoch, "public": conn.rekey[1].public})

    def _on_rekey(self, peer, conn, epoch, public):
        """The server's half: new keys for the epoch the client proposes."""
        if conn.outbound or conn.epoch is None or epoch != conn.epoch + 1:
            raise protocol.ProtocolError(f"unexpected rekey to epoch {epoch}")
        ephemeral = protocol.Ephemeral()
        conn.keys[epoch] = self._epoch_keys(conn, epoch, ephemeral.exchange(bytes.fromhex(public)))
        key_id = self.dp.install_rx_key(peer.peer_id, conn.handshake.cipher, conn.keys[epoch].receive)
        conn.rx_key_ids[epoch] = key_id
        conn.send({"type": "rekey_ack", "epoch": epoch, "public": ephemeral.public, "key_id": key_id})

    def _on_rekey_ack(self, peer, conn, epoch, public, key_id):
        """The client's half: switch, then tell the server which key id to send with."""
        if not conn.rekey or conn.rekey[0] != epoch:
            raise protocol.ProtocolError(f"unexpected rekey_ack for epoch {epoch}")
        ephemeral, conn.rekey = conn.rekey[1], None
        conn.keys[epoch] = self._epoch_keys(conn, epoch, ephemeral.exchange(bytes.fromhex(public)))
        self._offer_key(peer, conn, epoch, conn.keys[epoch])
        self._switch_key(peer, conn, epoch, key_id)

    @staticmethod
    def _epoch_keys(conn, epoch, shared):
        hs = conn.handshake
        return protocol.rekey_keys(hs.psk, shared, hs.transcript, epoch, hs.cipher, conn.outbound)

    def _failed(self, peer, reason):
        if peer.conn or peer not in self.peers:
            return  # another connection to the same peer is up, or the peer was forgotten
        peer.failures += 1
        peer.next_attempt = time.monotonic() + backoff_delay(
            peer.failures, self.config.backoff_initial, self.config.backoff_max)
        self._set_state(peer, FAILED, reason)

    def _lost(self, peer, reason):
        was_established = peer.state == ESTABLISHED
        peer.conn = None
        peer.rtt = None
        self._failed(peer, reason)
        if was_established:
            self._links_changed()

    def _handle(self, peer, conn, message):
        kind = message["type"]
        if kind == "gossip":
            self._merge_gossip(peer, *messages.check_gossip(message))
        elif kind == "sync":
            self._on_sync(peer, conn, *messages.check_sync(message))
        elif kind == "suspect":
            self._on_suspect_report(peer, messages.check_suspect(message))
        elif kind == "session":
            self._switch_key(peer, conn, *messages.check_session(message))
        elif kind == "rekey":
            self._on_rekey(peer, conn, *messages.check_rekey(message, with_key_id=False)[:2])
        elif kind == "rekey_ack":
            self._on_rekey_ack(peer, conn, *messages.check_rekey(message, with_key_id=True))
        elif kind == "error":
            raise protocol.HandshakeError(messages.reason(message), by_peer=True)
        # "heartbeat" (from version 2) only refreshes conn.last_rx; unknown types come from newer versions

    # Liveness (see liveness.py): one probe a round from a shared rotation,
    # fast pings only to suspect and new peers. Version-2 peers get what they
    # expect instead: a heartbeat on the control connection and a ping every round.

    def _tick(self):
        """The liveness timer: a round every probe interval (aligned across routers on
        the wall clock, so a member waits at most one for its probe), fast pings in
        between while any peer needs them. A timer callback, not a task: an idle
        router wakes twice a second and does little else."""
        now = time.monotonic()
        timings = self.timings
        if self._tick_due is not None and now - self._tick_due > STARVED_LAG * timings.probe_interval:
            # This process did not get the CPU in time: neither did its pings'
            # answers. Declare no one failed until it has for a while.
            if now > self._starved_until:
                self.starved_periods += 1
            self._starved_until = now + self.config.down_after
        try:
            if now >= self._next_round:
                wall = time.time()
                self._next_round = now + timings.probe_interval - wall % timings.probe_interval
                self._round(now, round(wall / timings.probe_interval))
            fast = self._fast_round(now)
        except Exception:  # liveness must outlive a bug in one peer's bookkeeping
            log.exception("liveness round failed")
            fast = False
        self._schedule_tick(timings.fast_interval if fast else self._next_round - time.monotonic())

    def _schedule_tick(self, delay):
        if self._tick_handle:
            self._tick_handle.cancel()
        delay = max(0.0, delay)
        self._tick_due = time.monotonic() + delay
        self._tick_handle = self._loop.call_later(delay, self._tick)

    def _wake(self):
        """Fast pings are due now (a peer became suspect)."""
        if self._tick_due is not None and self._tick_due - time.monotonic() > self.timings.fast_interval:
            self._schedule_tick(0)

    def _round(self, now, round_number):
        down = self.config.down_after
        rx = None
        for peer in list(self.peers):
            if (not peer.configured and not peer.established_once and not peer.conn
                    and not peer.dialing and peer.failures
                    and now - peer.created > self.config.forget_unestablished_after):
                log.info("%s never got established: dropped from the peer table", peer.label)
                self._remove(peer)
                continue
            conn = peer.conn
            if not conn:
                continue
            if conn.legacy:
                if now - conn.last_rx > down:
                    self._drop(peer, f"no heartbeat on the control connection for {down:g} s")
                elif now - (peer.last_heard or conn.opened) > down:
                    self._drop(peer, self._silence(peer, now))
                else:
                    conn.send({"type": "heartbeat"})
                    self._send_ping(peer)
            elif (peer.probe_sent_at is not None
                  and now - peer.probe_sent_at >= 0.9 * self.timings.probe_interval):
                rx = self.dp.peer_counters() if rx is None else rx
                self._probe_expired(peer, now, rx)
        target = self._by_id(probe_target(self._members(), self.me.peer_id, round_number))
        if target and target.conn and not target.conn.legacy and target.suspect_since is None:
            if target.probe_sent_at is None:
                target.probe_sent_at = now
                target.probe_rx = self._rx_frames(target, rx if rx is not None else self.dp.peer_counters())
            self._send_ping(target)
        self._dial_due(now)
        if now >= self._next_sync:
            self._anti_entropy(now)

    def _members(self):
        return sorted([p.peer_id for p in self.peers if p.state == ESTABLISHED and p.conn
                       and not p.conn.legacy] + [self.me.peer_id])

    @staticmethod
    def _rx_frames(peer, counters):
        return counters.get(peer.peer_id, {}).get("rx_frames", 0)

    def _probe_expired(self, peer, now, counters):
        """A round's probe went unanswered: unless frames came meanwhile, suspect."""
        sent_at, peer.probe_sent_at = peer.probe_sent_at, None
        if (peer.last_heard or 0) >= sent_at or self._rx_frames(peer, counters) != peer.probe_rx:
            return
        timings = self.timings
        self._suspect(peer, since=sent_at, report_at=sent_at + timings.report_after,
                      deadline=sent_at + timings.report_after + timings.confirm_for)

    def _suspect(self, peer, since, report_at, deadline, reporter=None):
        # A peer heard from lately (small meshes probe each peer often) gets nearly all
        # of --down-after: a router stalled for two seconds is slow, not gone.
        deadline = max(deadline, (peer.last_heard or 0) + SILENCE_ALLOWED * self.config.down_after)
        peer.suspect_since, peer.report_at, peer.suspect_deadline = since, report_at, deadline
        peer.reported_by = reporter
        self.suspicions += 1
        log.debug("%s: suspect%s", peer.label, f" (reported by {reporter})" if reporter else "")
        self._wake()

    def _on_suspect_report(self, reporter, peer_id):
        """Another router's probes of `peer_id` went unanswered: check it ourselves."""
        peer = self._by_id(peer_id)
        now = time.monotonic()
        if (peer is None or peer is reporter or not peer.conn or peer.conn.legacy
                or peer.state != ESTABLISHED or peer.suspect_since is not None
                or now - (peer.last_heard or 0) < self.timings.probe_interval):
            return
        self._suspect(peer, since=now, report_at=None, deadline=now + self.timings.confirm_for,
                      reporter=reporter.label)

    def _fast_round(self, now):
        """Pings to new and suspect peers; whether any are left."""
        busy = False
        starved = now < self._starved_until
        for peer in list(self.peers):
            conn = peer.conn
            if not conn or conn.legacy:
                continue
            if peer.state != ESTABLISHED:
                if starved:
                    conn.establish_by = max(conn.establish_by, now + self.timings.confirm_for)
                if now > conn.establish_by:
                    self._drop(peer, self._silence(peer, now))
                    continue
                if conn.epoch is None:
                    continue
            elif peer.suspect_since is None:
                continue
            elif starved:
                peer.suspect_deadline = max(peer.suspect_deadline, now + self.timings.confirm_for)
                if peer.report_at is not None:
                    peer.report_at = max(peer.report_at, now + self.timings.probe_interval)
            elif now >= peer.suspect_deadline:
                self._drop(peer, self._silence(peer, now))
                continue
            elif peer.report_at is not None and now >= peer.report_at:
                peer.report_at = None
                self._report_suspect(peer)
            busy = True
            self._send_ping(peer)
        return busy

    def _report_suspect(self, peer):
        self.suspects_reported += 1
        for other in self.peers:
            if other is not peer and other.conn and not other.conn.legacy and other.state == ESTABLISHED:
                other.conn.send({"type": "suspect", "peer_id": peer.peer_id})

    def _silence(self, peer, now):
        down = self.config.down_after
        if peer.state != ESTABLISHED:
            if peer.conn and peer.conn.epoch is None:
                return f"no session key from it in {now - peer.conn.opened:.1f} s"
            return f"no answer to data-path heartbeats in {now - peer.conn.opened:.1f} s (UDP blocked?)"
        if peer.suspect_since is None:
            return f"no data-path heartbeat for {down:g} s"
        by = f", after {peer.reported_by} reported it silent" if peer.reported_by else ""
        silent = now - max(peer.last_heard or 0, peer.conn.opened)
        return f"no answer to data-path probes, silent for {silent:.1f} s{by}"

    def _heard(self, peer, now):
        """An authentic, fresh datagram from the peer: it is alive."""
        peer.last_heard = now
        if peer.suspect_since is not None:
            log.debug("%s answers again after %.2f s", peer.label, now - peer.suspect_since)
            peer.suspect_since = peer.report_at = peer.suspect_deadline = peer.reported_by = None

    def _drop(self, peer, reason):
        conn = peer.conn
        self._lost(peer, reason)
        conn.close()

    def _dial_due(self, now=None):
        now = time.monotonic() if now is None else now
        for peer in self.peers:
            if peer.conn or peer.dialing or now < max(peer.next_attempt, peer.dial_after):
                continue
            peer.dialing = True
            self._set_state(peer, RETRYING if peer.failures else CONNECTING)
            self._spawn(self._dial(peer))

    def _send_ping(self, peer):
        if peer.conn.epoch is None:
            return  # the peer has not given us its key yet
        self._ping_seq += 1
        peer.heartbeats["sent"] += 1
        self._send_control(peer, protocol.encode_heartbeat(protocol.PING, self._ping_seq, time.monotonic()))

    def _on_control(self):
        # The dataplane names the peer whose key opened the datagram, and lets
        # each through once: what arrives here is authentic and fresh.
        now = time.monotonic()
        for src_peer, address, payload in self.dp.recv_control():
            peer = self._by_id(src_peer)
            heartbeat = protocol.decode_heartbeat(payload)
            if not heartbeat or not peer or not peer.conn:
                self.bad_heartbeats += 1
                if peer:
                    peer.heartbeats["rejected"] += 1
                continue
            kind, seq, timestamp = heartbeat
            self._heard(peer, now)
            if kind == protocol.PING:
                # Only a newer ping moves the address: a replayed one cannot.
                if seq > peer.highest_ping:
                    peer.highest_ping = seq
                    address = tuple(address[:2])
                    if address != peer.udp_address:
                        if peer.udp_address or address != peer.endpoint:
                            log.info("%s: data path now at %s", peer.label, format_address(address))
                        peer.udp_address = address
                        self.dp.set_peer_address(src_peer, *address)
                self._send_control(peer, protocol.encode_heartbeat(protocol.PONG, seq, timestamp))
            else:
                peer.heartbeats["answered"] += 1
                peer.rtt = now - timestamp
                if peer.state != ESTABLISHED:
                    peer.failures = 0
                    peer.established_once = True
                    self._set_state(peer, ESTABLISHED)
                    log.info("%s (peer id %d) established, RTT %.2f ms", peer.name, peer.peer_id,
                             peer.rtt * 1000)
                    self._links_changed(established=peer)
                    self._push(("peer", peer.peer_id))

    # Membership and routing: link states, announcements and addresses travel
    # as deltas. Each router pushes its own changes to the routers it is
    # connected to, batched over GOSSIP_BATCH; an entry learned from router S
    # goes on to GOSSIP_FANOUT routers that S is not connected to (in a full
    # mesh, nowhere), so a partial mesh still hears of everything.
    # A new connection gets the sender's own entries and its address book;
    # every SYNC_INTERVAL a digest exchange with one peer repairs the rest.

    def _own_links(self):
        return {p.peer_id for p in self.peers if p.state == ESTABLISHED}

    def _links_changed(self, established=None):
        self.link_version += 1
        self.link_states[self.me.peer_id] = {"name": self.me.name, "version": self.link_version,
                                             "links": self._own_links()}
        if established is not None:  # a direct route at once: it takes frames now
            self.routes[established.peer_id] = (established.peer_id, 1)
            self._push_route(established, (True, None))
            self._schedule_routes()
        else:  # a link went down: frames go around it (or nowhere) at once
            self._recompute_routes()
        self._push(("links", self.me.peer_id))

    def _schedule_routes(self):
        """Routes are recomputed at most every ROUTE_HOLD: a burst of gossip costs one."""
        if self._routes_pending:
            return
        self._routes_pending = True
        self._loop.call_later(max(0.0, self._routes_at + ROUTE_HOLD - time.monotonic()),
                              self._recompute_routes)

    def _recompute_routes(self):
        self._routes_pending = False
        self._routes_at = time.monotonic()
        links = {pid: state["links"] for pid, state in self.link_states.items()
                 if not self._is_forgotten(peer_id=pid)}
        self.routes = {dst: route for dst, route in next_hops(self.me.peer_id, links).items()
                       if not self._is_forgotten(peer_id=dst)}
        for peer in self.peers:
            route = self.routes.get(peer.peer_id)
            self._push_route(peer, (True, None if route[0] == peer.peer_id else route[0])
                             if route else (False, None))

    def _push_route(self, peer, wanted):
        """Gives the dataplane (up, via) for the peer, if that changed."""
        if peer.in_dataplane and self._pushed.get(peer.peer_id) != wanted:
            self.dp.set_route(peer.peer_id, wanted[1])
            self.dp.set_peer_up(peer.peer_id, wanted[0])
            self._pushed[peer.peer_id] = wanted

    # Entries are ("links" | "announced" | "peer", peer id): looked up when sent, so
    # a batch carries the newest version.

    def _send_entries(self, conn, keys):
        """Sends these entries as this router knows them now, in messages peers accept."""
        for start in range(0, len(keys), messages.MAX_ENTRIES):
            conn.send(self._entries(keys[start:start + messages.MAX_ENTRIES]))

    def _entries(self, keys):
        message = {"type": "gossip", "peers": [], "links": [], "announced": []}
        for kind, pid in keys:
            if kind == "links" and pid in self.link_states:
                s = self.link_states[pid]
                message["links"].append({"peer_id": pid, "name": s["name"], "version": s["version"],
                                         "links": sorted(s["links"])})
            elif kind == "announced" and pid in self.announced:
                message["announced"].append({"peer_id": pid, **self.announced[pid]})
            elif kind == "peer":
                peer = self._by_id(pid)
                if peer and peer.state == ESTABLISHED:
                    message["peers"].append({"peer_id": pid, "name": peer.name,
                                             "host": peer.endpoint[0], "port": peer.endpoint[1]})
        return message

    def _full_gossip(self):
        """The whole state, as version-2 peers expect on every change."""
        return self._entries([("links", pid) for pid in self.link_states]
                             + [("announced", pid) for pid in self.announced]
                             + [("peer", p.peer_id) for p in self.peers if p.state == ESTABLISHED])

    def _push(self, key, source=None):
        """Queues an entry for the next batch; `source` is the router it came from."""
        self._outbox.setdefault(key, source)
        if not self._push_pending and self._loop:
            self._push_pending = True
            self._loop.call_later(GOSSIP_BATCH, self._flush_pushes)

    def _flush_pushes(self):
        self._push_pending = False
        now = time.monotonic()
        least, per_peer, most = OWN_LINKS_HOLD
        hold = min(most, max(least, per_peer * len(self.peers)))
        if ("links", self.me.peer_id) in self._outbox and now < self._own_links_sent + hold:
            # Our links change with every peer while a mesh forms, and go to every peer:
            # sent at most every second, or every 3 s with 64 peers.
            self._outbox.pop(("links", self.me.peer_id))
            self._loop.call_later(self._own_links_sent + hold - now, self._push, ("links", self.me.peer_id))
        outbox, self._outbox = self._outbox, {}
        if ("links", self.me.peer_id) in outbox:
            self._own_links_sent = now
        modern = [p for p in self.peers if p.conn and not p.conn.legacy]
        to = {p.peer_id: [] for p in modern}
        for key, source in outbox.items():
            if source is None:  # ours: to everyone connected
                targets = [p.peer_id for p in modern if p.peer_id != key[1]]
            else:  # learned: on to a few that the source does not reach itself
                reached = self.link_states.get(source, {}).get("links", ())
                eligible = [p.peer_id for p in modern
                            if p.peer_id not in (source, key[1]) and p.peer_id not in reached]
                targets = random.sample(eligible, min(GOSSIP_FANOUT, len(eligible)))
            for pid in targets:
                to[pid].append(key)
        for peer in modern:
            self._send_entries(peer.conn, to[peer.peer_id])
        if outbox:
            legacy_full = self._full_gossip()  # version 2 expects the whole state on every change
            for peer in self.peers:
                if peer.conn and peer.conn.legacy:
                    peer.conn.send(legacy_full)

    def _greet(self, conn, with_book):
        """What a new connection gets: our own entries, and our address book if it needs it."""
        if conn.legacy:
            conn.send(self._full_gossip())
            return
        book = [("peer", p.peer_id) for p in self.peers if p.state == ESTABLISHED] if with_book else []
        self._send_entries(conn, [("links", self.me.peer_id), ("announced", self.me.peer_id)] + book)

    def _anti_entropy(self, now):
        self._next_sync = now + SYNC_INTERVAL * random.uniform(0.8, 1.2)
        partners = [p for p in self.peers if p.state == ESTABLISHED and p.conn and not p.conn.legacy]
        if partners:
            random.choice(partners).conn.send({
                "type": "sync",
                "links": [[pid, s["version"]] for pid, s in self.link_states.items()],
                "announced": [[pid, a["version"]] for pid, a in self.announced.items()],
                "known": [p.peer_id for p in self.peers if p.peer_id is not None]})

    def _on_sync(self, peer, conn, links, announced, known):
        """Answers a digest with what the asker lacks or has older."""
        keys = [("links", pid) for pid, s in self.link_states.items()
                if s["version"] > links.get(pid, -1)]
        keys += [("announced", pid) for pid, a in self.announced.items()
                 if a["version"] > announced.get(pid, -1)]
        keys += [("peer", p.peer_id) for p in self.peers
                 if p.state == ESTABLISHED and p is not peer and p.peer_id not in known]
        self._send_entries(conn, keys)

    def _newer(self, table, pid, version):
        """Whether gossip's entry of another router, at `version`, replaces what `table`
        (link states or announcements) has; a new router only while the table has room."""
        known = table.get(pid)
        if pid == self.me.peer_id or known is not None and version <= known["version"]:
            return False
        if known is None and len(table) >= MAX_LINK_STATES:
            self.refused["peer_table_full"] += 1
            return False
        return True

    def _merge_gossip(self, sender, peers, links, announced):
        changed = False
        for pid, name, version, linked in links:
            if self._newer(self.link_states, pid, version):
                self.link_states[pid] = {"name": name, "version": version, "links": linked}
                self._push(("links", pid), sender.peer_id)
                changed = True
        for pid, name, version, data in announced:
            if self._newer(self.announced, pid, version):
                self.announced[pid] = {"name": name, "version": version, "data": data}
                self._push(("announced", pid), sender.peer_id)
        learned = False
        for pid, name, host, port in peers:
            learned = self._learn(pid, name, (host, port), "gossip", sender) or learned
        if changed or learned:
            self._schedule_routes()
        if learned:
            self._dial_due()

    def _learn(self, pid, name, address, source, sender=None):
        """Adds a router heard of (from gossip or the cluster store); whether it was new."""
        if (pid == self.me.peer_id or self._by_id(pid) or self._by_address(address)
                or self._is_forgotten(pid, address)):
            return False
        if len(self.peers) >= self.config.max_peers:
            self.refused["peer_table_full"] += 1
            return False
        peer = self._add_target(address, pid, name)
        if pid < self.me.peer_id:  # the lower peer id dials; the other only if that did not happen
            peer.dial_after = time.monotonic() + DIAL_GRACE * random.uniform(1, 1.5)
        self._ensure_in_dataplane(peer, *address)
        if sender is not None:
            self._push(("peer", pid), sender.peer_id)
        log.info("learned about %s (peer id %d) at %s from %s", peer.name, pid,
                 format_address(address), source)
        return True

    def learn_peer(self, peer_id, name, host, port, source="the cluster store"):
        """Tells the mesh of a router found elsewhere (the cluster store); loop thread only."""
        if self._learn(peer_id, name, (host, port), source):
            self._schedule_routes()
            self._dial_due()

    # What other subsystems announce through the mesh (thread-safe).

    def announce(self, key, value):
        """Tell every router `key` = `value` (JSON-able) from this one; called from any thread.
        A value peers would refuse (see messages.announced_data) is logged, not sent."""
        try:
            messages.announced_data({key: value})
        except protocol.ProtocolError as e:
            log.warning("not announced, other routers would refuse it: %s", e)
            return

        def update():
            mine = self.announced[self.me.peer_id]
            mine["data"] = {**mine["data"], key: value}
            mine["version"] = max(mine["version"] + 1, time.time_ns())
            self._push(("announced", self.me.peer_id))
        if self._loop is None:  # not started: nothing else runs yet
            update()
        else:
            self._loop.call_soon_threadsafe(update)

    def announcements(self, key):
        """{router name: value of `key`} from this router and those reachable now."""
        reachable = set(self.routes) | {self.me.peer_id}
        return {entry["name"]: entry["data"][key] for pid, entry in list(self.announced.items())
                if pid in reachable and key in entry["data"]}

    # What the status API exposes.

    async def connect(self, host, port=None):
        """Adds a peer to keep a connection to; returns its address."""
        address = (host, port or self.config.port)
        ips = await self._resolve(host)
        self.forgotten = [f for f in self.forgotten
                          if not (f[1] == host or f[2][0] in ips and (port is None or f[2][1] == port))]
        peer = self._add_target(address)
        peer.configured = True
        if not peer.conn:
            peer.failures, peer.next_attempt = 0, 0.0
        self._recompute_routes()
        self._dial_due()
        return format_address(address)

    async def forget(self, host, port=None):
        """Closes and stops connections to the matching peers; returns their labels."""
        ips = await self._resolve(host)

        def matches(peer):
            addresses = [a for a in (peer.address, peer.endpoint) if a]
            return peer.name == host or any(
                a[0] in ips and (port is None or a[1] == port) for a in addresses)

        gone = [p for p in self.peers if matches(p)]
        for peer in gone:
            self.forgotten.append((peer.peer_id, peer.name, peer.endpoint or peer.address))
            if peer.conn:
                peer.conn.send({"type": "error", "reason": f"{self.me.name} was told to forget {peer.name}"})
            self._remove(peer)
            log.info("forgot %s", peer.label)
        if gone:
            self._links_changed()
        return [p.label for p in gone]

    async def _resolve(self, host):
        try:
            infos = await self._loop.getaddrinfo(host, None)
        except OSError:
            return {host}
        return {info[4][0] for info in infos} | {host}

    @staticmethod
    def _session_status(conn):
        if not conn:
            return None
        return {"cipher": conn.handshake.cipher, "epoch": conn.epoch, "rekeys": conn.rekeys,
                "key_age_s": round(time.monotonic() - conn.keyed_at, 1) if conn.keyed_at else None}

    def _encryption_status(self):
        if not self.config.password:
            return {"mode": "cleartext", "ciphers": ["none"], "rekey_after_s": self.config.rekey_after}
        used = sorted({p.conn.handshake.cipher for p in self.peers if p.conn})
        return {"mode": "sealed", "ciphers": used or list(protocol.preferred_ciphers(
            (self.config.ciphers or [None])[0])), "rekey_after_s": self.config.rekey_after}

    def status(self) -> dict:
        per_peer = self.dp.peer_counters()
        modes = self.dp.peer_segments()
        names = {pid: s["name"] for pid, s in self.link_states.items()}
        peers = []
        for peer in sorted(self.peers, key=lambda p: (p.name or "", p.address)):
            route = self.routes.get(peer.peer_id)
            peers.append({
                "name": peer.name, "peer_id": peer.peer_id,
                "address": format_address(peer.address),
                "endpoint": format_address(peer.udp_address or peer.endpoint) if peer.endpoint else None,
                "state": peer.state, "since": peer.since, "last_error": peer.last_error,
                "failures": peer.failures,
                "rtt_ms": round(peer.rtt * 1000, 3) if peer.rtt is not None else None,
                "route": None if not route else "direct" if route[0] == peer.peer_id
                else f"via {names.get(route[0], route[0])}",
                "counters": per_peer.get(peer.peer_id, {}),
                "segments": _segments_status(self.dp.segments_mode, modes.get(peer.peer_id)),
                "heartbeats": peer.heartbeats,
                "session": self._session_status(peer.conn),
                "suspect": peer.suspect_since is not None,
            })
        return {
            "name": self.me.name, "peer_id": self.me.peer_id, "port": self.config.port,
            "protocol_versions": list(self.config.versions),
            "authenticated": bool(self.config.password), "down_after": self.config.down_after,
            "encryption": self._encryption_status(),
            "peers": peers,
            "routes": [{"peer_id": dst, "name": names.get(dst), "via": via,
                        "via_name": names.get(via) if via != dst else None, "hops": hops}
                       for dst, (via, hops) in sorted(self.routes.items())],
            "mac_table": {"size": self.dp.fdb_size()},
            "offloads": self.dp.status_offloads(),
            "segments": self.dp.segments_mode,
            "counters": self.dp.counters(),
            "drops": self.dp.drops(),
            "bad_heartbeats": self.bad_heartbeats,
            "liveness": {
                "probe_interval_s": round(self.timings.probe_interval, 3),
                "suspect_now": sum(p.suspect_since is not None for p in self.peers),
                "suspicions": self.suspicions, "suspects_reported": self.suspects_reported,
                # rounds this router's own process ran late: it held back failures meanwhile
                "starved_periods": self.starved_periods,
                "starved_now": time.monotonic() < self._starved_until,
            },
            "refused": {reason: self.refused[reason] for reason in REFUSALS},
            "unauthenticated_connections": sum(self.admission.pending.values()),
        }


def _segments_status(mode, state):
    """How TCP super-frames go to a peer: {"mode": --segments, "sending":
    "segments" | "fragments", "loss_reported": we tell the peer its datagrams
    get lost on the way to us}."""
    state = state or {}
    return {"mode": mode, "sending": "segments" if state.get("segments") else "fragments",
            "loss_reported": bool(state.get("loss_reported"))}
