"""The control protocol between routers: framing, handshake, session keys, heartbeats.

Control connection (TCP, the router's port, default 6783)
---------------------------------------------------------
Every message is a 4-byte big-endian length followed by that many bytes: until
the handshake ends, UTF-8 JSON (an object with a string field "type"); after
it, the same JSON sealed with ChaCha20-Poly1305 under the sender's control key
(nonce = 4 zero bytes + a per-direction message counter from 0, the length
as associated data), so names, addresses and topology never cross in clear.
Handshake messages are at most MAX_HANDSHAKE_MESSAGE bytes, later ones
MAX_MESSAGE; a longer one is a protocol error and closes the connection.

Handshake (version 2). The side that dialled is the client.

1. Both send ``hello``: ``{"type": "hello", "protocol": "weavefast", "versions":
   [lo, hi], "auth": "psk" | "none", "nonce": <32 hex digits>, "public": <X25519
   public key, 64 hex digits, fresh per connection>, "ciphers": [names by
   preference], "name": str, "peer_id": u32 (nonzero), "port": data port,
   "incarnation": <16 hex digits>}``. The hello keeps the fields of version 1,
   so an older router still answers with the version-mismatch error. Each side
   picks the highest version both ranges contain, or sends ``error`` naming
   both ranges and closes. A side with a secret refuses one without, and the
   other way round.
2. Key schedule (HKDF-SHA256, RFC 5869): transcript = SHA-256("weavefast v2" ||
   len || client hello || len || server hello), the hellos as sent; psk =
   SHA-256("weavefast network secret" || secret), or 32 zero bytes without a
   secret; okm = HKDF(salt=psk, ikm=X25519(own private, their public),
   info="weavefast v2 session" || transcript) cut into: confirm keys
   (client, server), control keys (client->server, server->client), data keys
   (c->s, s->c, 32 bytes each) and tokens (c->s, s->c, 16 bytes each).
3. ``auth``: ``{"type": "auth", "proof": hex(HMAC-SHA256(own confirm key,
   transcript))}``; the client sends first and the server answers only after
   the client's proof checked out. A wrong proof means a different secret.
   From here on every message is sealed.
4. ``ready``: ``{"type": "ready", "version": n}`` once a side accepts the
   other (identity, no duplicate); or ``error``: ``{"type": "error", "reason":
   str}`` and the connection is closed.

Data cipher: without a secret "none" (frames in clear, the 16-byte token as
trailer); with one AES-256-GCM when both sides list it first (CPUs with AES
instructions do), else ChaCha20-Poly1305.

After the handshake (version 2):

- ``session`` ``{"type": "session", "epoch": n, "key_id": k}``: "I accept data
  sealed with the epoch's keys under key id k" — send to me with it. Epoch 0
  comes from the handshake; each side sends it once the connection is kept.
- ``rekey`` ``{"type": "rekey", "epoch": n, "public": hex}`` (client only, every
  rekey interval) and ``rekey_ack`` ``{"type": "rekey_ack", "epoch": n, "public":
  hex, "key_id": k}``: a fresh X25519 exchange; the epoch's keys are HKDF(salt=
  psk, ikm=the new shared secret, info="weavefast v2 rekey" || transcript ||
  epoch u64). The server installs the new receive key and acks; the client
  installs its own, switches its sending key and sends ``session``; the
  server switches when that arrives. Old receive keys stay valid for
  KEY_OVERLAP seconds, so no datagram in flight is lost.
- ``gossip`` ``{"type": "gossip", "peers": [{"peer_id", "name", "host",
  "port"}], "links": [{"peer_id", "name", "version", "links": [peer ids]}],
  "announced": [{"peer_id", "name", "version", "data"}]}``: addresses of
  established routers (membership), link states (routing) and what routers
  announce (address ranges, names). An entry replaces the stored one of the
  same peer_id when its version is higher. Version 3 sends deltas (see
  mesh.py); version 2 sends the whole state on every change.
- ``sync`` (version 3) ``{"type": "sync", "links": [[peer id, version]],
  "announced": [[peer id, version]], "known": [peer ids]}``: a digest; the
  answer is a ``gossip`` with the entries the asker lacks or has older.
- ``suspect`` (version 3) ``{"type": "suspect", "peer_id": p}``: the sender's
  probes of p went unanswered; the receiver pings p itself and declares it
  failed only if p stays silent to it too (liveness.py).
- ``heartbeat`` ``{"type": "heartbeat"}`` (version 2 only): sent every probe
  interval; any message counts as a sign of life of the control connection.
  Version 3 connections stay silent when idle.
- ``error``: as above, then the sender closes the connection.

Data-path heartbeats (CONTROL datagrams through the dataplane)
---------------------------------------------------------------
``magic "WFHB" | kind u8 (1 ping, 2 pong) | seq u64 | timestamp f64``. The
dataplane seals and opens CONTROL datagrams like frames and hands Python the
peer whose key opened one, with a replay window per key: a heartbeat that
counts came from that peer, once. A pong echoes the ping's seq and timestamp;
the difference to the local clock is the round-trip time.
"""
import asyncio
import functools
import hashlib
import hmac
import json
import os
import platform
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dataplane.control import messages
from dataplane.control.errors import HandshakeError, ProtocolError

