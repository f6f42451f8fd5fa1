"""Traffic and topology helpers for tests/test_offloads.py, on top of dataplane.testbed.

What `Testbed` does not offer (yet): TCP over any address family with parallel
streams, UDP with sequence numbers (plain and UDP GSO sends), raw VLAN-tagged frames,
moving a container to another host, a gratuitous ARP, restarting the routers with
other flags.
"""
import dataclasses
import hashlib
import os
import random
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import IPRoute

from dataplane import testbed

SOL_UDP = 17
UDP_SEGMENT = 103
SO_RCVBUFFORCE = 33  # not in Python's socket module
SEQ = struct.Struct("!H")  # sequence number at the start of every UDP payload
CHUNK = 1 << 20
ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
ETH_P_LOCAL_EXPERIMENTAL = 0x88B5
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 1 << 4
TPACKET_AUXDATA = struct.Struct("=IIIHHHH")  # status, len, snaplen, mac, net, vlan_tci, vlan_tpid


# -- routers --------------------------------------------------------------------


class Routers:
    """The routers of a testbed, restarted only when the wanted flags change."""

    def __init__(self, tb):
        self.tb = tb
        self.args = None

    def use(self, *args):
        if args != self.args:
            for host in self.tb.hosts:
                if host.router is not None:
                    host.router.terminate()
            for host in self.tb.hosts:
                if host.router is not None:
                    host.router.stop()
            self.tb.start_routers(extra_args=args)
            wait_established(self.tb)
            self.args = args
        return self


def wait_established(tb, timeout=15.0):
    """Until every router has every other host as an established peer (frames to a peer
    that is not up yet are dropped, which would only slow the first transfer down)."""
    def all_established():
        return all(sum(p["state"] == "established" for p in tb.status(h)["peers"]) == len(tb.hosts) - 1
                   for h in tb.hosts)
    tb.wait_for(all_established, timeout=timeout, what="every peer established")


def counters(tb):
    """{host name: router counters} now."""
    return {h.name: tb.status(h)["counters"] for h in tb.hosts}


def moved(before, after):
    """How much every counter moved between two `counters()` snapshots."""
    return {h: {k: after[h][k] - before[h][k] for k in before[h]} for h in before}


def peer_tx_frames(tb, host, peer_host):
    """Frames `host`'s router has sent to `peer_host`'s router."""
    [peer] = [p for p in tb.status(host)["peers"] if p["name"] == peer_host.netns]
    return peer["counters"].get("tx_frames", 0)


# -- TCP --------------------------------------------------------------------------


@dataclasses.dataclass
class Transfer:
    sent: list      # (bytes, sha256) per connection
    received: list

    @property
    def intact(self):
        return sorted(self.sent) == sorted(self.received)


def tcp_transfer(tb, src, dst, dst_ip, nbytes, streams=1, port=5301, timeout=60.0,
                 started=None, keep_sending=None):
    """Random data from `src` to `dst_ip` (in `dst`), IPv4 or IPv6, `nbytes` split over
    `streams` parallel connections; both ends hash what they actually sent/received.

    `started` (an Event) is set once every connection has sent its first chunk;
    with `keep_sending` (an Event) the senders go on past `nbytes` until it is set.
    """
    family = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    per_stream = nbytes // streams
    first_chunks = threading.Barrier(streams, action=started.set if started else None)
    listener = tb.socket(dst, family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((dst_ip, port))
    listener.listen(streams)
    listener.settimeout(timeout)

    def receive():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(timeout)
            digest, total = hashlib.sha256(), 0
            buf = memoryview(bytearray(CHUNK))
            while n := conn.recv_into(buf):
                digest.update(buf[:n])
                total += n
        return total, digest.hexdigest()

    def send():
        digest, total = hashlib.sha256(), 0
        with tb.socket(src, family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((dst_ip, port))
            while total < per_stream or (keep_sending is not None and not keep_sending.is_set()):
                chunk = os.urandom(CHUNK if keep_sending else min(CHUNK, per_stream - total))
                sock.sendall(chunk)
                digest.update(chunk)
                if total == 0:
                    first_chunks.wait(timeout)
                total += len(chunk)
            sock.shutdown(socket.SHUT_WR)
        return total, digest.hexdigest()

    try:
        with ThreadPoolExecutor(2 * streams) as pool:
            receivers = [pool.submit(receive) for _ in range(streams)]
            senders = [pool.submit(send) for _ in range(streams)]
            sent = [f.result() for f in senders]
            received = [f.result() for f in receivers]
    finally:
        listener.close()
    return Transfer(sent=sent, received=received)


# -- UDP ----------------------------------------------------------------------------


def numbered_payloads(count, min_size=SEQ.size, max_size=1380, seed=4):
    """`count` payloads of random sizes, each starting with its sequence number."""
    rng = random.Random(seed)
    return [SEQ.pack(seq) + rng.randbytes(rng.randint(min_size, max_size) - SEQ.size)
            for seq in range(count)]


def gso_bursts(count, segments, seed=5):
    """`count` lists of `segments` equal-size numbered payloads, one UDP GSO send each."""
    rng = random.Random(seed)
    bursts, seq = [], 0
    for _ in range(count):
        size = rng.randint(64, 1380)  # within the 1414-byte overlay MTU less IPv4 and UDP
        bursts.append([SEQ.pack(seq + i) + rng.randbytes(size - SEQ.size) for i in range(segments)])
        seq += segments
    return bursts


def udp_send_windows(tb, src, dst, dst_ip, windows, port=5400, timeout=5.0):
    """Sends each window (a list of sends; a send is a list of payloads, one datagram
    each, several going out in one UDP GSO send) from `src` to `dst_ip`, then waits
    until the window has arrived before the next one (or `timeout`), so no queue on the
    way overflows. Returns {sequence number: payload} of what arrived."""
    family = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    arrived = {}
    with tb.socket(dst, family) as rx, tb.socket(src, family) as tx:
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        rx.bind((dst_ip, port))
        rx.setblocking(False)
        for window in windows:
            expected = {SEQ.unpack_from(p)[0] for send in window for p in send}
            for send in window:
                if len(send) == 1:
                    tx.sendto(send[0], (dst_ip, port))
                else:
                    tx.sendmsg([b"".join(send)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(send[0])))],
                               0, (dst_ip, port))
            while not expected <= arrived.keys() and select.select([rx], [], [], timeout)[0]:
                while True:
                    try:
                        data = rx.recv(65536)
                    except BlockingIOError:
                        break
                    arrived[SEQ.unpack_from(data)[0]] = data
    return arrived


