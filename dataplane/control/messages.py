"""Validation of every control message a peer sends, before anything acts on it.

Each `check_*` returns the message's fields as Python values of the expected
types and ranges, or raises ProtocolError with one reason that names the
field, quoting what was sent cut short (`quote`). JSON gives ints, floats,
bools and strings alike, so types are checked exactly: `True` is not a peer
id and `1.0` is not a port.
"""
import ipaddress
import re

from dataplane.control.errors import ProtocolError

MAX_NAME = 64          # router names (the hostname by default)
MAX_ENTRIES = 256      # peers or link states in one gossip message
MAX_DIGEST = 1024      # routers a digest (`sync`) names: the link states a router keeps
MAX_REASON = 300       # an error's reason, as logged
# What a router announces for the Docker plugin (gossip's "announced", see ControlPlane.announce):
MAX_SUBNETS = 64       # subnets with address ranges ("ipam")
MAX_RANGES = 64        # ranges in one subnet
MAX_RECORDS = 4096     # name records ("dns")
MAX_RECORD_NAMES = 16  # names of one record
MAX_DNS_NAME = 253
_HEX = re.compile(r"[0-9a-f]*")
_NAME = re.compile(r"[\w.:@+-]+", re.ASCII)


def quote(value, limit=48) -> str:
    """What a peer sent, safe to log: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _field(message, key, what):
    if key not in message:
        raise ProtocolError(f"{what} without {key!r}")
    return message[key]


def integer(message, key, low, high, what):
    value = _field(message, key, what)
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(f"{what}: {key} must be an integer from {low} to {high}, got {quote(value)}")
    return value


def hex_string(message, key, nbytes, what):
    value = _field(message, key, what)
    if type(value) is not str or len(value) != 2 * nbytes or not _HEX.fullmatch(value):
        raise ProtocolError(f"{what}: {key} must be {2 * nbytes} lowercase hex digits, got {quote(value)}")
    return value


def valid_name(value) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_NAME and bool(_NAME.fullmatch(value))


def name(message, key, what):
    value = _field(message, key, what)
    if not valid_name(value):
        raise ProtocolError(f"{what}: {key} must be 1 to {MAX_NAME} letters, digits or . _ - : @ +, "
                            f"got {quote(value)}")
    return value


def entries(message, key, what):
    value = _field(message, key, what)
    if type(value) is not list or len(value) > MAX_ENTRIES:
        raise ProtocolError(f"{what}: {key} must be a list of at most {MAX_ENTRIES}, got {quote(value)}")
    if not all(type(entry) is dict for entry in value):
        raise ProtocolError(f"{what}: every entry of {key} must be an object")
    return value


def peer_id(message, key, what):
    return integer(message, key, 1, 2**32 - 1, what)


def check_hello_identity(hello):
    """(name, peer id, data port, incarnation, (lowest, highest version), auth):
    the fields every protocol version's hello has."""
    what = "hello"
    if hello.get("protocol") != "weavefast":
        raise ProtocolError(f"not a weavefast hello (protocol {quote(hello.get('protocol'))})")
    versions = _field(hello, "versions", what)
    if (type(versions) is not list or len(versions) != 2 or any(type(v) is not int for v in versions)
            or not 0 < versions[0] <= versions[1] <= 255):
        raise ProtocolError(f"hello: versions must be [lowest, highest] from 1 to 255, got {quote(versions)}")
    auth = _field(hello, "auth", what)
    if type(auth) is not str or len(auth) > 16:
        raise ProtocolError(f"hello: auth must be a short string, got {quote(auth)}")
    hex_string(hello, "incarnation", 8, what)
    return (name(hello, "name", what), peer_id(hello, "peer_id", what),
            integer(hello, "port", 1, 65535, what), hello["incarnation"], tuple(versions), auth)


def check_hello_keys(hello):
    """(X25519 public key, ciphers offered): the fields of a version-2 hello."""
    ciphers = _field(hello, "ciphers", "hello")
    if (type(ciphers) is not list or not 0 < len(ciphers) <= 8
            or any(type(c) is not str or len(c) > 32 for c in ciphers)):
        raise ProtocolError(f"hello: ciphers must be a list of 1 to 8 names, got {quote(ciphers)}")
    hex_string(hello, "nonce", 16, "hello")
    return bytes.fromhex(hex_string(hello, "public", 32, "hello")), ciphers


def check_gossip(message):
    """([(peer id, name, host, port)], [(peer id, name, version, {peer ids})],
    [(peer id, name, version, data)] (see check_announced))."""
    peers = []
    for entry in entries(message, "peers", "gossip"):
        host = _field(entry, "host", "gossip peer")
        try:
            host = str(ipaddress.ip_address(host)) if type(host) is str and len(host) <= 45 else None
        except ValueError:
            host = None
        if host is None:
            raise ProtocolError(f"gossip: a peer's host must be an IP address, got {quote(entry.get('host'))}")
        peers.append((peer_id(entry, "peer_id", "gossip peer"), name(entry, "name", "gossip peer"), host,
                      integer(entry, "port", 1, 65535, "gossip peer")))
    links = []
    for entry in entries(message, "links", "gossip"):
        linked = entries_of_ids(entry)
        links.append((peer_id(entry, "peer_id", "gossip link state"), name(entry, "name", "gossip link state"),
                      integer(entry, "version", 0, 2**63 - 1, "gossip link state"), linked))
    announced = [check_announced(entry) for entry in entries(message, "announced", "gossip")] \
        if "announced" in message else []  # absent from routers without the Docker plugin's gossip
    return peers, links, announced


