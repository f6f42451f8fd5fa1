"""Simulated hosts and containers in network namespaces, for tests, the demo and benchmarks.

A `Testbed` builds:

- one namespace per host (``<prefix>-h1``, ``<prefix>-h2``, ...) with an underlay
  interface ``ul0`` addressed 10.47.0.<i>/24. Two hosts are joined by one veth pair;
  three or more (or two with ``switch=True``) by a bridge ``ul`` in a "switch"
  namespace (``<prefix>-sw``), each host a veth to it;
- in every host namespace a Linux bridge (default ``weavefast``) for the overlay;
- one namespace per container (``<prefix>-c1``, ...) whose ``eth0`` is a veth to
  the host's bridge, addressed 10.32.0.<n>/24 and fd00:32::<n>/64 (no IPv6 below an
  overlay MTU of 1280: `ip6` is None), MTU = overlay MTU (default: underlay MTU minus the
  86 bytes of encapsulation over IPv4).

The overlay plumbing in a host (bridge, container ports, the router's TAP) gets no
IPv6 link-local address, and containers send no router solicitations, so the only
traffic on the overlay is what a test or a container sends. Routers are started as
``python -m dataplane router --name <host namespace>``, so their command line carries
the prefix too.

Nothing is created in the caller's own namespace: every veth is created inside one
namespace with its peer placed directly into the other, so names only need to be
unique per namespace and deleting the namespaces removes every interface.

Netlink work (namespaces, veth, bridges, addresses, neighbours) goes through
pyroute2 (``IPRoute(netns=...)``, ``pyroute2.netns``). Sockets inside a namespace
are made by one helper thread that enters the namespace with setns(2), creates the
socket and returns to its own namespace (no fork per socket, so polling the status
API of 64 routers costs next to nothing; pyroute2's ``create_socket``, which forks,
is the fallback), so tests talk to containers and to the router's status API from
this process. Two things use a subprocess instead, because they are one-liners
there and awkward in netlink: sysctls (written with ``sysctl`` under ``nsenter``,
since /proc/sys/net shows the namespace of the opening task) and programs run in a
namespace (``nsenter --net=/run/netns/NAME``, which, unlike ``ip netns exec``, leaves
/sys and the cgroup mounts alone).

Scale: the kernel's neighbour (ARP) table is shared by all namespaces and, past
``net.ipv4.neigh.default.gc_thresh3`` (1024) entries that may be collected, refuses
new ones ("neighbour table overflow"): 64 hosts that all talk to each other need
64 x 63 of them. So with more than `STATIC_NEIGHBOURS_ABOVE` hosts (or
``static_neighbours=True``) every host gets a permanent ARP entry for every other
host's underlay address; permanent entries are exempt from that limit and no
global setting is changed. Names stay short whatever the host count (``h64``,
``vc12``: interface names are at most 15 bytes); the addresses (a /24 each for
the underlay and the containers) allow 254 hosts and 254 containers, the switch
bridge 1024 ports.

Loss (`Testbed.set_loss(percent, ports)`, on a testbed with a switch): an nftables
table ``wfloss`` (bridge family) in the switch namespace drops each UDP datagram to
one of `ports` that crosses the switch with probability `percent` / 100,
independently (``numgen random``), in both directions; TCP (the routers' control
connections) and other ports pass untouched. The hosts' ``ul0`` get their
segmentation offloads off (tso, gso, UDP GSO), so that GSO sends leave as
datagrams and each meets the rule on its own, and GRO on (veth NAPI), so that what
survives is merged again on receipt as a NIC would. Everything lives inside the
testbed's namespaces and goes with them; `clear_loss()` removes the rule earlier.

Processes started in a namespace get their own process group; `Testbed.close()`
(idempotent, also run by the context manager and when construction fails) sends
SIGTERM to each group, SIGKILL after a grace period, kills anything else still in
the testbed's namespaces, and removes the namespaces. `remove_leftovers(prefix)`
does the same for namespaces left behind by a process that died.
"""
import ctypes
import dataclasses
import errno as errno_module
import hashlib
import http.client
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/run/netns")
UNDERLAY_NET = ipaddress.ip_network("10.47.0.0/24")
OVERLAY_NET4 = ipaddress.ip_network("10.32.0.0/24")
OVERLAY_NET6 = ipaddress.ip_network("fd00:32::/64")
BROADCAST4 = str(OVERLAY_NET4.broadcast_address)
ENCAP_OVERHEAD = 86  # IPv4 + UDP + weavefast header + trailer + record header + inner Ethernet
ROUTER_PORT = 6783
STATUS_PORT = 6784
IPV6_MIN_MTU = 1280
IFA_F_NODAD = 0x02  # the address is usable at once, no duplicate-address detection wait
NUD_PERMANENT = 0x80
CLONE_NEWNET = 0x40000000
STATIC_NEIGHBOURS_ABOVE = 8  # hosts; see "Scale" above

