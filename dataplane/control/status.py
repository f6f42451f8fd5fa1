"""The router's local HTTP API (default 127.0.0.1:6784).

GET /status    the ControlPlane's status as JSON
GET /metrics   Prometheus text format
POST /connect  {"host": str, "port": int | null}: add a peer
POST /forget   {"host": str, "port": int | null}: close and stop connections to a peer

Reading is open to whoever reaches the address (loopback by default). What
changes the router needs `Authorization: Bearer TOKEN` with the token the
router writes at start to a file only root can read (its path is in /status
as `control_token_file`; `weavefast connect` and `forget` read it), and a
request that carries an `Origin` header (a browser's, on behalf of some web
page) is refused whatever it holds.

The server runs in a thread; every request hops onto the control plane's
asyncio loop, which owns all state.
"""
import asyncio
import hmac
import json
import logging
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("weavefast.status")

DEFAULT_ADDRESS = ("127.0.0.1", 6784)
STATE_VALUES = {"established": 1}
TOKEN_DIR = Path("/run/weavefast")
MAX_REQUEST = 4096
MAX_CLIENTS = 16      # connections served at once; more are closed (one thread each)
CLIENT_TIMEOUT = 5.0  # seconds a client may take to send its request


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, but never more than MAX_CLIENTS of them."""
    daemon_threads = True

    def __init__(self, *args):
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.turned_away = 0
        super().__init__(*args)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.turned_away += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def token_path_for(router_name: str) -> Path:
    return TOKEN_DIR / f"{router_name}.token"


def write_token(path: Path) -> str:
    """A fresh random token in a file only its owner (root) can read."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return token


def metric_families(status):
    """Prometheus metric families built from one status snapshot."""
    labels = ["peer", "peer_id"]
    up = GaugeMetricFamily("weavefast_peer_up", "1 when the connection to the peer is established",
                           labels=labels)
    reachable = GaugeMetricFamily("weavefast_peer_reachable",
                                  "1 when a route to the peer exists (direct or relayed)",
                                  labels=labels)
    rtt = GaugeMetricFamily("weavefast_peer_rtt_seconds", "data-path heartbeat round-trip time",
                            labels=labels)
    failures = GaugeMetricFamily("weavefast_peer_connection_failures",
                                 "consecutive failed connection attempts", labels=labels)
    per_peer = {}
    heartbeats = CounterMetricFamily("weavefast_peer_heartbeats",
                                     "data-path heartbeats: sent, answered, rejected (bad MAC)",
                                     labels=labels + ["kind"])
    peer_drops = CounterMetricFamily("weavefast_peer_drops", "datagrams dropped, by peer and reason",
                                     labels=labels + ["reason"])
    for peer in status["peers"]:
        if peer["peer_id"] is None:
            continue
        values = [peer["name"], str(peer["peer_id"])]
        up.add_metric(values, STATE_VALUES.get(peer["state"], 0))
        reachable.add_metric(values, 1 if peer["route"] else 0)
        failures.add_metric(values, peer["failures"])
        if peer["rtt_ms"] is not None:
            rtt.add_metric(values, peer["rtt_ms"] / 1000)
        for kind, value in peer["heartbeats"].items():
            heartbeats.add_metric(values + [kind], value)
        peer_drops.add_metric(values + ["bad_heartbeat"], peer["heartbeats"]["rejected"])
        for key, value in peer["counters"].items():
            if key.startswith("drop"):
                reason = key.removeprefix("drops_").removeprefix("drop_")
                peer_drops.add_metric(values + [reason], value)
            else:
                family = per_peer.setdefault(key, CounterMetricFamily(
                    f"weavefast_peer_{key}", f"{key.replace('_', ' ')} exchanged with the peer",
                    labels=labels))
                family.add_metric(values, value)
    yield from (up, reachable, rtt, failures, heartbeats, peer_drops, *per_peer.values())
    for key, value in status["counters"].items():
        yield CounterMetricFamily(f"weavefast_{key}", f"{key.replace('_', ' ')}, all peers", value=value)
    drops = CounterMetricFamily("weavefast_drops", "datagrams and frames dropped, by reason",
                                labels=["reason"])
    for reason, value in status["drops"].items():
        drops.add_metric([reason], value)
    yield drops
    yield GaugeMetricFamily("weavefast_mac_table_entries", "learned MAC addresses",
                            value=status["mac_table"]["size"])
    degraded = GaugeMetricFamily("weavefast_degraded", "1 for each thing that makes the router slower "
                                 "than it could be: what, why, and the fix", labels=["what", "why", "fix"])
    for d in status.get("degradations", ()):
        degraded.add_metric([d["what"], d["why"], d["fix"]], 1)
    yield degraded
    yield CounterMetricFamily("weavefast_bad_heartbeats",
                              "CONTROL datagrams that were not a heartbeat of a live session",
                              value=status["bad_heartbeats"])


