"""The control protocol between routers: framing, handshake, heartbeats.

Control connection (TCP, the router's port, default 6783)
---------------------------------------------------------
Every message is a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON: an object with a string field "type". Messages longer than
MAX_MESSAGE are a protocol error and close the connection.

Handshake, both sides send at once and then read what the other sent:

1. ``hello``: ``{"type": "hello", "protocol": "weavefast", "versions": [lo, hi],
   "auth": "hmac-sha256" | "none", "nonce": <32 hex digits>, "name": str,
   "peer_id": u32 (nonzero), "port": data port, "incarnation": <16 hex digits>}``.
   The hello has the same shape in every protocol version. Each side picks
   the highest version both ranges contain; when there is none it sends
   ``error`` naming both ranges and closes.
2. ``auth`` (only when both sides have a network secret): ``{"type": "auth",
   "proof": hex}`` with proof = HMAC-SHA256(secret, "weavefast-auth" ||
   sender peer_id (u32) || sender nonce || receiver nonce). The secret never
   crosses the wire; the sender's peer id in the proof stops a peer from
   reflecting a router's own proof back at it. A side with a secret talking to
   a side without one refuses the connection.
3. ``ready``: ``{"type": "ready", "version": n}`` once a side accepts the
   other (secret, identity, no duplicate); or ``error``: ``{"type": "error",
   "reason": str}`` and the connection is closed.

After the handshake (version 1):

- ``heartbeat`` ``{"type": "heartbeat"}``: sent every heartbeat interval; any
  message received counts as a sign of life of the control connection.
- ``gossip`` ``{"type": "gossip", "peers": [{"peer_id", "name", "host",
  "port"}], "links": [{"peer_id", "name", "version", "links": [peer ids]}]}``:
  the addresses of the peers the sender is connected to (membership) and its
  link-state database (routing). A link state replaces the stored one of the
  same peer_id when its version is higher.
- ``error``: as above, then the sender closes the connection.

Data-path heartbeats (CONTROL datagrams through the dataplane)
---------------------------------------------------------------
``magic "WFHB" | kind u8 (1 ping, 2 pong) | seq u64 | timestamp f64 |
mac 16 bytes``: mac = first 16 bytes of HMAC-SHA256(session key, the 21 bytes
before it). The session key is HMAC-SHA256(secret or b"", "weavefast-session"
|| client nonce || server nonce), so only the two ends of a control connection
can produce heartbeats that count. A pong echoes the ping's seq and timestamp;
the difference to the local clock is the round-trip time.
"""
import asyncio
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass

PROTOCOL = "weavefast"
VERSIONS = (1, 1)  # lowest and highest protocol version this code speaks
MAX_MESSAGE = 1 << 20
_LENGTH = struct.Struct("!I")


class ProtocolError(Exception):
    """The other side sent something that is not a valid message here."""


class HandshakeError(Exception):
    """The connection was refused; `by_peer` tells which side refused it,
    `itself` that the router reached its own listening port."""

    def __init__(self, reason, by_peer=False, itself=False):
        super().__init__(reason)
        self.reason = reason
        self.by_peer = by_peer
        self.itself = itself


