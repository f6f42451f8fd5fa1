"""The dataplane facade: everything above the Cython engine talks to this.

`Dataplane.open()` creates the TAP (one queue per worker) and attaches it to
the bridge, opens the UDP sockets, probes which offloads the kernel accepts
on the router's own sockets and TAP queues (towards the address family the
peers use), and builds the engine; `close()` removes what it created.
`degradations()` says which offload is off or fell back, why and the fix.
Netlink work goes through pyroute2 rather than parsing `ip` output.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool

from dataplane import _core
from dataplane.errors import RouterError, require_root

log = logging.getLogger("weavefast.dataplane")

# Wire format overhead: outer IP + UDP + weavefast header + trailer (tag or
# token) + record header + inner Ethernet.
UDP_HEADER = 8
IPV4_HEADER = 20
IPV6_HEADER = 40
FRAME_OVERHEAD = _core.HEADER_LEN + _core.TRAILER_LEN + _core.RECORD_HDR_LEN + 14

# Data-path ciphers by the names the control plane negotiates.
CIPHERS = {"none": _core.CIPHER_NONE, "aes-256-gcm": _core.CIPHER_AES_256_GCM,
           "chacha20-poly1305": _core.CIPHER_CHACHA20_POLY1305}
MIN_MTU = 576

SO_RXQ_OVFL = 40
SO_ATTACH_REUSEPORT_CBPF = 51
BPF_LD, BPF_B, BPF_ABS = 0x00, 0x10, 0x20
BPF_ALU, BPF_MOD, BPF_K = 0x04, 0x90, 0x00
BPF_RET, BPF_A = 0x06, 0x10
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SOCKET_BUFFER = 7 * 1024 * 1024   # wireguard-go found ~7 MB the sweet spot
DEFAULT_ROUTE_PROBE = "192.0.2.1"  # TEST-NET-1: a route lookup only, nothing is sent
CLIMB_WINDOW = 60.0   # drop counters that rose within this many seconds make a degradation
OFFLOAD_FLAG = {"tap_csum": "--no-tap-csum", "tap_tso": "--no-tap-tso", "tap_uso": "--no-tap-uso",
                "udp_gso": "--no-udp-gso", "udp_gro": "--no-udp-gro"}


@dataclass
class DataplaneConfig:
    peer_id: int
    port: int = 6783
    bind: str = "::"
    bridge: str = "weavefast"
    tap: str | None = None
    mtu: int | None = None
    underlay_mtu: int | None = None
    fdb_capacity: int = 8192
    fdb_max_age: int = 300
    workers: int = 1
    batch: int = 64
    segments: str = "auto"   # TCP super-frames as segments: "never", "auto" (when the path loses datagrams), "always"
    offloads: dict = field(default_factory=lambda: dict(
        tap_csum=True, tap_tso=True, tap_uso=True, udp_gso=True, udp_gro=True))

    @property
    def tap_name(self) -> str:
        return self.tap or f"wf-{self.bridge}"[:15]


class Dataplane:
    def __init__(self, config: DataplaneConfig):
        self.config = config
        self.engine: _core.Engine | None = None
        self.offloads: dict[str, bool] = {}
        self.off_reasons: dict[str, tuple[str, str]] = {}   # offload -> (why it is off, the fix)
        self.probe_notes: list[str] = []                     # probes that could not run
        self.underlay_dev: str | None = None
        self._climbing = {"socket_overflows": _Climbing(), "reassembly": _Climbing()}
        self.mtu = 0
        self.max_payload = 0
        self._taps: list[int] = []
        self._socks: list[socket.socket] = []      # one per worker, on the overlay port
        self._tx_socks: list[socket.socket] = []   # what each worker sends from
        self._created_bridge = False
        self._family = socket.AF_INET6

    # --- set-up and tear-down ---

    def open(self, peer_hosts: list[str] = ()) -> None:
        """peer_hosts: numeric addresses of the peers known at start (they size the MTU)."""
        cfg = self.config
        require_root()
        if not os.path.exists("/dev/net/tun"):
            raise RouterError("no /dev/net/tun: load the tun module (modprobe tun), or give the container --device /dev/net/tun")
        try:
            self.underlay_dev, mtu = underlay_device(peer_hosts)
            self._open_sockets(peer_hosts)
            underlay = cfg.underlay_mtu or mtu
            self._size(underlay, ipv6_underlay=any(":" in h for h in peer_hosts))
            self._open_taps()
            self._attach()
            self.engine = _core.Engine(
                cfg.peer_id, [(tap, rx.fileno(), tx.fileno())
                              for tap, rx, tx in zip(self._taps, self._socks, self._tx_socks)],
                self.max_payload, self._family, udp_gso=self.offloads["udp_gso"],
                fdb_capacity=cfg.fdb_capacity, fdb_max_age=cfg.fdb_max_age, batch=cfg.batch,
                tap_uso=self.offloads["tap_uso"], tap_tso=self.offloads["tap_tso"],
                segments=cfg.segments)
        except BaseException:
            self.close()
            raise

    def _open_sockets(self, peer_hosts) -> None:
        cfg = self.config
        for _ in range(cfg.workers):
            self._socks.append(self._bound_socket(cfg.port))
        if cfg.workers > 1:
            steer_by_sender_worker(self._socks[0], cfg.workers)
        # Worker 0 sends from the overlay port; the others from a port of their
        # own, so that the peer's SO_REUSEPORT group spreads their flows over its
        # workers too (it hashes the source port).
        self._tx_socks = self._socks[:1] + [self._bound_socket(0) for _ in range(cfg.workers - 1)]
        ipv6_peers = any(":" in h for h in peer_hosts)
        self._probe("udp_gro", lambda: _gro_refusal(self._socks))
        self._probe("udp_gso", lambda: self._gso_refusal(ipv6_peers))
        for s in self._socks + self._tx_socks[1:]:
            _try_setsockopt(s, socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            for opt, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                               (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
                if not _try_setsockopt(s, socket.SOL_SOCKET, opt, SOCKET_BUFFER):
                    _try_setsockopt(s, socket.SOL_SOCKET, plain, SOCKET_BUFFER)

    def _probe(self, name: str, refusal) -> bool:
        """Turns offload `name` on unless its flag turned it off or `refusal()`
        (why the kernel refused it, and the fix) says no."""
        if not self.config.offloads.get(name, True):
            flag = OFFLOAD_FLAG[name]
            self.off_reasons[name] = (f"turned off by {flag}", f"leave out {flag}")
            self.offloads[name] = False
        else:
            why = refusal()
            if why:
                self.off_reasons[name] = why
            self.offloads[name] = not why
        return self.offloads[name]

    def _gso_refusal(self, ipv6_peers: bool):
        """A UDP GSO send from the router's own sending socket to a local sink of
        the family the peers use (IPv4-mapped on a dual-stack socket)."""
        sock = self._tx_socks[0]
        try:
            error = probe_udp_gso(sock, ipv6=ipv6_peers)
        except OSError as e:
            self.probe_notes.append(f"udp_gso could not be probed ({e.strerror}): left on; it turns "
                                    "itself off at the first EIO, and `weavefast status` then says so")
            return None
        if error is not None:
            return (f"a UDP GSO send from the router's socket failed ({os.strerror(error)})",
                    "use Linux 4.18 or later")
        if self.underlay_dev and not tx_checksumming(self.underlay_dev, ipv6_peers):
            return (f"the underlay device {self.underlay_dev} has tx checksumming off, and the kernel "
                    "refuses GSO sends through such a device (EIO)",
                    f"ethtool -K {self.underlay_dev} tx on, then restart the router")
        return None

    def _bound_socket(self, port: int) -> socket.socket:
        cfg = self.config
        family = socket.AF_INET if ":" not in cfg.bind and cfg.bind else socket.AF_INET6
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            family, cfg.bind = socket.AF_INET, "0.0.0.0"   # IPv6 disabled on this host
            sock = socket.socket(family, socket.SOCK_DGRAM)
        self._family = family
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if cfg.workers > 1 and port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((cfg.bind, port))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise RouterError(f"UDP port {cfg.port} is in use: stop the other router or choose another --port") from None
            raise RouterError(f"cannot bind UDP {cfg.bind} port {cfg.port}: {e.strerror}") from None
        return sock

    def _size(self, underlay: int, ipv6_underlay: bool) -> None:
        cfg = self.config
        outer = UDP_HEADER + (IPV6_HEADER if ipv6_underlay else IPV4_HEADER)
        largest = underlay - outer - FRAME_OVERHEAD
        mtu = cfg.mtu or largest
        if mtu < MIN_MTU:
            raise RouterError(f"MTU {mtu} is too small: use at least {MIN_MTU} (the underlay's MTU is {underlay})")
        if mtu > largest:
            raise RouterError(f"MTU {mtu} is too large for the underlay's {underlay}: use --mtu {largest} or less, "
                              "so that no container packet needs fragmenting")
        self.mtu = mtu
        self.max_payload = mtu + FRAME_OVERHEAD

    def _open_taps(self) -> None:
        cfg = self.config
        for _ in range(cfg.workers):
            try:
                fd, _name = _core.tap_open(cfg.tap_name, multi_queue=cfg.workers > 1)
            except OSError as e:
                raise RouterError(f"cannot create TAP {cfg.tap_name}: {e.strerror} "
                                  "(is another router using it? choose --tap)") from None
            self._taps.append(fd)
        wanted = {"tap_csum": _core.OFFLOAD_CSUM,
                  "tap_tso": _core.OFFLOAD_TSO4 | _core.OFFLOAD_TSO6 | _core.OFFLOAD_TSO_ECN,
                  "tap_uso": _core.OFFLOAD_USO4 | _core.OFFLOAD_USO6}
        fixes = {"tap_csum": "use a kernel whose TAP driver takes TUN_F_CSUM",
                 "tap_tso": "use a kernel whose TAP driver takes TUN_F_TSO4/6 (Linux 2.6.27 or later)",
                 "tap_uso": "use Linux 6.2 or later (TUN_F_USO4/6): small UDP datagrams then cross "
                            "the TAP as super-frames"}
        flags = 0

        def refusal(name, bits):
            if name != "tap_csum" and not self.offloads["tap_csum"]:
                return "it needs tap_csum, which is off", "turn tap_csum on"
            if not all(_try_offload(fd, flags | bits) for fd in self._taps):
                return f"the kernel refused it on the router's TAP {cfg.tap_name}", fixes[name]
            return None

        for name, bits in wanted.items():
            if self._probe(name, lambda: refusal(name, bits)):
                flags |= bits
        for fd in self._taps:
            _core.tap_set_offload(fd, flags)

    def _attach(self) -> None:
        cfg = self.config
        with IPRoute() as ipr:
            bridges = ipr.link_lookup(ifname=cfg.bridge)
            if not bridges:
                ipr.link("add", ifname=cfg.bridge, kind="bridge")
                self._created_bridge = True
                bridges = ipr.link_lookup(ifname=cfg.bridge)
            bridge = bridges[0]
            tap = ipr.link_lookup(ifname=cfg.tap_name)[0]
            ipr.link("set", index=tap, mtu=self.mtu, master=bridge)
            if self._created_bridge:
                ipr.link("set", index=bridge, mtu=self.mtu)
            ipr.link("set", index=tap, state="up")
            ipr.link("set", index=bridge, state="up")

    def start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        """Stops forwarding and removes the TAP (and the bridge if we made it)."""
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        for fd in self._taps:
            _core.close_fd(fd)   # a non-persistent TAP vanishes with its last fd
        self._taps.clear()
        for s in self._socks + self._tx_socks[1:]:
            s.close()
        self._socks.clear()
        self._tx_socks.clear()
        if self._created_bridge:
            with IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=self.config.bridge):
                    # Containers may have joined the bridge we made: leave it to them.
                    if not ipr.get_links(master=index):
                        ipr.link("del", index=index)
            self._created_bridge = False

    # --- the control plane's levers ---

    def add_peer(self, peer_id: int, host: str, port: int) -> None:
        self.engine.add_peer(peer_id, host, port)

    def remove_peer(self, peer_id: int) -> None:
        self.engine.remove_peer(peer_id)

    def set_peer_address(self, peer_id: int, host: str, port: int) -> None:
        self.engine.set_peer_address(peer_id, host, port)

    def set_peer_up(self, peer_id: int, up: bool) -> None:
        self.engine.set_peer_up(peer_id, up)

    def set_peer_loss_reports(self, peer_id: int, understood: bool) -> None:
        """Whether the peer's router reads the loss flag (control protocol 3 and later)."""
        self.engine.set_peer_loss_reports(peer_id, understood)

    def set_route(self, dst_peer: int, via_peer: int | None) -> None:
        self.engine.set_route(dst_peer, via_peer)

    def counters(self) -> dict[str, int]:
        return self.engine.counters()

    def drops(self) -> dict[str, int]:
        return self.engine.drops()

    def worker_counters(self) -> list[dict[str, int]]:
        return self.engine.worker_counters()

    def peer_counters(self) -> dict[int, dict[str, int]]:
        return self.engine.peer_counters()

    def peer_segments(self) -> dict[int, dict[str, bool]]:
        """{peer_id: {"segments", "loss_reported"}}: TCP super-frames to the
        peer go as segments now; we tell it that its datagrams get lost."""
        return self.engine.peer_segments()

    @property
    def segments_mode(self) -> str:
        return self.engine.segments_mode if self.engine is not None else self.config.segments

    def fdb_entries(self) -> list[dict]:
        return [{"mac": ":".join(f"{b:02x}" for b in mac), "vlan": vlan, "peer": peer, "age": age}
                for mac, vlan, peer, age in self.engine.fdb_entries()]

    def fdb_size(self) -> int:
        return self.engine.fdb_size()

    def fdb_expire(self) -> int:
        return self.engine.fdb_expire()

    @property
    def control_fd(self) -> int:
        return self.engine.control_fd

    def recv_control(self) -> list[tuple[int, tuple[str, int], bytes]]:
        """CONTROL datagrams that opened with a peer's key: [(that peer, from where, payload)]."""
        return self.engine.recv_control()

    def send_control(self, payload: bytes, peer_id: int) -> None:
        """Raises ConnectionError while the peer has not given us its key yet."""
        self.engine.send_control(payload, peer_id)

    # --- session keys (derived by the control plane's handshake) ---

    def install_rx_key(self, peer_id: int, cipher: str, key: bytes) -> int:
        """Accepts the peer's datagrams sealed with `key` (beside the previous
        ones); returns the key id to give the peer."""
        return self.engine.install_rx_key(peer_id, CIPHERS[cipher], key)

    def remove_rx_key(self, key_id: int) -> bool:
        return self.engine.remove_rx_key(key_id)

    def set_tx_key(self, peer_id: int, key_id: int, cipher: str, key: bytes) -> None:
        """Seals what goes to the peer with `key`, under the peer's id for it."""
        self.engine.set_tx_key(peer_id, key_id, CIPHERS[cipher], key)

    def status_offloads(self) -> dict[str, bool]:
        """Offloads in use now (UDP GSO turns itself off after an EIO)."""
        live = dict(self.offloads)
        if self.engine is not None:
            live["udp_gso"] = self.engine.udp_gso
        return live

    def degradations(self, now: float | None = None) -> list[dict[str, str]]:
        """What makes this router slower than it could be: [{"what", "why", "fix"}],
        offloads off (from the start, or fallen back since) and drop counters
        that rose within the last minute."""
        found = [{"what": f"{name} off", "why": why, "fix": fix}
                 for name, (why, fix) in self.off_reasons.items()]
        if self.engine is None:
            return found
        if self.offloads.get("udp_gso") and not self.engine.udp_gso:
            found.append({"what": "udp_gso off", "why": "fell back at run time: the underlay device "
                          f"{self.underlay_dev or 'DEV'} refused a GSO send (EIO: no tx checksum offload)",
                          "fix": f"ethtool -K {self.underlay_dev or 'DEV'} tx on, then restart the router"})
        now = time.monotonic() if now is None else now
        counters, drops = self.engine.counters(), self.engine.drops()
        climbing = (
            ("socket_overflows", counters, "socket overflows",
             "{} datagrams dropped by the kernel in the last minute: the router's threads did not "
             "empty the socket in time",
             "give the router CPU time (less load on the host, or --workers N on a host with cores "
             "to spare)"),
            ("reassembly", drops, "reassembly drops",
             "{} super-frames lost in reassembly in the last minute: their fragments were lost or "
             "reordered on the way",
             "find the loss on the underlay (socket overflows, NIC drops), or --no-tap-tso to send "
             "frames unfragmented"))
        for key, source, what, why, fix in climbing:
            rose = self._climbing[key].rise(source[key], now)
            if rose:
                found.append({"what": what, "why": why.format(rose), "fix": fix})
        return found