class _Snapshot:
    """A prometheus_client collector over a status getter."""

    def __init__(self, get_status):
        self.get_status = get_status

    def collect(self):
        return metric_families(self.get_status())


class StatusServer:
    def __init__(self, control, address=DEFAULT_ADDRESS, details=dict, token_file: Path | None = None):
        """`details()` returns more fields for /status (the router's bridge, MTU...);
        `token_file` is where the token for changes goes (removed on stop)."""
        self.control = control
        self.address = address
        self.details = details
        self.token_file = token_file
        self._token = None
        self._httpd = self._thread = self._loop = None

    def _call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def status(self):
        async def snapshot():
            return {**self.control.status(), **self.details(),
                    "control_token_file": str(self.token_file) if self.token_file else None,
                    "status_api_turned_away": self._httpd.turned_away}
        return self._call(snapshot())

    def _refusal(self, headers):
        """None when a request may change the router, else (HTTP code, reason)."""
        if headers.get("Origin") is not None:
            return 403, "cross-origin requests cannot change the router"
        given = headers.get("Authorization", "")
        if not self._token or not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            where = f" (in {self.token_file}, readable by root)" if self.token_file else ""
            return 401, f"this needs the router's token{where}: run `weavefast connect` or `forget` as root"
        if headers.get("Content-Type") != "application/json":
            return 415, "send the request as application/json"
        return None

    async def start(self):
        self._loop = asyncio.get_running_loop()
        if self.token_file:
            self._token = write_token(self.token_file)
        server = self
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self.status))

        class Handler(BaseHTTPRequestHandler):
            timeout = CLIENT_TIMEOUT

            def log_message(self, fmt, *args):
                log.debug("%s %s", self.address_string(), fmt % args)

            def reply(self, code, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else (json.dumps(body, indent=1) + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/status":
                    self.reply(200, server.status())
                elif self.path == "/metrics":
                    self.reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                else:
                    self.reply(404, {"error": f"no such endpoint {self.path}"})

            def do_POST(self):
                action = {"/connect": server.control.connect,
                          "/forget": server.control.forget}.get(self.path)
                if action is None:
                    return self.reply(404, {"error": f"no such endpoint {self.path}"})
                refusal = server._refusal(self.headers)
                if refusal:
                    return self.reply(refusal[0], {"error": refusal[1]})
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    if not 0 <= length <= MAX_REQUEST:
                        raise ValueError(f"a request of {length} bytes (at most {MAX_REQUEST})")
                    request = json.loads(self.rfile.read(length))
                    host, port = str(request["host"]), request.get("port")
                    port = None if port is None else int(port)
                except (ValueError, KeyError, TypeError) as exc:
                    return self.reply(400, {"error": f"expected {{\"host\": ..., \"port\": ...}}: {exc}"})
                result = server._call(action(host, port))
                if self.path == "/connect":
                    self.reply(200, {"connecting": result})
                elif result:
                    self.reply(200, {"forgotten": result})
                else:
                    self.reply(404, {"error": f"no peer matches {host}"})

        self._httpd = _BoundedServer(self.address, Handler)
        self.address = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 1.0},
                                        name="weavefast-status", daemon=True)
        self._thread.start()

    async def stop(self):
        await asyncio.get_running_loop().run_in_executor(None, self._httpd.shutdown)
        self._httpd.server_close()
        self._thread.join()
        if self.token_file:
            self.token_file.unlink(missing_ok=True)