def check_announced(entry):
    """(peer id, name, version, data) of one router's announcements; `data` keeps the
    keys this version knows ("ipam", "dns"), checked, and drops the others."""
    what = "gossip announcement"
    return (peer_id(entry, "peer_id", what), name(entry, "name", what),
            integer(entry, "version", 0, 2**63 - 1, what), announced_data(_field(entry, "data", what)))


def announced_data(data):
    """The announcements of this version's keys, checked (also before this router sends its own)."""
    if type(data) is not dict:
        raise ProtocolError(f"gossip announcement: data must be an object, got {quote(data)}")
    checks = {"ipam": check_ranges, "dns": check_records}
    return {key: checks[key](value) for key, value in data.items() if key in checks}


def check_ranges(value):
    """{subnet: [{"range", "since"}]}: the address ranges a host holds (plugin/blocks.py)."""
    what = "gossip announcement: ipam"
    if type(value) is not dict or len(value) > MAX_SUBNETS:
        raise ProtocolError(f"{what} must be an object of at most {MAX_SUBNETS} subnets, got {quote(value)}")
    for subnet, ranges in value.items():
        subnet = _ipv4_network(subnet, f"{what}: a subnet")
        if type(ranges) is not list or len(ranges) > MAX_RANGES or not all(type(r) is dict for r in ranges):
            raise ProtocolError(f"{what}: {subnet} must have a list of at most {MAX_RANGES} ranges, "
                                f"got {quote(ranges)}")
        for entry in ranges:
            if not _ipv4_network(_field(entry, "range", what), f"{what}: a range").subnet_of(subnet):
                raise ProtocolError(f"{what}: range {quote(entry['range'])} is not inside {subnet}")
            since = _field(entry, "since", what)
            if type(since) not in (int, float) or not 0 <= since < 2**63:
                raise ProtocolError(f"{what}: since must be a time in seconds, got {quote(since)}")
    return value


def check_records(value):
    """[{"names", "ip", "subnet"}]: a host's containers' names (plugin/names.py)."""
    what = "gossip announcement: dns"
    if type(value) is not list or len(value) > MAX_RECORDS or not all(type(r) is dict for r in value):
        raise ProtocolError(f"{what} must be a list of at most {MAX_RECORDS} records, got {quote(value)}")
    for record in value:
        names = _field(record, "names", what)
        if type(names) is not list or not 0 < len(names) <= MAX_RECORD_NAMES or not all(
                type(n) is str and 0 < len(n) <= MAX_DNS_NAME for n in names):
            raise ProtocolError(f"{what}: names must be 1 to {MAX_RECORD_NAMES} names of at most "
                                f"{MAX_DNS_NAME} characters, got {quote(names)}")
        ip = _field(record, "ip", what)
        try:
            if type(ip) is not str or len(ip) > 15 or ipaddress.ip_address(ip).version != 4:
                raise ValueError
        except ValueError:
            raise ProtocolError(f"{what}: ip must be an IPv4 address, got {quote(ip)}") from None
        if record.get("subnet") is not None:
            _ipv4_network(record["subnet"], f"{what}: subnet")
    return value


def _ipv4_network(text, what):
    try:
        if type(text) is not str or len(text) > 18:
            raise ValueError
        network = ipaddress.ip_network(text)
        if network.version != 4:
            raise ValueError
    except ValueError:
        raise ProtocolError(f"{what} must be an IPv4 subnet in CIDR form, got {quote(text)}") from None
    return network


def entries_of_ids(entry):
    ids = _field(entry, "links", "gossip link state")
    # min and max in C: a forming mesh brings a router about a million ids to check
    if (type(ids) is not list or len(ids) > MAX_ENTRIES or set(map(type, ids)) - {int}
            or ids and (min(ids) < 1 or max(ids) >= 2**32)):
        raise ProtocolError(f"gossip: links must be at most {MAX_ENTRIES} peer ids, got {quote(ids)}")
    return set(ids)


def check_sync(message):
    """({peer id: link-state version}, {peer id: announcement version}, {peer ids known})
    of a digest (`sync`)."""
    def listed(key):
        value = _field(message, key, "sync")
        if type(value) is not list or len(value) > MAX_DIGEST:
            raise ProtocolError(f"sync: {key} must be a list of at most {MAX_DIGEST}, got {quote(value)}")
        return value

    def versions(key):
        pairs = listed(key)
        if any(type(p) is not list or len(p) != 2 or type(p[0]) is not int or not 0 < p[0] < 2**32
               or type(p[1]) is not int or not 0 <= p[1] < 2**63 for p in pairs):
            raise ProtocolError(f"sync: {key} must be [peer id, version] pairs, got {quote(pairs)}")
        return dict(pairs)
    known = listed("known")
    if any(type(i) is not int or not 0 < i < 2**32 for i in known):
        raise ProtocolError(f"sync: known must be peer ids, got {quote(known)}")
    return versions("links"), versions("announced"), set(known)


def check_suspect(message):
    """The peer id a `suspect` report names."""
    return peer_id(message, "peer_id", "suspect")


def check_session(message):
    """(epoch, key id) of a `session` message."""
    return integer(message, "epoch", 0, 2**32, "session"), integer(message, "key_id", 1, 65535, "session")


def check_rekey(message, with_key_id):
    epoch = integer(message, "epoch", 1, 2**32, message["type"])
    public = hex_string(message, "public", 32, message["type"])
    key_id = integer(message, "key_id", 1, 65535, message["type"]) if with_key_id else None
    return epoch, public, key_id


def reason(message):
    """An `error` message's reason, cut to a length fit for a log line."""
    text = message.get("reason")
    text = text if type(text) is str else repr(text)
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."