_serial = itertools.count()
_PREFIX_OWNER = re.compile(r"^[a-z]+(\d+)n\d+-")


def unique_prefix(base="wfi"):
    """A prefix unique to this process and call: ``<base><pid>n<serial>``."""
    return f"{base}{os.getpid()}n{next(_serial)}"


def netns_available():
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (creates network namespaces, veth pairs and bridges)"
    if shutil.which("nsenter") is None:
        return "needs nsenter (util-linux)"
    return None


_libc = ctypes.CDLL(None, use_errno=True)
_netns_thread = None
_netns_thread_lock = threading.Lock()


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _socket_in(path, family, type, proto):
    """Runs in the helper thread only: a socket made inside the namespace at `path`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            return socket.socket(family, type, proto)
        finally:
            _setns(own)  # cannot fail: we came from there
    finally:
        os.close(own)


def netns_socket(ns_name, family=socket.AF_INET, type=socket.SOCK_DGRAM, proto=0):
    """A socket inside namespace `ns_name`, made without forking (see the module
    docstring). The calling thread never changes namespace: a helper thread does."""
    global _netns_thread
    with _netns_thread_lock:
        if _netns_thread is None:
            _netns_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="testbed-netns")
    try:
        return _netns_thread.submit(_socket_in, str(NETNS_DIR / ns_name), family, type, proto).result()
    except OSError as e:
        if e.errno in (errno_module.ENOENT, errno_module.EMFILE, errno_module.ENFILE):
            raise
        # setns refused (a seccomp filter, an old kernel): pyroute2 forks a child for it
        return netns.create_socket(ns_name, family, type, proto, flags=0)


def nsenter_argv(ns_name):
    """The argv prefix that runs a program inside namespace `ns_name`."""
    return ["nsenter", f"--net={NETNS_DIR / ns_name}", "--"]


@dataclasses.dataclass
class Process:
    """A program started in a namespace, in its own process group, output in `log_path`."""

    name: str
    netns: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def terminate(self):
        """SIGTERM to the process group, if the process is still running."""
        if self.popen.poll() is None:
            _killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, grace=5.0):
        """SIGTERM to the process group, SIGKILL after `grace` seconds. Returns the exit code."""
        self.terminate()
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        # SIGKILL also takes whatever the process left behind in its group
        _killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.wait()


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclasses.dataclass
class Host:
    name: str  # "h1"
    netns: str
    index: int
    underlay_ip: str
    bridge: str
    containers: list = dataclasses.field(default_factory=list, repr=False)
    router: Process | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class Container:
    name: str  # "c1"
    netns: str
    host: Host = dataclasses.field(repr=False)
    ip4: str
    ip6: str | None
    mac: str
    ifname: str = "eth0"


@dataclasses.dataclass
class PingResult:
    ok: bool  # `count` replies arrived before the deadline
    transmitted: int
    received: int
    rtt_avg_ms: float | None
    output: str


@dataclasses.dataclass
class TransferResult:
    bytes_sent: int
    bytes_received: int
    sent_sha256: str
    received_sha256: str
    seconds: float

    @property
    def intact(self):
        return self.bytes_sent == self.bytes_received and self.sent_sha256 == self.received_sha256

    @property
    def mbit_per_s(self):
        return self.bytes_received * 8 / self.seconds / 1e6 if self.seconds else 0.0


class Testbed:
    """Hosts and containers in network namespaces; see the module docstring.

    >>> with Testbed(hosts=2, containers_per_host=1) as tb:
    ...     tb.start_routers()
    ...     c1, c2 = tb.containers
    ...     assert tb.ping(c1, c2.ip4).ok
    """

    def __init__(self, hosts=2, containers_per_host=0, underlay_mtu=1500, overlay_mtu=None,
                 prefix=None, bridge="weavefast", static_neighbours=None, switch=False):
        """`static_neighbours`: permanent ARP entries between the hosts' underlay
        addresses (default: with more than STATIC_NEIGHBOURS_ABOVE hosts). `switch`:
        two hosts also meet on a switch namespace (for set_loss) instead of one veth."""
        if hosts < 1:
            raise ValueError("a testbed needs at least one host")
        if hosts > UNDERLAY_NET.num_addresses - 2:
            raise ValueError(f"at most {UNDERLAY_NET.num_addresses - 2} hosts: one underlay "
                             f"address each in {UNDERLAY_NET}")
        if static_neighbours is None:
            static_neighbours = hosts > STATIC_NEIGHBOURS_ABOVE
        self.static_neighbours = static_neighbours
        self.prefix = prefix or unique_prefix()
        self.underlay_mtu = underlay_mtu
        self.overlay_mtu = overlay_mtu or underlay_mtu - ENCAP_OVERHEAD
        self.bridge = bridge
        self.hosts = []
        self.containers = []
        self.processes = []
        self.switch_netns = None
        self._switch = switch
        self._namespaces = []  # creation order; removed in reverse
        self._log_dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._closed = False
        self.loss = 0
        try:
            self._build_underlay(hosts)
            for host in self.hosts:
                for _ in range(containers_per_host):
                    self.add_container(host)
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------

    def _new_netns(self, suffix):
        name = f"{self.prefix}-{suffix}"
        netns.create(name)
        self._namespaces.append(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    def _build_underlay(self, count):
        for i in range(1, count + 1):
            ns = self._new_netns(f"h{i}")
            # no IPv6 link-local on the overlay plumbing: the host adds no chatter to it
            self.sysctl(ns, {"net.ipv6.conf.default.addr_gen_mode": 1})
            host = Host(name=f"h{i}", netns=ns, index=i, underlay_ip=str(UNDERLAY_NET[i]),
                        bridge=self.bridge)
            self.hosts.append(host)
        if count == 2 and not self._switch:
            self._veth(self.hosts[0].netns, "ul0", self.hosts[1].netns, "ul0", self.underlay_mtu)
        elif count >= 2:
            # one netlink session in the switch for every port (each session in a
            # namespace costs pyroute2 a fork); the host ends come up below
            self.switch_netns = self._new_netns("sw")
            with IPRoute(netns=self.switch_netns) as ipr:
                ipr.link("add", ifname="ul", kind="bridge", mtu=self.underlay_mtu)
                switch_index = ipr.link_lookup(ifname="ul")[0]
                ipr.link("set", index=switch_index, state="up")
                for host in self.hosts:
                    ipr.link("add", ifname=host.name, kind="veth", mtu=self.underlay_mtu,
                             peer={"ifname": "ul0", "net_ns_fd": host.netns, "mtu": self.underlay_mtu})
                    ipr.link("set", index=ipr.link_lookup(ifname=host.name)[0], master=switch_index,
                             state="up")
        underlay_macs = {}
        for host in self.hosts:
            with IPRoute(netns=host.netns) as ipr:
                if count > 1:
                    index = ipr.link_lookup(ifname="ul0")[0]
                    ipr.link("set", index=index, state="up")
                    ipr.addr("add", index=index, address=host.underlay_ip,
                             prefixlen=UNDERLAY_NET.prefixlen)
                    underlay_macs[host.underlay_ip] = ipr.get_links(index)[0].get("address")
                ipr.link("add", ifname=self.bridge, kind="bridge")
                ipr.link("set", index=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        if self.static_neighbours and count > 1:
            for host in self.hosts:
                with IPRoute(netns=host.netns) as ipr:
                    index = ipr.link_lookup(ifname="ul0")[0]
                    for ip, mac in underlay_macs.items():
                        if ip != host.underlay_ip:
                            ipr.neigh("add", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)

    @staticmethod
    def _veth(ns_a, name_a, ns_b, name_b, mtu):
        """A veth pair with one end in each namespace, both up."""
        with IPRoute(netns=ns_a) as ipr:
            ipr.link("add", ifname=name_a, kind="veth", mtu=mtu,
                     peer={"ifname": name_b, "net_ns_fd": ns_b, "mtu": mtu})
            ipr.link("set", index=ipr.link_lookup(ifname=name_a)[0], state="up")
        with IPRoute(netns=ns_b) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=name_b)[0], state="up")

    def add_container(self, host):
        """A container namespace on `host`, its eth0 bridged into the host's overlay bridge."""
        n = len(self.containers) + 1
        if n > OVERLAY_NET4.num_addresses - 2:
            raise ValueError(f"at most {OVERLAY_NET4.num_addresses - 2} containers: one address "
                             f"each in {OVERLAY_NET4}")
        name = f"c{n}"
        ns = self._new_netns(name)
        # no router solicitations: nothing answers them, they would only be flooded
        self.sysctl(ns, {"net.ipv6.conf.default.router_solicitations": 0})
        port = f"v{name}"
        self._veth(ns, "eth0", host.netns, port, self.overlay_mtu)
        with IPRoute(netns=host.netns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0],
                     master=ipr.link_lookup(ifname=host.bridge)[0])
        ip4, ip6 = str(OVERLAY_NET4[n]), str(OVERLAY_NET6[n])
        with IPRoute(netns=ns) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=ip4, prefixlen=OVERLAY_NET4.prefixlen)
            if self.overlay_mtu >= IPV6_MIN_MTU:
                ipr.addr("add", index=index, address=ip6, prefixlen=OVERLAY_NET6.prefixlen,
                         flags=IFA_F_NODAD)
            else:
                ip6 = None   # IPv6 needs a link MTU of 1280 at least
            mac = ipr.get_links(index)[0].get("address")
        container = Container(name=name, netns=ns, host=host, ip4=ip4, ip6=ip6, mac=mac)
        host.containers.append(container)
        self.containers.append(container)
        return container

    # -- running things ---------------------------------------------------------

    @staticmethod
    def sysctl(ns_name, values):
        argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]
        subprocess.run(nsenter_argv(ns_name) + argv, check=True, capture_output=True)

    @staticmethod
    def _ns(node):
        return node if isinstance(node, str) else node.netns

    def run(self, node, argv, timeout=60, check=True, **kwargs):
        """Run `argv` in the namespace of `node` (Host, Container or name); output captured."""
        return subprocess.run(nsenter_argv(self._ns(node)) + list(argv), timeout=timeout,
                              check=check, capture_output=True, text=True, **kwargs)

    def start(self, node, argv, name=None, env=None):
        """Start a long-running program in `node`'s namespace, with `env` added to its
        environment; stopped by close()."""
        ns = self._ns(node)
        name = name or f"{ns}-{len(self.processes)}"
        log_path = self._log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(nsenter_argv(ns) + list(argv), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=_python_env() | (env or {}))
        process = Process(name=name, netns=ns, popen=popen, log_path=log_path)
        self.processes.append(process)
        return process

    def start_router(self, host, peers=None, extra_args=(), wait=True):
        """Start `weavefast router` in `host`, peering with `peers` (default: all other hosts)."""
        if peers is None:
            peers = [h for h in self.hosts if h is not host]
        argv = [sys.executable, "-m", "dataplane", "router", "--name", host.netns,
                "--bridge", host.bridge, "--mtu", str(self.overlay_mtu)]
        for peer in peers:
            argv += ["--peer", peer.underlay_ip if isinstance(peer, Host) else peer]
        host.router = self.start(host, argv + list(extra_args), name=f"{host.netns}-router")
        if wait:
            self.wait_ready(host)
        return host.router

    def start_routers(self, extra_args=(), connected=True):
        """A router on every host, full mesh; returns once every status API answers and,
        if `connected`, every router has an established connection to every other."""
        for host in self.hosts:
            self.start_router(host, extra_args=extra_args, wait=False)
        for host in self.hosts:
            self.wait_ready(host)
        if connected:
            self.wait_connected()

    def wait_connected(self, timeout=20.0):
        """Wait until each router reports every other host's router as established."""
        unconnected = {}

        def all_established():
            unconnected.clear()
            for host in self.hosts:
                states = {p["name"]: p["state"] for p in self.status(host)["peers"]}
                others = [h.netns for h in self.hosts if h is not host]
                if any(states.get(name) != "established" for name in others):
                    unconnected[host.name] = states
            return not unconnected

        try:
            self.wait_for(all_established, timeout=timeout, what="routers connected to each other")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; peer states: {unconnected}") from None

    def socket(self, node, family=socket.AF_INET, type=socket.SOCK_DGRAM, proto=0):
        """A socket living in `node`'s namespace (usable from this process)."""
        return netns_socket(self._ns(node), family, type, proto)

    # -- router status ------------------------------------------------------------

    def status(self, host, timeout=5.0):
        """The router's JSON status (GET /status on 127.0.0.1:6784 inside `host`)."""
        conn = _NetnsHTTPConnection(self, host.netns, "127.0.0.1", STATUS_PORT, timeout)
        try:
            conn.request("GET", "/status")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{host.name}: status answered {response.status}: "
                                   f"{body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def wait_ready(self, host, timeout=20.0):
        """Wait until `host`'s router answers on its status API; raise with its log if it died."""
        deadline = time.monotonic() + timeout
        while True:
            if host.router is not None and not host.router.alive():
                raise RuntimeError(f"router on {host.name} exited with "
                                   f"{host.router.popen.returncode}:\n{host.router.output()[-3000:]}")
            try:
                return self.status(host, timeout=1.0)
            except (OSError, http.client.HTTPException, ValueError):
                if time.monotonic() > deadline:
                    log = host.router.output()[-3000:] if host.router else ""
                    raise TimeoutError(f"router on {host.name} not ready after {timeout}s:\n{log}")
                time.sleep(0.1)

    def wait_for(self, predicate, timeout=15.0, interval=0.1, what="condition"):
        """Poll `predicate()` until it returns something true; that value is returned."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    # -- traffic ------------------------------------------------------------------

    def ping(self, src, dst_ip, count=3, deadline=10, interval=0.2):
        """Ping `dst_ip` from `src`; `deadline` lets the first replies wait for ARP/learning."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-w", str(deadline),
                dst_ip]
        result = self.run(src, argv, timeout=deadline + 10, check=False)
        sent = re.search(r"(\d+) packets transmitted, (\d+) received", result.stdout)
        rtt = re.search(r"= [\d.]+/([\d.]+)/", result.stdout)
        return PingResult(ok=result.returncode == 0 and sent is not None,
                          transmitted=int(sent[1]) if sent else 0,
                          received=int(sent[2]) if sent else 0,
                          rtt_avg_ms=float(rtt[1]) if rtt else None,
                          output=result.stdout + result.stderr)

    def tcp_transfer(self, src, dst, nbytes, port=5201, timeout=120.0):
        """Send `nbytes` of random data over TCP from container `src` to container `dst`.

        Both ends hash what they actually sent/received (sha256); compare with `.intact`.
        """
        listener = self.socket(dst, socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((dst.ip4, port))
        listener.listen(1)
        listener.settimeout(timeout)
        received = {"bytes": 0, "sha256": hashlib.sha256(), "error": None}

        def receive():
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(timeout)
                    buf = memoryview(bytearray(1 << 20))
                    while n := conn.recv_into(buf):
                        received["sha256"].update(buf[:n])
                        received["bytes"] += n
            except OSError as e:
                received["error"] = e

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        sent_sha256 = hashlib.sha256()
        # one random block, each chunk of it stamped with its number: the stream never
        # repeats and generating it costs next to nothing next to the transfer
        block = bytearray(os.urandom(1 << 20))
        try:
            with self.socket(src, socket.AF_INET, socket.SOCK_STREAM) as sender:
                sender.settimeout(timeout)
                sender.connect((dst.ip4, port))
                started = time.monotonic()
                remaining, number = nbytes, 0
                while remaining:
                    block[:8] = number.to_bytes(8, "big")
                    number += 1
                    chunk = memoryview(block)[:min(len(block), remaining)]
                    sender.sendall(chunk)
                    sent_sha256.update(chunk)
                    remaining -= len(chunk)
                sender.shutdown(socket.SHUT_WR)
                receiver.join(timeout)
                seconds = time.monotonic() - started
        finally:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes a receiver still in accept()
            except OSError:
                pass
            listener.close()
        if receiver.is_alive() or received["error"]:
            raise RuntimeError(f"receiver in {dst.name} failed: {received['error'] or 'timed out'}")
        return TransferResult(bytes_sent=nbytes, bytes_received=received["bytes"],
                              sent_sha256=sent_sha256.hexdigest(),
                              received_sha256=received["sha256"].hexdigest(), seconds=seconds)

    def broadcast_copies(self, sender, receivers, port=7947, timeout=10.0):
        """Sends one UDP datagram to the overlay's broadcast address from `sender`;
        returns how many copies of it each of `receivers` got ({name: count})."""
        sockets = {}
        got = {c.name: [] for c in receivers}
        try:
            for container in receivers:
                sockets[container.name] = sock = self.socket(container)
                sock.bind(("0.0.0.0", port))
                sock.setblocking(False)
            with self.socket(sender) as out:
                out.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                out.sendto(b"once", (BROADCAST4, port))

                def flushed():
                    """A broadcast behind the first: where it arrived, every copy of the first has."""
                    out.sendto(b"flush", (BROADCAST4, port))
                    for name, sock in sockets.items():
                        try:
                            while True:
                                got[name].append(sock.recv(2048))
                        except BlockingIOError:
                            pass
                    return all(b"flush" in received for received in got.values())

                self.wait_for(flushed, timeout=timeout, interval=0.2, what="the broadcast everywhere")
        finally:
            for sock in sockets.values():
                sock.close()
        return {name: received.count(b"once") for name, received in got.items()}

    def neighbours(self, node):
        """The resolved unicast neighbours of `node` (ARP / NDP): {ip: mac}."""
        with IPRoute(netns=self._ns(node)) as ipr:
            return {n.get("NDA_DST"): n.get("NDA_LLADDR") for n in ipr.get_neighbours()
                    if n.get("NDA_LLADDR")
                    and not ipaddress.ip_address(n.get("NDA_DST")).is_multicast}

    # -- teardown -------------------------------------------------------------------

    def logs(self):
        """{process name: output so far} for every process started."""
        return {p.name: p.output() for p in self.processes}

    def close(self, grace=5.0):
        """Stop every process (SIGTERM, SIGKILL after `grace` s), remove every namespace
        (and with them every interface). Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for process in self.processes:  # all at once: they shut down in parallel
            process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.stop(grace=max(0.0, deadline - time.monotonic()))
            except Exception as e:  # keep going: the namespaces must go regardless
                errors.append(e)
        try:
            _remove_namespaces(reversed(self._namespaces))
        except Exception as e:
            errors.append(e)
        shutil.rmtree(self._log_dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def set_loss(self, percent, ports=(ROUTER_PORT,)):
        """Drops `percent` % (0 to 100, fractions allowed, resolution 0.001 %) of the UDP
        datagrams to `ports` crossing the switch, each on its own; 0 removes the rule.
        Needs a switch (``switch=True``). See the module docstring."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss {percent} % is not in 0..100")
        if self.switch_netns is None:
            raise ValueError("loss is dropped on the switch: build the testbed with switch=True")
        threshold = round(percent * 1000)   # of numgen random mod 100000
        self.run(self.switch_netns, ["nft", "delete table bridge wfloss"], check=False)
        self.loss = percent
        if threshold == 0:
            return
        for host in self.hosts:
            # GRO shows as on by default but a veth only merges with NAPI, which
            # turning it on (off first) starts.
            for feature, on in (("tso", "off"), ("gso", "off"), ("tx-udp-segmentation", "off"),
                                ("gro", "off"), ("gro", "on")):   # one at a time: a veth may lack one
                self.run(host, ["ethtool", "-K", "ul0", feature, on], check=False)
            # A veth hands its peer's NAPI only what it could not have sent as TSO.
            self.run(self.switch_netns, ["ethtool", "-K", host.name, "tso", "off"], check=False)
        portset = ", ".join(str(p) for p in ports)
        self.run(self.switch_netns, ["nft", "-f", "-"], input=(
            "table bridge wfloss {\n"
            "  chain forward {\n"
            "    type filter hook forward priority -200; policy accept;\n"
            f"    udp dport {{ {portset} }} numgen random mod 100000 < {threshold} counter drop\n"
            "  }\n"
            "}\n"))

    def clear_loss(self):
        """Removes the rule set_loss() added (the hosts' offloads stay as it set them)."""
        if self.switch_netns is not None:
            self.run(self.switch_netns, ["nft", "delete table bridge wfloss"], check=False)
        self.loss = 0

    def loss_dropped(self):
        """Datagrams the loss rule dropped so far."""
        if self.switch_netns is None:
            return 0
        result = self.run(self.switch_netns, ["nft", "list table bridge wfloss"], check=False)
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", result.stdout))

    def leftovers(self):
        """`leftovers(prefix)`, plus any process this testbed started that still runs."""
        found = leftovers(self.prefix)
        running = {p.pid for p in self.processes if p.alive()}
        found["processes"] = sorted(set(found["processes"]) | running)
        return found

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _NetnsHTTPConnection(http.client.HTTPConnection):
    """HTTP over a TCP socket created inside a namespace."""

    def __init__(self, testbed, ns_name, host, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._testbed, self._ns_name = testbed, ns_name

    def connect(self):
        self.sock = self._testbed.socket(self._ns_name, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


def _python_env():
    """The environment for child processes: they import the same `dataplane` as we do."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def _remove_namespaces(names):
    names = [n for n in names if (NETNS_DIR / n).exists()]
    pids = netns.ns_pids()
    for name in names:
        for pid in pids.get(name, []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for name in names:
        netns.remove(name)


def _owner_alive(ns_name):
    """Whether the process that created `ns_name` (pid in the name) is another live process."""
    match = _PREFIX_OWNER.match(ns_name)
    if not match or int(match[1]) == os.getpid():
        return False
    return Path(f"/proc/{match[1]}").exists()


def leftovers(prefix):
    """What carries `prefix`: {"namespaces", "interfaces" (in this namespace), "processes"}."""
    namespaces = sorted(n for n in netns.listnetns() if n.startswith(prefix))
    with IPRoute() as ipr:
        interfaces = sorted(name for link in ipr.get_links()
                            if (name := link.get("ifname")).startswith(prefix))
    in_namespaces = netns.ns_pids()
    processes = {pid for n in namespaces for pid in in_namespaces.get(n, [])}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # catches a router that outlived its namespace: it is named after it
        if prefix in cmdline:
            processes.add(int(proc.name))
    return {"namespaces": namespaces, "interfaces": interfaces, "processes": sorted(processes)}


def remove_leftovers(prefix="wfi"):
    """Remove namespaces (with their processes) and interfaces named `prefix`...

    Namespaces of testbeds whose creating process is still alive are left alone, so a
    base prefix like "wfi" is safe to clean while other test runs are in progress.
    Returns what was removed.
    """
    namespaces = [n for n in netns.listnetns() if n.startswith(prefix) and not _owner_alive(n)]
    _remove_namespaces(namespaces)
    with IPRoute() as ipr:
        interfaces = [link.get("ifname") for link in ipr.get_links()
                      if link.get("ifname").startswith(prefix)]
        for name in interfaces:
            ipr.link("del", ifname=name)
    return {"namespaces": namespaces, "interfaces": interfaces}
