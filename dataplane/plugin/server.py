"""`weavefast plugin`: Docker's remote NetworkDriver and IpamDriver on a Unix socket.

dockerd finds the plugin by its socket, `/run/docker/plugins/weavefast.sock`, and
speaks libnetwork's remote-driver protocol: `POST /Interface.Method`, one call per
connection, a JSON body (empty for calls without arguments, no Content-Type). A call
that cannot be carried out is answered 200 with `{"Err": ...}` (NetworkDriver) or
`{"Error": ...}` (IpamDriver); a body that is not a JSON object, or lacks a field,
gets 400 with the same key; an unknown method 404 (dockerd then treats the method as
not implemented). Calls are served one at a time, each on a copy of the state that
is saved before it becomes current (see state.py), so a failed call changes nothing.
At start and every few seconds the plugin also puts the containers' ports back on
the bridge if the bridge was recreated meanwhile (see driver.reattach_ports), gives
back address blocks that stayed empty (blocks.py) and announces its address ranges
through the mesh when there is no store. With a Docker API to follow (`docker_host`),
it also keeps containers' names and previous addresses (names.py) and frees what
dockerd no longer uses (see reconcile.py). `GET /status` on the same socket answers
the plugin's status (networks, endpoints, address blocks, last errors) as JSON.

The router runs the same server in its own process with `start_plugin()`.
"""
import argparse
import collections
import contextlib
import errno
import http.server
import json
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from pathlib import Path

from dataplane.plugin import blocks, overlay, report
from dataplane.plugin.docker_api import DockerClient
from dataplane.plugin.driver import Driver, parse_mtu, reattach_ports
from dataplane.plugin.ipam import DEFAULT_SUBNET, Ipam
from dataplane.plugin.names import Names
from dataplane.plugin.protocol import BadRequest, PluginError
from dataplane.plugin.reconcile import DEFAULT_INTERVAL, Reconciler
from dataplane.plugin.state import StateError, StateStore
from dataplane.store import EtcdStore

DEFAULT_SOCKET = "/run/docker/plugins/weavefast.sock"
DEFAULT_STATE_DIR = "/var/lib/weavefast/plugin"
DEFAULT_BRIDGE = "weavefast"
DEFAULT_DOCKER_HOST = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
DEFAULT_STATUS_ADDR = "127.0.0.1:6784"
KEPT_ERRORS = 10  # the last errors shown in the status
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
REQUEST_TIMEOUT = 30  # seconds a client may take to send its request
MAINTENANCE_INTERVAL = 1  # seconds between block releases and range announcements
RECONCILE_RETRY = 10  # seconds between attempts to read this host's blocks from the store
REATTACH_INTERVAL = 5  # seconds between checks that containers' ports are on the bridge
MAX_BODY = 1 << 20

log = logging.getLogger("weavefast.plugin")


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    # A thread per connection, so that a client that connects and says nothing cannot
    # hold up dockerd's calls; close() waits for calls in progress (their state is saved).
    daemon_threads = False
    block_on_close = True


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "weavefast-plugin"
    timeout = REQUEST_TIMEOUT

    def do_POST(self):
        plugin = self.server.plugin
        method = self.path.lstrip("/")
        error_key = "Error" if method.startswith("IpamDriver.") else "Err"
        handler = plugin.methods.get(method)
        try:
            request = self._read_json()  # before any answer: a client still sending gets EPIPE
            if handler is None:
                return self._answer(404, {"Err": f"weavefast plugin has no method {method!r}"})
            with plugin.store.transaction() as state:
                answer = handler(state, request)
        except BadRequest as e:
            log.warning("%s: bad request: %s", method, e)
            plugin.record_error(f"{method}: bad request: {e}")
            return self._answer(400, {error_key: f"bad request: {e}"})
        except PluginError as e:
            log.warning("%s: %s", method, e)
            plugin.record_error(f"{method}: {e}")
            return self._answer(200, {error_key: str(e)})
        except Exception as e:  # report it to dockerd rather than drop the connection
            log.exception("%s failed", method)
            plugin.record_error(f"{method}: internal error: {e}")
            return self._answer(500, {error_key: f"internal error: {e}"})
        log.debug("%s %s -> %s", method, request, answer)
        self._answer(200, answer)
        if method not in _READ_ONLY:
            plugin.changed()

    def do_GET(self):
        if self.path != "/status":
            return self._answer(404, {"Err": f"weavefast plugin has no page {self.path!r}"})
        self._answer(200, self.server.plugin.status())

    def _read_json(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if not 0 <= length <= MAX_BODY:
            raise BadRequest(f"body of {length} bytes (at most {MAX_BODY})")
        body = self.rfile.read(length)
        if not body.strip():
            return {}
        try:
            request = json.loads(body)
        except ValueError as e:
            raise BadRequest(f"body is not JSON: {e}") from None
        if not isinstance(request, dict):
            raise BadRequest("body is not a JSON object")
        return request

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code="-", size="-"):  # do_POST logs each call already
        pass

    def log_message(self, format, *args):  # the default writes to stderr with a client address
        log.warning(format, *args)