def _try_setsockopt(sock: socket.socket, level: int, opt: int, value: int) -> bool:
    try:
        sock.setsockopt(level, opt, value)
        return True
    except OSError:
        return False


def _try_offload(fd: int, flags: int) -> bool:
    try:
        _core.tap_set_offload(fd, flags)
        return True
    except OSError:
        return False


def steer_by_sender_worker(sock: socket.socket, workers: int) -> None:
    """Delivers what a peer's worker i sent to our worker i (mod workers).

    A datagram's lane is the sending worker's index, the same for every
    fragment of a super-frame. Steering on it (instead of the default hash of
    the addresses, the same for every flow) keeps each flow on one worker end
    to end: the TAP queue we write a flow to is the one the kernel hands its
    replies to ("tx follows rx").
    """
    lane = 4   # offset in the weavefast header, counted from the UDP payload
    program = [
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, lane),
        (BPF_ALU | BPF_MOD | BPF_K, 0, 0, workers),
        (BPF_RET | BPF_A, 0, 0, 0),
    ]
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as e:
        log.warning("cannot steer datagrams to workers (%s): flows spread by address hash", e.strerror)


class _Climbing:
    """How much a running count rose within the last CLIMB_WINDOW seconds."""

    def __init__(self):
        self.samples = deque([(float("-inf"), 0)])   # counted from 0 until a window has passed

    def rise(self, value: int, now: float) -> int:
        while len(self.samples) > 1 and self.samples[1][0] <= now - CLIMB_WINDOW:
            self.samples.popleft()
        self.samples.append((now, value))
        return value - self.samples[0][1]


