"""`weavefast router`: one per host; forwards the local bridge's frames to peers.

The router builds the dataplane (TAP on the bridge, UDP sockets, native
forwarding threads), then runs in asyncio the control plane
(dataplane.control: peering, membership, liveness, routing), MAC aging and the
status API.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import sys
import time

from dataplane.control import ControlConfig, ControlPlane, messages
from dataplane.control.status import StatusServer, token_path_for
from dataplane.addresses import format_address, parse_hostport
from dataplane.errors import RouterError, require_root
from dataplane.plugin.server import add_reconcile_arguments

DEFAULT_PORT = 6783
DEFAULT_STATUS = "127.0.0.1:6784"
FDB_SWEEP_INTERVAL = 10.0
OFFLOAD_FLAGS = ("tap_csum", "tap_tso", "tap_uso", "udp_gso", "udp_gro")


def add_arguments(p) -> None:
    p.add_argument("--name", default=socket.gethostname(), help="this router's name (default: the hostname)")
    p.add_argument("--peer-id", type=int, metavar="ID",
                   help="this router's unique peer id, 1..4294967295 (default: derived from --name)")
    p.add_argument("--peer", action="append", default=[], metavar="HOST[:PORT]",
                   help="a router of the network to join (one is enough: the others are learned "
                        "from it); repeat for more")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="TCP port for control connections and UDP port for the overlay (default 6783)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password", help="network secret: only routers with the same one may join "
                                           "(it never crosses the wire; prefer --key-file)")
    secret.add_argument("--key-file", metavar="PATH", help="read the network secret from this file")
    p.add_argument("--cipher", choices=("auto", "aes-256-gcm", "chacha20-poly1305"), default="auto",
                   help="data cipher with a network secret (default auto: AES-256-GCM where the CPU "
                        "has AES instructions, else ChaCha20-Poly1305)")
    p.add_argument("--rekey-after", type=float, default=120.0, metavar="SECONDS",
                   help="fresh session keys this often (default 120)")
    p.add_argument("--down-after", type=float, default=3.0, metavar="SECONDS",
                   help="declare a peer down after this long without heartbeats (default 3)")
    p.add_argument("--bind", default="::", help="address to bind the UDP port to (default: all)")
    p.add_argument("--bridge", default="weavefast", help="Linux bridge the containers join (created if absent)")
    p.add_argument("--tap", help="TAP device name (default: wf-BRIDGE)")
    p.add_argument("--mtu", type=int, help="overlay MTU (default: underlay MTU minus encapsulation overhead)")
    p.add_argument("--fdb-max-age", type=int, default=300, metavar="SECONDS",
                   help="forget a MAC after this long without traffic from it (default 300)")
    p.add_argument("--fdb-capacity", type=int, default=8192, help="MAC table entries (default 8192)")
    p.add_argument("--workers", type=int, default=1, help="forwarding workers: TAP queues and sockets (default 1)")
    p.add_argument("--batch", type=int, default=64, help="frames or datagrams per batch (1..256, default 64)")
    p.add_argument("--segments", choices=("auto", "always", "never"), default="auto",
                   help="send TCP super-frames as MSS-sized segments instead of fragments: auto "
                        "(to a peer while its path loses datagrams, default), always, never")
    p.add_argument("--status-addr", default=DEFAULT_STATUS, metavar="HOST:PORT",
                   help="HTTP status API address, used by `weavefast status` (default 127.0.0.1:6784)")
    for flag in OFFLOAD_FLAGS:
        p.add_argument(f"--no-{flag.replace('_', '-')}", dest=f"no_{flag}", action="store_true",
                       help=f"turn the {flag.replace('_', ' ')} offload off")
    p.add_argument("--plugin", action="store_true",
                   help="also serve Docker's network and IPAM driver (as `weavefast plugin` does)")
    p.add_argument("--plugin-socket", default="/run/docker/plugins/weavefast.sock", metavar="PATH",
                   help="the plugin's socket, where dockerd looks for it")
    p.add_argument("--plugin-state-dir", default="/var/lib/weavefast/plugin", metavar="DIR",
                   help="where the plugin keeps its networks and endpoints")
    add_reconcile_arguments(p, prefix="plugin-")
    from dataplane.plugin.options import add_arguments as add_plugin_arguments
    add_plugin_arguments(p)
    p.add_argument("--advertise-address", metavar="HOST",
                   help="with --store: the address other routers dial to reach this one, as "
                        "registered in the store (default: this host's source address toward "
                        "the store)")
    p.add_argument("-v", "--verbose", action="store_true", help="log control-plane events")


def resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        raise RouterError(f"peer {host!r} does not resolve: check the name, or give its IP address") from None
    return sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0][4][0]


def default_peer_id(name: str) -> int:
    """Stable across restarts, so peers recognise a restarted router."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") or 1