def encode_message(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return _LENGTH.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> dict:
    """Returns the next message; raises asyncio.IncompleteReadError at EOF."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message of {length} bytes exceeds the limit of {MAX_MESSAGE}")
    body = await reader.readexactly(length)
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("message is not an object with a string 'type'")
    return message


def negotiate_version(ours, theirs):
    """Highest version in both inclusive ranges, or None."""
    high, low = min(ours[1], theirs[1]), max(ours[0], theirs[0])
    return high if high >= low else None


def format_versions(versions):
    low, high = versions
    return str(low) if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class Identity:
    name: str
    peer_id: int
    port: int
    incarnation: str  # random per router start: tells a restart from a stale duplicate


@dataclass(frozen=True)
class Handshake:
    """What the handshake established about the remote router."""
    identity: Identity
    version: int
    session_key: bytes


def _proof(secret, prover_id, prover_nonce, verifier_nonce):
    data = b"weavefast-auth" + struct.pack("!I", prover_id) + prover_nonce + verifier_nonce
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def _remote_identity(hello):
    try:
        identity = Identity(str(hello["name"]), int(hello["peer_id"]), int(hello["port"]),
                            str(hello["incarnation"]))
        versions = tuple(int(v) for v in hello["versions"])
        nonce = bytes.fromhex(hello["nonce"])
        auth = hello["auth"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed hello: {exc!r}") from None
    if hello.get("protocol") != PROTOCOL or len(versions) != 2 or len(nonce) != 16:
        raise ProtocolError("not a weavefast hello")
    if not 0 < identity.peer_id < 1 << 32 or not 0 < identity.port < 65536:
        raise ProtocolError(f"hello with invalid peer id {identity.peer_id} or port {identity.port}")
    return identity, versions, nonce, auth


async def handshake(reader, writer, me: Identity, secret: bytes | None, outbound: bool,
                    accept=lambda identity: None, versions=VERSIONS) -> Handshake:
    """Runs the handshake on a fresh connection.

    `accept(identity)` is called once the peer is authenticated and returns
    None or the reason to refuse it. Raises HandshakeError (refused by either
    side), ProtocolError, or OSError/IncompleteReadError (connection lost).
    """
    nonce = os.urandom(16)
    writer.write(encode_message({
        "type": "hello", "protocol": PROTOCOL, "versions": list(versions),
        "auth": "hmac-sha256" if secret else "none", "nonce": nonce.hex(),
        "name": me.name, "peer_id": me.peer_id, "port": me.port, "incarnation": me.incarnation}))

    async def expect(kind):
        message = await read_message(reader)
        if message["type"] == "error":
            raise HandshakeError(str(message.get("reason")), by_peer=True)
        if message["type"] != kind:
            raise ProtocolError(f"expected {kind!r} during the handshake, got {message['type']!r}")
        return message

    def refuse(reason, itself=False):
        writer.write(encode_message({"type": "error", "reason": reason}))
        raise HandshakeError(reason, itself=itself)

    identity, their_versions, their_nonce, their_auth = _remote_identity(await expect("hello"))
    who = f"{identity.name} (peer id {identity.peer_id})"
    version = negotiate_version(versions, their_versions)
    if version is None:
        refuse(f"protocol version mismatch: {me.name} speaks version {format_versions(versions)}, "
               f"{who} speaks version {format_versions(their_versions)}")
    if secret and their_auth != "hmac-sha256":
        refuse(f"{me.name} requires a network secret but {who} has none (--password/--key-file)")
    if not secret and their_auth != "none":
        refuse(f"{who} requires a network secret but {me.name} has none (--password/--key-file)")
    if secret:
        writer.write(encode_message({"type": "auth", "proof": _proof(secret, me.peer_id, nonce, their_nonce)}))
        expected = _proof(secret, identity.peer_id, their_nonce, nonce)
        if not hmac.compare_digest(str((await expect("auth")).get("proof")), expected):
            refuse(f"wrong network secret: {who} failed authentication "
                   f"(its --password/--key-file differs from {me.name}'s)")
    if identity.incarnation == me.incarnation:
        refuse(f"{me.name} connected to itself", itself=True)
    if identity.peer_id == me.peer_id:
        refuse(f"{who} has the peer id of {me.name}: give one of them another "
               + ("--name" if identity.name == me.name else "--peer-id"))
    reason = accept(identity)
    if reason:
        refuse(reason)
    writer.write(encode_message({"type": "ready", "version": version}))
    await expect("ready")
    client_nonce, server_nonce = (nonce, their_nonce) if outbound else (their_nonce, nonce)
    session_key = hmac.new(secret or b"", b"weavefast-session" + client_nonce + server_nonce,
                           hashlib.sha256).digest()
    return Handshake(identity, version, session_key)


# Data-path heartbeats.
PING, PONG = 1, 2
_HEARTBEAT = struct.Struct("!4sBQd")
_MAC_LEN = 16
HEARTBEAT_LEN = _HEARTBEAT.size + _MAC_LEN


def encode_heartbeat(session_key, kind, seq, timestamp):
    body = _HEARTBEAT.pack(b"WFHB", kind, seq, timestamp)
    return body + hmac.new(session_key, body, hashlib.sha256).digest()[:_MAC_LEN]


def decode_heartbeat(session_key, payload):
    """(kind, seq, timestamp), or None for anything not a heartbeat of this session."""
    if len(payload) != HEARTBEAT_LEN:
        return None
    body, mac = payload[:_HEARTBEAT.size], payload[_HEARTBEAT.size:]
    if not hmac.compare_digest(hmac.new(session_key, body, hashlib.sha256).digest()[:_MAC_LEN], mac):
        return None
    magic, kind, seq, timestamp = _HEARTBEAT.unpack(body)
    if magic != b"WFHB" or kind not in (PING, PONG):
        return None
    return kind, seq, timestamp