def probe_udp_gso(sock: socket.socket, ipv6: bool = False) -> int | None:
    """Sends two 8-byte segments in one GSO send from `sock` (the router's own
    socket) to a throwaway local socket of the family the peers use: loopback
    IPv4 (IPv4-mapped from a dual-stack socket, which works where IPv6 is
    disabled) or ::1. Returns None when the kernel took it, else the errno.
    Raises OSError when the probe cannot run (no such local address)."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sink:
        sink.bind(("::1" if ipv6 else "127.0.0.1", 0))
        host, port = sink.getsockname()[:2]
        if sock.family == socket.AF_INET6 and not ipv6:
            host = "::ffff:" + host
        try:
            sock.sendmsg([b"\0" * 16], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 8))], 0, (host, port))
        except OSError as e:
            return e.errno
        return None


def tx_checksumming(ifname: str, ipv6: bool) -> bool:
    """Whether device `ifname` checksums what it sends (true when it cannot be told)."""
    try:
        with Ethtool() as ethtool:
            features = ethtool.get_features(ifname).features
    except Exception:   # no such device any more, or no ethtool ioctl here
        return True
    names = ("tx-checksum-ip-generic", "tx-checksum-ipv6" if ipv6 else "tx-checksum-ipv4")
    return any(features[name].enable for name in names if name in features)


def _gro_refusal(socks):
    for sock in socks:
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError as e:
            return (f"the kernel refused UDP_GRO on the router's socket ({e.strerror})",
                    "use Linux 5.0 or later")
    return None


def underlay_device(peer_hosts) -> tuple[str | None, int]:
    """Name and MTU of the device that leads to the first peer (or of the
    default route); (None, 1500) when there is none."""
    with IPRoute() as ipr:
        for host in list(peer_hosts) + [DEFAULT_ROUTE_PROBE]:
            try:
                routes = ipr.route("get", dst=host)
            except Exception:
                continue
            for route in routes:
                oif = route.get_attr("RTA_OIF")
                if oif:
                    links = ipr.get_links(oif)
                    if links and links[0].get_attr("IFLA_IFNAME") != "lo":
                        return links[0].get_attr("IFLA_IFNAME"), links[0].get_attr("IFLA_MTU")
    return None, 1500