def network_secret(args) -> bytes | None:
    if args.password is not None:
        if not args.password:
            raise RouterError("--password is empty: give a secret, or leave the option out")
        return args.password.encode()
    if args.key_file is None:
        return None
    try:
        with open(args.key_file, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise RouterError(f"--key-file {args.key_file}: {e.strerror}") from None
    if not secret:
        raise RouterError(f"--key-file {args.key_file} is empty: put the network secret in it")
    return secret


def config_from_args(args):
    if not 0 < args.port < 65536:
        raise RouterError(f"--port {args.port}: use a port from 1 to 65535")
    if not 1 <= args.workers <= 16:
        raise RouterError(f"--workers {args.workers}: use 1 to 16")
    if not 1 <= args.batch <= 256:
        raise RouterError(f"--batch {args.batch}: use 1 to 256")
    if args.fdb_max_age < 1:
        raise RouterError(f"--fdb-max-age {args.fdb_max_age}: use at least 1 second")
    if not args.down_after > 0:
        raise RouterError(f"--down-after {args.down_after}: use a positive number of seconds")
    if not 0.1 <= args.rekey_after <= 3600:
        raise RouterError(f"--rekey-after {args.rekey_after}: use 0.1 to 3600 seconds")
    if not messages.valid_name(args.name):
        raise RouterError(f"--name {args.name!r}: use 1 to {messages.MAX_NAME} letters, digits or . _ - : @ +")
    peer_id = default_peer_id(args.name) if args.peer_id is None else args.peer_id
    if not 0 < peer_id < 2 ** 32:
        raise RouterError(f"--peer-id {peer_id}: use 1 to 4294967295")
    peers = []
    for text in args.peer:
        host, port = parse_hostport(text, args.port, "--peer")
        peers.append((resolve(host, port), port))
    from dataplane.engine import DataplaneConfig
    offloads = {flag: not getattr(args, f"no_{flag}") for flag in OFFLOAD_FLAGS}
    cfg = DataplaneConfig(peer_id=peer_id, port=args.port, bind=args.bind,
                          bridge=args.bridge, tap=args.tap, mtu=args.mtu,
                          fdb_capacity=args.fdb_capacity, fdb_max_age=args.fdb_max_age,
                          workers=args.workers, batch=args.batch, segments=args.segments,
                          offloads=offloads)
    control = ControlConfig(
        name=args.name, peer_id=peer_id, port=args.port,
        peers=[format_address(address) for address in peers], password=network_secret(args),
        down_after=args.down_after, listen_host=None if args.bind in ("", "::") else args.bind,
        rekey_after=args.rekey_after, ciphers=None if args.cipher == "auto" else [args.cipher])
    return cfg, control, peers


def membership_from_args(args, control):
    """The store membership (`--store`): a StoreDiscovery not yet started, or None."""
    if not args.store:
        if args.advertise_address:
            raise RouterError("--advertise-address is what the router registers in the cluster "
                              "store: give --store etcd://HOST:2379 too, or leave it out")
        return None
    from dataplane.control import discovery
    from dataplane.store import EtcdStore
    try:
        store = EtcdStore(args.store)
    except (ValueError, OSError) as e:
        raise RouterError(f"--store: {e}") from None
    try:
        host = discovery.advertise_address(store, args.advertise_address)
    except ValueError as e:
        raise RouterError(str(e)) from None
    me = discovery.RouterEntry(control.peer_id, control.name, host, control.port)
    return discovery.StoreDiscovery(store, me, ttl=discovery.lease_ttl(control.down_after),
                                    max_peers=control.max_peers)


async def sweep(dp, degradations) -> None:
    """Ages MACs out, and says once when a degradation appears at run time."""
    shown = {d["what"] for d in degradations()}
    while True:
        await asyncio.sleep(FDB_SWEEP_INTERVAL)
        dp.fdb_expire()
        now = degradations()
        for d in now:
            if d["what"] not in shown:
                print(f"weavefast router: {degradation_line(d)}", file=sys.stderr, flush=True)
        shown = {d["what"] for d in now}


def degradation_line(d) -> str:
    return f"DEGRADED: {d['what']}: {d['why']}; fix: {d['fix']}"


async def serve(dp, control_config: ControlConfig, status_addr: str, plugin=None,
                membership=None) -> None:
    """Runs the control plane and the status API until SIGINT or SIGTERM; `plugin` (the
    Docker plugin's services, or None) announces through the control plane and reports
    in the status; `membership` (a discovery.StoreDiscovery, or None) registers this
    router in the cluster store and hands the control plane the routers it finds there."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.time()
    control = ControlPlane(dp, control_config)
    if plugin is not None:
        plugin.attach(control)

    def degradations():
        return dp.degradations() + (membership.degradations() if membership else [])
    status = StatusServer(control, parse_hostport(status_addr, 6784, "--status-addr"),
                          token_file=token_path_for(control_config.name), details=lambda: {
        "uptime": round(time.time() - started, 1), "bridge": dp.config.bridge,
        "tap": dp.config.tap_name, "mtu": dp.mtu,
        "mac_table": {"size": dp.fdb_size(), "capacity": dp.config.fdb_capacity},
        "workers": dp.worker_counters(), "degradations": degradations(),
        "membership": membership.status() if membership else None,
        "plugin": plugin.status() if plugin else None})
    try:
        await control.start()
    except OSError as e:
        raise RouterError(f"TCP port {control_config.port}: {e.strerror} "
                          "(stop the other router or choose another --port)") from None
    try:
        try:
            await status.start()
        except OSError as e:
            raise RouterError(f"status API {status_addr}: {e.strerror} "
                              "(choose another --status-addr)") from None
        if membership is not None:
            membership.start(loop, control.learn_peer)
        sweeper = asyncio.create_task(sweep(dp, degradations))
        notify_ready()
        await stop.wait()
        sweeper.cancel()
        await status.stop()
    finally:
        if membership is not None:  # revokes the lease: the others see this router leave
            await asyncio.to_thread(membership.stop)
        await control.stop()


class _StoppedEarly(BaseException):
    """SIGTERM or SIGINT before the event loop took them over (serve)."""


def run(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="weavefast: %(message)s", stream=sys.stderr)
    router_pid = os.getpid()

    def stop_early(signum, frame):
        if os.getpid() != router_pid:  # a fork (pyroute2 makes some) must just go
            os._exit(128 + signum)
        raise _StoppedEarly(signum)

    previous = {}
    try:
        return _run(args, previous, stop_early)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args, previous, stop_early) -> int:
    dp = None
    try:
        require_root()   # before importing the engine: its dependencies may be installed for root only
        from dataplane.engine import Dataplane

        cfg, control, peers = config_from_args(args)
        membership = membership_from_args(args, control)
        # From here a stop (even while the TAP and bridge are being made) removes what we made.
        previous.update({sig: signal.signal(sig, stop_early) for sig in (signal.SIGINT, signal.SIGTERM)})
        dp = Dataplane(cfg)
        # the advertised address tells the underlay's family when no --peer does
        dp.open([host for host, _ in peers] + ([membership.me.host] if membership else []))
    except RouterError as e:
        print(f"weavefast router: {e}", file=sys.stderr)
        return 2
    except _StoppedEarly:
        if dp is not None:
            dp.close()
        return 0
    plugin = None
    try:
        if args.plugin:
            from dataplane.plugin.services import PluginServices
            plugin = PluginServices(args, cfg.bridge, cfg.tap_name, dp.mtu, args.name)
        dp.start()
        on = [k for k, v in dp.status_offloads().items() if v]
        print(f"weavefast router {args.name} (peer id {cfg.peer_id}) forwarding: TAP {cfg.tap_name} on bridge "
              f"{cfg.bridge}, UDP port {cfg.port}, MTU {dp.mtu}, offloads: {', '.join(on) or 'none'}",
              flush=True)
        for note in dp.probe_notes:
            print(f"weavefast router: {note}", file=sys.stderr, flush=True)
        for d in dp.degradations():
            print(f"weavefast router: {degradation_line(d)}", file=sys.stderr, flush=True)
        if control.password is None:
            print("weavefast router: WARNING: no network secret, so traffic is not encrypted and any host that "
                  "reaches this port can join; set the same --password or --key-file on every router",
                  file=sys.stderr, flush=True)
        elif args.cipher != "auto":
            print(f"weavefast router: data cipher {args.cipher}", flush=True)
        if plugin is not None:
            print(f"weavefast router: Docker plugin serving NetworkDriver and IpamDriver on "
                  f"{args.plugin_socket} (state in {args.plugin_state_dir}, reconciled with "
                  f"{args.plugin_docker_host})", flush=True)
        if membership is not None:
            print(f"weavefast router: membership through the store etcd {membership.store.display}: "
                  f"registering as {membership.key} at "
                  f"{format_address((membership.me.host, membership.me.port))}", flush=True)
        asyncio.run(serve(dp, control, args.status_addr, plugin, membership))
    except RouterError as e:
        print(f"weavefast router: {e}", file=sys.stderr)
        return 2
    except _StoppedEarly:
        pass
    finally:
        if plugin is not None:
            plugin.close()
        dp.close()
    return 0


def notify_ready() -> None:
    """Tell systemd (Type=notify) that the router forwards and its plugin serves, so that
    units ordered after it (docker.service) start only now."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)