# -- raw Ethernet ----------------------------------------------------------------------


def raw_socket(tb, container):
    """An AF_PACKET socket on the container's eth0 that reports VLAN tags the kernel
    took out of the frame (it always does on receive, 802.1Q module or not)."""
    sock = tb.socket(container, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind(("eth0", 0))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    return sock


def mac_bytes(mac):
    return bytes.fromhex(mac.replace(":", ""))


def vlan_frame(dst_mac, src_mac, tci, payload):
    """An 802.1Q-tagged Ethernet frame carrying `payload` under a local experimental ethertype."""
    return (mac_bytes(dst_mac) + mac_bytes(src_mac)
            + struct.pack("!HHH", ETH_P_8021Q, tci, ETH_P_LOCAL_EXPERIMENTAL) + payload)


def receive_frame(sock, src_mac, timeout=5.0):
    """The next incoming unicast frame from `src_mac`, its VLAN tag (if any) put back in
    place; None after `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
        data, ancillary, _flags, address = sock.recvmsg(65536, socket.CMSG_SPACE(TPACKET_AUXDATA.size))
        if address[2] == PACKET_OUTGOING or data[0] & 1 or data[6:12] != mac_bytes(src_mac):
            continue
        for level, kind, value in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                status, *_, tci, tpid = TPACKET_AUXDATA.unpack(value)
                if status & TP_STATUS_VLAN_VALID:
                    data = data[:12] + struct.pack("!HH", tpid or ETH_P_8021Q, tci) + data[12:]
        return data
    return None


# -- topology -------------------------------------------------------------------------


def move_container(tb, container, host):
    """Unplugs `container` from its host and plugs it, same MAC and addresses, into
    `host`'s bridge: what a live migration looks like to the overlay."""
    port = f"v{container.name}"
    with IPRoute(netns=container.netns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="eth0")[0])  # its peer goes with it
        ipr.link("add", ifname="eth0", kind="veth", mtu=tb.overlay_mtu, address=container.mac,
                 peer={"ifname": port, "net_ns_fd": host.netns, "mtu": tb.overlay_mtu})
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=index, address=container.ip4, prefixlen=testbed.OVERLAY_NET4.prefixlen)
        ipr.addr("add", index=index, address=container.ip6, prefixlen=testbed.OVERLAY_NET6.prefixlen,
                 flags=testbed.IFA_F_NODAD)
        ipr.link("set", index=index, state="up")
    with IPRoute(netns=host.netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=ipr.link_lookup(ifname=host.bridge)[0],
                 state="up")
    container.host.containers.remove(container)
    host.containers.append(container)
    container.host = host


def send_gratuitous_arp(tb, container):
    """One broadcast ARP announcement of the container's IPv4 address, from its eth0."""
    mac = mac_bytes(container.mac)
    ip = socket.inet_aton(container.ip4)
    frame = (b"\xff" * 6 + mac + b"\x08\x06"
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + ip)
    with tb.socket(container, socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind(("eth0", 0))
        sock.send(frame)