__all__ = ["HandshakeError", "ProtocolError"]  # raised by everything here

PROTOCOL = "weavefast"
VERSIONS = (2, 3)  # lowest and highest protocol version this code speaks
MAX_MESSAGE = 1 << 20
MAX_HANDSHAKE_MESSAGE = 4096
KEY_OVERLAP = 15.0  # seconds a replaced receive key still opens datagrams in flight
CIPHER_NAMES = ("aes-256-gcm", "chacha20-poly1305")
_LENGTH = struct.Struct("!I")
_TAG_LEN = 16


def encode_message(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return _LENGTH.pack(len(body)) + body


def _parse(body: bytes) -> dict:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("message is JSON nested too deeply") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("message is not an object with a string 'type'")
    return message


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > limit:
        raise ProtocolError(f"message of {length} bytes exceeds the limit of {limit}")
    return await reader.readexactly(length)


async def read_message(reader: asyncio.StreamReader, limit: int = MAX_MESSAGE) -> dict:
    """Returns the next cleartext message; raises asyncio.IncompleteReadError at EOF."""
    return _parse(await _read_frame(reader, limit))


def _nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "big")


class Channel:
    """Messages over one control connection: cleartext during the handshake,
    sealed once `secure()` gave it the two control keys."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self._seal = self._open = None
        self._sent = self._received = 0

    @property
    def secured(self):
        return self._seal is not None

    def secure(self, send_key: bytes, receive_key: bytes) -> None:
        self._seal, self._open = ChaCha20Poly1305(send_key), ChaCha20Poly1305(receive_key)

    def send(self, message: dict) -> None:
        if self.writer.is_closing():
            return
        frame = encode_message(message)
        if self._seal:
            length = _LENGTH.pack(len(frame) - _LENGTH.size + _TAG_LEN)
            frame = length + self._seal.encrypt(_nonce(self._sent), frame[_LENGTH.size:], length)
            self._sent += 1
        self.writer.write(frame)

    async def read(self) -> dict:
        if not self._open:
            return await read_message(self.reader, MAX_HANDSHAKE_MESSAGE)
        frame = await _read_frame(self.reader, MAX_MESSAGE + _TAG_LEN)
        try:
            body = self._open.decrypt(_nonce(self._received), frame, _LENGTH.pack(len(frame)))
        except InvalidTag:
            raise ProtocolError("a control message failed authentication") from None
        self._received += 1
        return _parse(body)

    def close(self) -> None:
        self.writer.close()


def negotiate_version(ours, theirs):
    """Highest version in both inclusive ranges, or None."""
    high, low = min(ours[1], theirs[1]), max(ours[0], theirs[0])
    return high if high >= low else None


def format_versions(versions):
    low, high = versions
    return str(low) if low == high else f"{low}-{high}"


@functools.cache  # read once per process, not per handshake
def has_aes_instructions() -> bool:
    """Whether this CPU encrypts AES in hardware (x86 "aes", arm64 "aes" feature)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.split(":")[0].strip() in ("flags", "Features") and "aes" in line.split(":", 1)[1].split()
                       for line in f)
    except OSError:
        return platform.machine() in ("x86_64", "AMD64")


def preferred_ciphers(forced: str | None = None) -> list[str]:
    """The data ciphers this router offers, best first."""
    if forced:
        return [forced]
    return list(CIPHER_NAMES) if has_aes_instructions() else list(reversed(CIPHER_NAMES))


def choose_cipher(client: list, server: list) -> str | None:
    """Both sides' first choice when they agree, else ChaCha20-Poly1305 (fast
    without AES instructions), else any common one."""
    common = [c for c in client if c in server and c in CIPHER_NAMES]
    if not common:
        return None
    if client[0] == server[0] and client[0] in common:
        return client[0]
    return "chacha20-poly1305" if "chacha20-poly1305" in common else common[0]


