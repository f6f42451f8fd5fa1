"""A small DNS server for the containers of weavefast networks: A and PTR records from
`lookup`, everything else forwarded to the host's resolvers.

Docker gives each container the resolver 127.0.0.11, which answers for the local
host's containers only and forwards the rest to the daemon's `dns` servers from inside
the container's network namespace. So weavefast listens on a link-local address
(169.254.53.53 by default) that the router puts on the overlay bridge, the plugin
gives each container an on-link route to it, and the daemon's `"dns":
["169.254.53.53"]` makes Docker's resolver ask it. A container on another network
(Docker's bridge) reaches it through its host as well.

Records come from `lookup(name) -> [ip]` and `reverse(ip) -> name | None`; TTL 1 s as
weaveDNS did: a container that goes is forgotten at once. Only UDP; a query the server
cannot parse gets no answer (the client retries or gives up), never a crash.
"""
import ipaddress
import logging
import socket
import struct
import threading

log = logging.getLogger("weavefast.dns")

DEFAULT_DNS_ADDRESS = "169.254.53.53"
TYPE_A, TYPE_PTR, TYPE_AAAA = 1, 12, 28
CLASS_IN = 1
RCODE_NXDOMAIN, RCODE_SERVFAIL = 3, 2
TTL = 1
FORWARD_TIMEOUT = 3.0
MAX_MESSAGE = 4096
MAX_FORWARDS = 64  # queries waiting on the host's resolvers at once


def parse_question(message):
    """(id, flags, qname lower-case without the final dot, qtype, end of question)."""
    query_id, flags, qdcount = struct.unpack_from("!HHH", message)
    if qdcount != 1:
        raise ValueError("one question expected")
    labels, offset = [], 12
    while True:
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed question name")
        labels.append(message[offset:offset + length].decode("ascii", "replace"))
        offset += length
    qtype, _qclass = struct.unpack_from("!HH", message, offset)
    return query_id, flags, ".".join(labels).lower(), qtype, offset + 4


def encode_name(name):
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii", "replace")
    return out + b"\0"


def build_answer(message, question_end, flags, answers, rcode=0):
    """An answer to `message` with `answers` [(type, rdata)], all for the question's name."""
    query_id = struct.unpack_from("!H", message)[0]
    recursion_desired = flags & 0x0100
    header = struct.pack("!HHHHHH", query_id, 0x8000 | 0x0400 | recursion_desired | 0x0080 | rcode,
                         1, len(answers), 0, 0)
    body = message[12:question_end]
    for rtype, rdata in answers:
        body += struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata
    return header + body


def reverse_name_to_ip(name):
    """'4.3.2.10.in-addr.arpa' -> '10.2.3.4', or None."""
    if not name.endswith(".in-addr.arpa"):
        return None
    parts = name[:-len(".in-addr.arpa")].split(".")
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(parts))))
    except ValueError:
        return None


def host_resolvers(path="/etc/resolv.conf", exclude=()):
    """[(address, 53)] of the nameservers in `path`, but those in `exclude`."""
    servers = []
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver" and fields[1] not in exclude:
                    servers.append((fields[1], 53))
    except OSError:
        pass
    return servers


class DnsServer:
    def __init__(self, address, lookup, reverse, port=53, upstream=None, device=None):
        """`upstream`: [(address, port)] asked for other names (default: the host's
        resolvers). `device`: the bridge; replies to containers then leave through it without a
        route to their subnet (the kernel takes a destination as on-link there)."""
        self.address = address
        self.lookup, self.reverse = lookup, reverse
        self.upstream = upstream if upstream is not None else host_resolvers(exclude=(address,))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if device:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        self.sock.bind((address, port))
        self.port = self.sock.getsockname()[1]
        self.answered = self.forwarded = 0
        self._closing = False
        self._forwarding = threading.BoundedSemaphore(MAX_FORWARDS)
        self._thread = threading.Thread(target=self._serve, name="weavefast-dns", daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._closing:
            try:
                message, client = self.sock.recvfrom(MAX_MESSAGE)
            except OSError:
                return
            try:
                reply = self.answer(message)
            except (ValueError, IndexError, struct.error) as e:
                log.debug("unparsable query from %s: %s", client, e)
                continue
            if reply is None:  # not ours: the host's resolvers answer, off this thread
                if self._forwarding.acquire(blocking=False):  # else dropped: the client retries
                    threading.Thread(target=self._forward, args=(message, client),
                                     daemon=True).start()
            else:
                self.sock.sendto(reply, client)

    def answer(self, message):
        """The reply for `message`, or None when it is to be forwarded."""
        _id, flags, name, qtype, end = parse_question(message)
        if flags & 0x8000:
            raise ValueError("not a query")
        ip = reverse_name_to_ip(name)
        if ip is not None:
            owner = self.reverse(ip)
            if owner is None:
                return None
            self.answered += 1
            return build_answer(message, end, flags, [(TYPE_PTR, encode_name(owner))])
        addresses = self.lookup(name)
        if not addresses:
            return None
        self.answered += 1
        if qtype != TYPE_A:  # the name is ours, it has no records of that type
            return build_answer(message, end, flags, [])
        return build_answer(message, end, flags,
                            [(TYPE_A, socket.inet_aton(a)) for a in addresses])

    def _forward(self, message, client):
        try:
            self._forward_to_upstream(message, client)
        finally:
            self._forwarding.release()

    def _forward_to_upstream(self, message, client):
        for server in self.upstream:
            with socket.socket(socket.AF_INET6 if ":" in server[0] else socket.AF_INET,
                               socket.SOCK_DGRAM) as upstream:
                upstream.settimeout(FORWARD_TIMEOUT)
                try:
                    upstream.sendto(message, server)
                    reply = upstream.recv(MAX_MESSAGE)
                except OSError:
                    continue
            self.forwarded += 1
            self.sock.sendto(reply, client)
            return
        try:  # nobody to ask, or nobody answered
            _id, flags, _name, _qtype, end = parse_question(message)
            rcode = RCODE_SERVFAIL if self.upstream else RCODE_NXDOMAIN
            self.sock.sendto(build_answer(message, end, flags, [], rcode), client)
        except (ValueError, IndexError, struct.error, OSError):
            pass

    def close(self):
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recvfrom
        except OSError:
            pass
        self._thread.join(timeout=2)
        self.sock.close()
