"""`weavefast router`: one per host; forwards the local bridge's frames to peers.

The router builds the dataplane (TAP on the bridge, UDP sockets, native
forwarding threads), then runs the control loop in asyncio: peering through
hello messages on the data path, MAC aging, and the status API.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dataplane.errors import RouterError, require_root

log = logging.getLogger("weavefast.router")

DEFAULT_PORT = 6783
DEFAULT_STATUS = "127.0.0.1:6784"
HELLO_INTERVAL = 1.0
FDB_SWEEP_INTERVAL = 10.0
OFFLOAD_FLAGS = ("tap_csum", "tap_tso", "tap_uso", "udp_gso", "udp_gro")


def add_arguments(p) -> None:
    p.add_argument("--name", default=socket.gethostname(), help="this router's name (default: the hostname)")
    p.add_argument("--peer", action="append", default=[], metavar="HOST[:PORT]",
                   help="a peer router to join; repeat for more")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="UDP port for the overlay (default 6783)")
    p.add_argument("--bind", default="::", help="address to bind the UDP port to (default: all)")
    p.add_argument("--bridge", default="weavefast", help="Linux bridge the containers join (created if absent)")
    p.add_argument("--tap", help="TAP device name (default: wf-BRIDGE)")
    p.add_argument("--mtu", type=int, help="overlay MTU (default: underlay MTU minus encapsulation overhead)")
    p.add_argument("--fdb-max-age", type=int, default=300, metavar="SECONDS",
                   help="forget a MAC after this long without traffic from it (default 300)")
    p.add_argument("--fdb-capacity", type=int, default=8192, help="MAC table entries (default 8192)")
    p.add_argument("--workers", type=int, default=1, help="forwarding workers: TAP queues and sockets (default 1)")
    p.add_argument("--batch", type=int, default=64, help="frames or datagrams per batch (1..256, default 64)")
    p.add_argument("--status-addr", default=DEFAULT_STATUS, metavar="HOST:PORT",
                   help="HTTP status API address (default 127.0.0.1:6784)")
    for flag in OFFLOAD_FLAGS:
        p.add_argument(f"--no-{flag.replace('_', '-')}", dest=f"no_{flag}", action="store_true",
                       help=f"turn the {flag.replace('_', ' ')} offload off")
    p.add_argument("-v", "--verbose", action="store_true", help="log control-plane events")


def parse_hostport(text: str, default_port: int, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":") if text.count(":") == 1 or text.startswith("[") else (text, "", "")
    host = host.strip("[]") if sep else text
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise RouterError(f"{what} {text!r}: the port must be a number from 1 to 65535")
        return host, int(port)
    return host, default_port


def resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        raise RouterError(f"peer {host!r} does not resolve: check the name, or give its IP address") from None
    return sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0][4][0]


def config_from_args(args):
    if not 0 < args.port < 65536:
        raise RouterError(f"--port {args.port}: use a port from 1 to 65535")
    if not 1 <= args.workers <= 16:
        raise RouterError(f"--workers {args.workers}: use 1 to 16")
    if not 1 <= args.batch <= 256:
        raise RouterError(f"--batch {args.batch}: use 1 to 256")
    if args.fdb_max_age < 1:
        raise RouterError(f"--fdb-max-age {args.fdb_max_age}: use at least 1 second")
    peers = []
    for text in args.peer:
        host, port = parse_hostport(text, args.port, "--peer")
        peers.append((resolve(host, port), port))
    from dataplane.engine import DataplaneConfig
    offloads = {flag: not getattr(args, f"no_{flag}") for flag in OFFLOAD_FLAGS}
    cfg = DataplaneConfig(peer_id=random.randrange(1, 2 ** 32), port=args.port, bind=args.bind,
                          bridge=args.bridge, tap=args.tap, mtu=args.mtu,
                          fdb_capacity=args.fdb_capacity, fdb_max_age=args.fdb_max_age,
                          workers=args.workers, batch=args.batch, offloads=offloads)
    return cfg, peers


class Router:
    """Peering by hello messages: each router greets its configured peers until
    they answer, and answers every hello it gets, so one side's --peer is enough."""

    def __init__(self, name: str, dp: Dataplane, peers: list[tuple[str, int]]):
        self.name = name
        self.dp = dp
        self.configured = peers
        self.peers: dict[int, dict] = {}
        self.started = time.time()

    def hello(self) -> bytes:
        return json.dumps({"hello": self.name, "port": self.dp.config.port}).encode()

    def on_control(self) -> None:
        for src, (host, port), payload in self.dp.recv_control():
            try:
                msg = json.loads(payload)
                name = str(msg["hello"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed control message from %s:%d", host, port)
                continue
            peer = self.peers.get(src)
            if peer is None:
                self.dp.add_peer(src, host, port)
                log.info("peer %s (id %d) at %s:%d", name, src, host, port)
                self.dp.send_control(self.hello(), src)
            elif (peer["host"], peer["port"]) != (host, port):
                self.dp.set_peer_address(src, host, port)
            self.peers[src] = {"name": name, "host": host, "port": port, "last_seen": time.time()}

    async def greet(self) -> None:
        while True:
            known = {(p["host"], p["port"]) for p in self.peers.values()}
            for host, port in self.configured:
                if (host, port) not in known:
                    try:
                        self.dp.send_control(self.hello(), addr=(host, port))
                    except OSError as e:
                        log.debug("hello to %s:%d: %s", host, port, e)
            await asyncio.sleep(HELLO_INTERVAL)

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(FDB_SWEEP_INTERVAL)
            self.dp.fdb_expire()

    def status(self) -> dict:
        dp = self.dp
        peer_counters = dp.peer_counters()
        return {
            "name": self.name,
            "peer_id": dp.config.peer_id,
            "uptime": round(time.time() - self.started, 1),
            "bridge": dp.config.bridge,
            "tap": dp.config.tap_name,
            "mtu": dp.mtu,
            "port": dp.config.port,
            "offloads": dp.status_offloads(),
            "peers": [dict(p, id=pid, counters=peer_counters.get(pid, {})) for pid, p in self.peers.items()],
            "mac_table": {"size": dp.fdb_size(), "capacity": dp.config.fdb_capacity},
            "counters": dp.counters(),
            "drops": dp.drops(),
        }


def serve_status(router: Router, addr: str) -> ThreadingHTTPServer:
    host, port = parse_hostport(addr, 6784, "--status-addr")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.rstrip("/") != "/status":
                self.send_error(404, "try /status")
                return
            body = json.dumps(router.status()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise RouterError(f"status API {addr}: {e.strerror} (choose another --status-addr)") from None
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    return server


async def serve(router: Router, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    loop.add_reader(router.dp.control_fd, router.on_control)
    tasks = [asyncio.create_task(router.greet()), asyncio.create_task(router.sweep())]
    try:
        await stop.wait()
    finally:
        loop.remove_reader(router.dp.control_fd)
        for t in tasks:
            t.cancel()


def run(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="weavefast: %(message)s", stream=sys.stderr)
    try:
        require_root()   # before importing the engine: its dependencies may be installed for root only
        from dataplane.engine import Dataplane

        cfg, peers = config_from_args(args)
        dp = Dataplane(cfg)
        dp.open([host for host, _ in peers])
    except RouterError as e:
        print(f"weavefast router: {e}", file=sys.stderr)
        return 2
    router = Router(args.name, dp, peers)
    status = None
    try:
        status = serve_status(router, args.status_addr)
        dp.start()
        on = [k for k, v in dp.status_offloads().items() if v]
        print(f"weavefast router {args.name} (peer id {cfg.peer_id}) forwarding: TAP {cfg.tap_name} on bridge "
              f"{cfg.bridge}, UDP port {cfg.port}, MTU {dp.mtu}, offloads: {', '.join(on) or 'none'}",
              flush=True)

        async def main():
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            await serve(router, stop)

        asyncio.run(main())
    except RouterError as e:
        print(f"weavefast router: {e}", file=sys.stderr)
        return 2
    finally:
        if status is not None:
            status.shutdown()
            status.server_close()
        dp.close()
    return 0