@dataclass(frozen=True)
class Identity:
    name: str
    peer_id: int
    port: int
    incarnation: str  # random per router start: tells a restart from a stale duplicate


@dataclass(frozen=True)
class DataKeys:
    """The keys of one epoch of a session: 32-byte keys, or 16-byte tokens
    when the cipher is "none"."""
    cipher: str
    send: bytes
    receive: bytes

    def __repr__(self):  # never print key material
        return f"DataKeys({self.cipher})"


@dataclass(frozen=True, repr=False)
class Handshake:
    """What the handshake established about the remote router."""
    identity: Identity
    version: int
    client: bool  # this side dialled
    cipher: str
    data: DataKeys  # epoch 0
    psk: bytes
    transcript: bytes

    def __repr__(self):
        return f"Handshake({self.identity}, version {self.version}, {self.cipher})"


def network_psk(secret: bytes | None) -> bytes:
    return hashlib.sha256(b"weavefast network secret" + secret).digest() if secret else bytes(32)


def transcript_hash(client_hello: bytes, server_hello: bytes) -> bytes:
    h = hashlib.sha256(b"weavefast v2")
    for hello in (client_hello, server_hello):
        h.update(_LENGTH.pack(len(hello)) + hello)
    return h.digest()


def _hkdf(psk: bytes, shared: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=psk, info=info).derive(shared)


def _split(okm: bytes, sizes):
    out, pos = [], 0
    for size in sizes:
        out.append(okm[pos:pos + size])
        pos += size
    return out


def session_keys(psk: bytes, shared: bytes, transcript: bytes) -> dict:
    """The handshake's key schedule, as keys named from the client's side."""
    names = ("confirm_client", "confirm_server", "control_c2s", "control_s2c",
             "data_c2s", "data_s2c", "token_c2s", "token_s2c")
    sizes = (32,) * 6 + (16, 16)
    return dict(zip(names, _split(_hkdf(psk, shared, b"weavefast v2 session" + transcript, sum(sizes)), sizes)))


def rekey_keys(psk: bytes, shared: bytes, transcript: bytes, epoch: int, cipher: str, client: bool) -> DataKeys:
    """The data keys of a later epoch, for the side given by `client`."""
    info = b"weavefast v2 rekey" + transcript + epoch.to_bytes(8, "big")
    c2s, s2c, token_c2s, token_s2c = _split(_hkdf(psk, shared, info, 96), (32, 32, 16, 16))
    return data_keys(cipher, client, c2s, s2c, token_c2s, token_s2c)


def data_keys(cipher, client, c2s, s2c, token_c2s, token_s2c) -> DataKeys:
    if cipher == "none":
        c2s, s2c = token_c2s, token_s2c
    return DataKeys(cipher, c2s, s2c) if client else DataKeys(cipher, s2c, c2s)


class Ephemeral:
    """A fresh X25519 key pair."""

    def __init__(self):
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()

    def exchange(self, their_public: bytes) -> bytes:
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(their_public))
        except ValueError:  # a low-order point, which would give an all-zero secret
            raise ProtocolError("the X25519 public key is a low-order point") from None


def proof(confirm_key: bytes, transcript: bytes) -> str:
    return hmac.new(confirm_key, transcript, hashlib.sha256).hexdigest()


async def handshake(channel: Channel, me: Identity, secret: bytes | None, outbound: bool,
                    accept=lambda identity: None, versions=VERSIONS, ciphers=None) -> Handshake:
    """Runs the handshake on a fresh connection; on success the channel is sealed.

    `accept(identity)` is called once the peer is authenticated and returns
    None or the reason to refuse it. Raises HandshakeError (refused by either
    side), ProtocolError (the other side is told why before the connection
    closes), or OSError/IncompleteReadError (connection lost).
    """
    try:
        return await _handshake(channel, me, secret, outbound, accept, versions, ciphers)
    except ProtocolError as exc:
        channel.send({"type": "error", "reason": str(exc)})
        raise