class Plugin:
    """A running plugin server; `close()` stops it and removes its socket.

    `overlay_mtu()` gives the router's overlay MTU (see overlay.py). With a
    `docker_host` (e.g. unix:///var/run/docker.sock) the plugin follows that dockerd
    for names (names.py) and reconciles its state with it every `reconcile_interval`
    seconds (see reconcile.py). `cluster` is blocks.Cluster (this host alone when None).
    """

    def __init__(self, bridge, overlay_mtu, socket_path, state_dir, docker_host=None,
                 reconcile_interval=DEFAULT_INTERVAL, cluster=None, dns_address=None,
                 default_subnet=DEFAULT_SUBNET):
        self.socket_path = Path(socket_path)
        _claim_socket_path(self.socket_path)
        self.store = StateStore(state_dir)
        self.overlay_mtu = overlay_mtu
        self.errors = collections.deque(maxlen=KEPT_ERRORS)
        self.cluster = cluster or blocks.Cluster(socket.gethostname())
        self.docker = DockerClient(docker_host) if docker_host else None
        self.names = Names(self.store, self.cluster, self.docker,
                           usage=lambda: blocks.summary(self.store.data)) if self.docker else None
        ipam = Ipam(self.cluster, default_subnet,
                    self.names.previous_address if self.names else None)
        driver = Driver(bridge, overlay_mtu, dns_address)
        self.methods = {
            "Plugin.Activate": _activate,
            "NetworkDriver.GetCapabilities": driver.get_capabilities,
            "NetworkDriver.CreateNetwork": driver.create_network,
            "NetworkDriver.DeleteNetwork": driver.delete_network,
            "NetworkDriver.CreateEndpoint": driver.create_endpoint,
            "NetworkDriver.EndpointOperInfo": driver.endpoint_oper_info,
            "NetworkDriver.DeleteEndpoint": driver.delete_endpoint,
            "NetworkDriver.Join": driver.join,
            "NetworkDriver.Leave": driver.leave,
            "NetworkDriver.ProgramExternalConnectivity": driver.program_external_connectivity,
            "NetworkDriver.RevokeExternalConnectivity": driver.revoke_external_connectivity,
            "NetworkDriver.DiscoverNew": driver.discover,
            "NetworkDriver.DiscoverDelete": driver.discover,
            "IpamDriver.GetCapabilities": ipam.get_capabilities,
            "IpamDriver.GetDefaultAddressSpaces": ipam.get_default_address_spaces,
            "IpamDriver.RequestPool": ipam.request_pool,
            "IpamDriver.ReleasePool": ipam.release_pool,
            "IpamDriver.RequestAddress": ipam.request_address,
            "IpamDriver.ReleaseAddress": ipam.release_address,
        }
        self._reattach_ports()  # before serving: see driver.reattach_ports
        self._reconciled = self.cluster.store is None
        self._next_reconcile = 0.0
        self._announced = None
        self._maintain()
        self.reconciler = None
        if self.docker:
            self.reconciler = Reconciler(self.store, driver, ipam, self.docker,
                                         driver_name=self.socket_path.stem,
                                         interval=reconcile_interval,
                                         on_error=self.record_error)
        self._server = _UnixHTTPServer(str(self.socket_path), _Handler)
        self._server.plugin = self
        self._closing = threading.Event()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="weavefast-plugin",
                             daemon=True),
            threading.Thread(target=self._keep_ports_attached, name="weavefast-plugin-ports",
                             daemon=True),
            threading.Thread(target=self._keep_blocks, name="weavefast-plugin-blocks",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if self.reconciler:  # after serving: dockerd may be waiting for us to answer
            self.reconciler.start()

    def record_error(self, message):
        """Keep `message` (already logged) for the status's last errors."""
        self.errors.append({"time": time.time(), "message": message})

    def changed(self):
        """A call changed the state: let the reconciler look at Docker soon."""
        if self.reconciler:
            self.reconciler.soon()

    def _known_overlay_mtu(self):
        try:
            return self.overlay_mtu()
        except PluginError:
            return None

    def _reattach_ports(self):
        try:
            with self.store.lock:
                reattached = reattach_ports(self.store.data)
            if reattached:
                log.info("re-attached %s to the bridge", ", ".join(reattached))
        except Exception:  # netlink trouble: log it, try again next time
            log.exception("cannot check the containers' bridge ports")

    def _keep_ports_attached(self):
        while not self._closing.wait(REATTACH_INTERVAL):
            self._reattach_ports()

    def _maintain(self):
        """Blocks: reconcile with the store once it answers, give back empty ones, announce
        ranges through the mesh. Store trouble is logged and retried."""
        if self.cluster.store_error is not None:  # after an outage, look again: see
            self._reconciled = False              # blocks.reconcile_with_store
        try:
            with self.store.transaction() as state:
                if not self._reconciled and time.monotonic() >= self._next_reconcile:
                    self._next_reconcile = time.monotonic() + RECONCILE_RETRY
                    self.cluster.store_call("read this host's blocks", blocks.reconcile_with_store,
                                            self.cluster, state)
                    self._reconciled = True
                released = blocks.release_empty_blocks(self.cluster, state)
            if released:
                log.info("gave back empty block(s) %s", ", ".join(released))
            if self.cluster.store is None and self.cluster.mesh is not None:
                announcement = blocks.announcement(self.store.data)
                if announcement != self._announced:
                    self.cluster.mesh.publish(blocks.MESH_KEY, announcement)
                    self._announced = announcement
        except PluginError as e:
            log.debug("blocks: %s", e)
        except Exception:
            log.exception("address block upkeep failed")

    def _keep_blocks(self):
        while not self._closing.wait(MAINTENANCE_INTERVAL):
            self._maintain()

    def status(self):
        """The plugin's part of `weavefast status` (see report.py): networks, endpoints,
        reconciliation, address blocks, store, names."""
        # without the lock: a call waiting on the store must not hold up the router's
        # status (it runs on the control plane's loop); the state is replaced, never changed
        state = self.store.data
        reconciler, docker_networks, reconciliation = self.reconciler, {}, None
        if reconciler:
            docker_networks = reconciler.networks
            reconciliation = {"docker_host": reconciler.docker_host,
                              "interval": reconciler.interval, "last": reconciler.last_pass}
        conflicts = blocks.mesh_conflicts(self.cluster, state)
        store = self.cluster.store
        return {
            **report.plugin_status(
                state, socket=str(self.socket_path), overlay_mtu=self._known_overlay_mtu(),
                docker_networks=docker_networks, reconciliation=reconciliation,
                errors=list(self.errors)),
            "host": self.cluster.host,
            "store": None if store is None else {
                "endpoints": store.display,
                "state": "unreachable" if self.cluster.store_error else "reachable",
                "error": self.cluster.store_error, "since": self.cluster.store_error_since},
            "blocks": blocks.summary(state),
            "conflicts": [{"subnet": c[0], "range": c[1], "host": c[2], "their_range": c[3]}
                          for c in conflicts],
            "peer_ranges": {} if self.cluster.mesh is None or store is not None else {
                host: ranges for host, ranges in self.cluster.mesh.peers(blocks.MESH_KEY).items()
                if host != self.cluster.host},
            "names": self.names.status() if self.names else None,
        }

    def close(self):
        self._closing.set()
        if self.reconciler:
            self.reconciler.close()
        if self.names:
            self.names.close()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _activate(state, request):
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


# calls that change nothing: no reason to look at Docker after them
_READ_ONLY = {"Plugin.Activate", "NetworkDriver.GetCapabilities",
              "NetworkDriver.EndpointOperInfo", "IpamDriver.GetCapabilities",
              "IpamDriver.GetDefaultAddressSpaces", "NetworkDriver.DiscoverNew",
              "NetworkDriver.DiscoverDelete", "NetworkDriver.ProgramExternalConnectivity",
              "NetworkDriver.RevokeExternalConnectivity"}


def start_plugin(bridge=DEFAULT_BRIDGE, mtu=None, socket_path=DEFAULT_SOCKET,
                 state_dir=DEFAULT_STATE_DIR, docker_host=None,
                 reconcile_interval=DEFAULT_INTERVAL, status_addr=DEFAULT_STATUS_ADDR,
                 **cluster_options):
    """Serve the plugin from a thread of this process (as `weavefast router --plugin` does).

    `mtu` is the overlay MTU when the caller knows it (the router does); without it the
    plugin asks the router's status API at `status_addr`. With `docker_host` it
    reconciles with that dockerd (see reconcile.py).

    Returns a `Plugin` handle; `handle.close()` stops serving and removes the socket.
    Raises OSError when the socket cannot be bound (another plugin serving it, no
    permission) and StateError when the state file cannot be read.
    """
    overlay_mtu = overlay.fixed(mtu) if mtu else overlay.RouterMTU(f"http://{status_addr}/status")
    return Plugin(bridge, overlay_mtu, socket_path, state_dir, docker_host, reconcile_interval,
                  **cluster_options)


def _claim_socket_path(path):
    """Make way for our socket: remove a stale one, refuse if a live plugin answers there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOTSOCK):
                raise
        else:
            raise OSError(errno.EADDRINUSE, f"another plugin is serving {path}")
    path.unlink()


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help="Unix socket dockerd finds the plugin on (default %(default)s)")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="where networks, endpoints and address pools are kept "
                             "(default %(default)s)")
    parser.add_argument("--bridge", default=DEFAULT_BRIDGE,
                        help="the overlay bridge containers are attached to; created if the "
                             "router has not (default %(default)s)")
    parser.add_argument("--mtu", type=_mtu_argument,
                        help="the overlay MTU, given to container interfaces; a network's "
                             "-o mtu=N may only lower it (default: asked from the router)")
    parser.add_argument("--status-addr", default=DEFAULT_STATUS_ADDR, metavar="HOST:PORT",
                        help="the router's status API, asked for the overlay MTU "
                             "(default %(default)s)")
    add_reconcile_arguments(parser)
    parser.add_argument("--store", default=os.environ.get("WEAVEFAST_STORE"),
                        metavar="etcd://HOST:2379",
                        help="cluster store for address blocks (default $WEAVEFAST_STORE; none: "
                             "this host's --ip-range, or the whole subnet)")
    parser.add_argument("--name", default=socket.gethostname(),
                        help="this host's name in the store (default: the hostname; the "
                             "router's --name when run by `weavefast router --plugin`)")
    parser.add_argument("--block-size", type=int, default=blocks.DEFAULT_BLOCK_PREFIX,
                        metavar="PREFIX", help="prefix length of the address blocks claimed in "
                                               "the store (default /%(default)s)")
    parser.add_argument("--block-grace", type=float, default=blocks.DEFAULT_GRACE,
                        metavar="SECONDS", help="how long a block stays empty before it is "
                                                "given back (default %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])


def add_reconcile_arguments(parser, prefix=""):
    """--docker-host and --reconcile-interval (prefixed `--plugin-` in the router)."""
    parser.add_argument(f"--{prefix}docker-host", default=DEFAULT_DOCKER_HOST, metavar="URL",
                        help="dockerd's API, asked what is still in use (default: $DOCKER_HOST "
                             "or unix:///var/run/docker.sock)")
    parser.add_argument(f"--{prefix}reconcile-interval", type=_interval_argument,
                        default=DEFAULT_INTERVAL, metavar="SECONDS",
                        help="how often to free what dockerd no longer uses; a leak lives at "
                             "most about twice this (default %(default)g)")


def _interval_argument(text):
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _mtu_argument(text):
    try:
        return parse_mtu(text)
    except PluginError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args) -> int:
    # --log-level is for the plugin's own messages, not for pyroute2's debugging
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(args.log_level.upper())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        store = EtcdStore(args.store) if args.store else None
        plugin = start_plugin(args.bridge, args.mtu, args.socket, args.state_dir,
                              args.docker_host, args.reconcile_interval, args.status_addr,
                              cluster=blocks.Cluster(args.name, store, block_prefix=args.block_size,
                                                     grace=args.block_grace))
    except (OSError, StateError, ValueError) as e:
        log.error("cannot start: %s", e)
        return 1
    log.info("serving NetworkDriver and IpamDriver on %s (bridge %s, mtu %s, state in %s)",
             args.socket, args.bridge, args.mtu or f"the router's at {args.status_addr}",
             args.state_dir)
    with plugin:
        stop.wait()
    log.info("stopped")
    return 0