async def _handshake(channel, me, secret, outbound, accept, versions, ciphers):
    ephemeral = Ephemeral()
    ciphers = ciphers or preferred_ciphers()
    hello = encode_message({
        "type": "hello", "protocol": PROTOCOL, "versions": list(versions),
        "auth": "psk" if secret else "none", "nonce": os.urandom(16).hex(),
        "public": ephemeral.public, "ciphers": ciphers,
        "name": me.name, "peer_id": me.peer_id, "port": me.port, "incarnation": me.incarnation})
    channel.writer.write(hello)

    async def expect(kind, message=None):
        message = message if message is not None else await channel.read()
        if message["type"] == "error":
            raise HandshakeError(messages.reason(message), by_peer=True)
        if message["type"] != kind:
            raise ProtocolError(f"expected {kind!r} during the handshake, got {messages.quote(message['type'])}")
        return message

    def refuse(reason, itself=False):
        channel.send({"type": "error", "reason": reason})
        raise HandshakeError(reason, itself=itself)

    their_hello_frame = await _read_frame(channel.reader, MAX_HANDSHAKE_MESSAGE)
    their_hello = await expect("hello", _parse(their_hello_frame))
    name, peer_id, port, incarnation, their_versions, their_auth = messages.check_hello_identity(their_hello)
    identity = Identity(name, peer_id, port, incarnation)
    who = f"{identity.name} (peer id {identity.peer_id})"
    version = negotiate_version(versions, their_versions)
    if version is None:
        refuse(f"protocol version mismatch: {me.name} speaks version {format_versions(versions)}, "
               f"{who} speaks version {format_versions(their_versions)}")
    if secret and their_auth != "psk":
        refuse(f"{me.name} requires a network secret but {who} has none (--password/--key-file)")
    if not secret and their_auth != "none":
        refuse(f"{who} requires a network secret but {me.name} has none (--password/--key-file)")
    their_public, their_ciphers = messages.check_hello_keys(their_hello)
    cipher = "none"
    if secret:
        client_list, server_list = (ciphers, their_ciphers) if outbound else (their_ciphers, ciphers)
        cipher = choose_cipher(client_list, server_list)
        if cipher is None:
            refuse(f"no common cipher: {me.name} offers {', '.join(ciphers)}, "
                   f"{who} offers {messages.quote(their_ciphers)} (--cipher)")
    shared = ephemeral.exchange(their_public)
    ours = hello[_LENGTH.size:]
    transcript = transcript_hash(*((ours, their_hello_frame) if outbound else (their_hello_frame, ours)))
    psk = network_psk(secret)
    keys = session_keys(psk, shared, transcript)
    mine, theirs = ("client", "server") if outbound else ("server", "client")

    async def check_proof():
        expected = proof(keys[f"confirm_{theirs}"], transcript)
        if not hmac.compare_digest(str((await expect("auth")).get("proof"))[:64], expected):
            refuse(f"wrong network secret: {who} failed authentication "
                   f"(its --password/--key-file differs from {me.name}'s)" if secret else
                   f"handshake with {who} failed: its key confirmation does not match (altered on the way?)")

    # The server proves itself only to a client that proved itself first.
    if not outbound:
        await check_proof()
    channel.send({"type": "auth", "proof": proof(keys[f"confirm_{mine}"], transcript)})
    if outbound:
        await check_proof()
    send_dir, receive_dir = ("c2s", "s2c") if outbound else ("s2c", "c2s")
    channel.secure(keys[f"control_{send_dir}"], keys[f"control_{receive_dir}"])
    if identity.incarnation == me.incarnation:
        refuse(f"{me.name} connected to itself", itself=True)
    if identity.peer_id == me.peer_id:
        refuse(f"{who} has the peer id of {me.name}: give one of them another "
               + ("--name" if identity.name == me.name else "--peer-id"))
    reason = accept(identity)
    if reason:
        refuse(reason)
    channel.send({"type": "ready", "version": version})
    await expect("ready")
    data = data_keys(cipher, outbound, keys["data_c2s"], keys["data_s2c"], keys["token_c2s"], keys["token_s2c"])
    return Handshake(identity, version, outbound, cipher, data, psk, transcript)


# Data-path heartbeats.
PING, PONG = 1, 2
_HEARTBEAT = struct.Struct("!4sBQd")
HEARTBEAT_LEN = _HEARTBEAT.size


def encode_heartbeat(kind, seq, timestamp):
    return _HEARTBEAT.pack(b"WFHB", kind, seq, timestamp)


def decode_heartbeat(payload):
    """(kind, seq, timestamp), or None for anything that is not a heartbeat."""
    if len(payload) != HEARTBEAT_LEN:
        return None
    magic, kind, seq, timestamp = _HEARTBEAT.unpack(payload)
    if magic != b"WFHB" or kind not in (PING, PONG):
        return None
    return kind, seq, timestamp
