"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/.

The seeds are real traffic as weavefast makes it: Ethernet frames of the
kinds containers send (ARP, ICMP, UDP, TCP, IPv6 neighbour discovery, a
VLAN-tagged frame, a TSO super-frame with its virtio-net header) carried in
datagrams built by the reference encoder (`encode_datagrams`, so FRAMES,
FRAGMENT and CONTROL datagrams exactly as the wire format packs them) and
sealed by the reference sealer; data-path heartbeats; and the control
messages of a real handshake between two routers (protocol.handshake run
over a local TCP connection, both directions recorded as they crossed the
socket), plus the post-handshake messages the mesh sends. Each target gets
the seeds in the input layout its harness reads (see the harness's comment).

    python3 fuzz/make_corpus.py          # rewrites fuzz/corpus/
"""
import asyncio
import hashlib
import os
import shutil
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from dataplane import reference as ref  # noqa: E402
from dataplane.control import protocol  # noqa: E402

CORPUS = os.path.join(ROOT, "fuzz", "corpus")
TOKEN = bytes(range(16))
FUZZ_C_KEY = b"weavefast fuzz key, not secret!\0"   # fuzz_aead.c's KEY
PY_KEYS = {ref.CIPHER_NONE: bytes(range(16)), ref.CIPHER_AES_256_GCM: bytes(range(32)),
           ref.CIPHER_CHACHA20_POLY1305: bytes(range(32, 64))}   # fuzz_reference.py's KEYS

MAC_A, MAC_B, BCAST = bytes.fromhex("0242ac110002"), bytes.fromhex("0242ac110003"), b"\xff" * 6


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def ipv4(proto, payload, src="10.32.1.2", dst="10.32.2.2", ident=1):
    a = bytes(int(x) for x in src.split(".")) + bytes(int(x) for x in dst.split("."))
    hdr = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0) + a
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def eth(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def udp_frame(payload, sport=40000, dport=5001, ident=1):
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return eth(MAC_B, MAC_A, 0x0800, ipv4(17, u, ident=ident))


def frames():
    arp = eth(BCAST, MAC_A, 0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + MAC_A
              + bytes([10, 32, 1, 2]) + b"\0" * 6 + bytes([10, 32, 2, 2]))
    icmp = eth(MAC_B, MAC_A, 0x0800, ipv4(1, b"\x08\x00\xf7\xff\x00\x01\x00\x01" + bytes(56)))
    tcp_syn = eth(MAC_B, MAC_A, 0x0800, ipv4(6, struct.pack("!HHIIBBHHH", 40001, 80, 1, 0, 0x50, 0x02,
                                                             64240, 0, 0)))
    ns = eth(bytes.fromhex("3333ff000002"), MAC_A, 0x86DD, struct.pack("!IHBB", 0x60000000, 32, 58, 255)
             + bytes.fromhex("fe80000000000000000000000000000100ff0200000000000000000001ff000002")[:32]
             + b"\x87\x00\x00\x00\x00\x00\x00\x00" + bytes(24))
    vlan = MAC_B + MAC_A + b"\x81\x00\x00\x2a\x08\x00" + ipv4(17, struct.pack("!HHHH", 1, 2, 12, 0) + b"vlan")
    return {"arp": arp, "icmp": icmp, "tcp_syn": tcp_syn, "ndp": ns, "vlan": vlan,
            "udp": udp_frame(b"x" * 100), "udp_short": udp_frame(b"y" * 20)}


def tso_superframe(size=9000):
    """A TCP super-frame as the TAP hands it over: virtio-net header (NEEDS_CSUM,
    GSO TCPv4, gso_size 1448), then one Ethernet/IPv4/TCP frame of `size` bytes."""
    vnet = struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16)
    payload = bytes((i * 7) & 0xff for i in range(size))
    tcp = struct.pack("!HHIIBBHHH", 40001, 5201, 1000, 1, 0x50, 0x18, 502, 0, 0) + payload
    return vnet + eth(MAC_B, MAC_A, 0x0800, ipv4(6, tcp))


def datagrams():
    """(name, datagram without trailer), as the reference encoder packs them."""
    f = frames()
    out = []
    for name, frame in f.items():
        out += [(f"frames_{name}", d) for d in ref.encode_datagrams(1, 2, 10, [(0, frame)], 1472)]
    out += [("frames_batch", d) for d in
            ref.encode_datagrams(1, 2, 20, [(0, f[k]) for k in ("arp", "icmp", "udp", "udp_short")], 1472)]
    out += [(f"fragment_tso_{i}", d) for i, d in
            enumerate(ref.encode_datagrams(1, 2, 30, [(ref.RFLAG_VNET, tso_superframe(4000))], 1472, msg=7))]
    out += [(f"fragment_vlan_mtu_{i}", d) for i, d in
            enumerate(ref.encode_datagrams(1, 0, 40, [(0, f["vlan"][:18] + bytes(1400))], 1472, msg=8))]
    hb = protocol.encode_heartbeat(protocol.PING, 3, 1700000000.5)
    out.append(("control_heartbeat", ref.encode_header(ref.TYPE_CONTROL, 1, 2, 50, key_id=5) + hb))
    out.append(("relay", ref.encode_header(ref.TYPE_FRAMES, 1, 3, 60, hops=2, key_id=9, lane=1)
                + struct.pack("!HBB", len(f["arp"]), 0, 0) + f["arp"]))
    return out


async def capture_handshake(secret):
    """Runs protocol.handshake between two routers over loopback TCP and
    returns every frame that crossed, in both directions, as sent."""
    crossed = []

    class Tap:
        def __init__(self, writer):
            self.writer = writer

        def write(self, data):
            crossed.append(bytes(data))
            self.writer.write(data)

        def __getattr__(self, name):
            return getattr(self.writer, name)

    async def serve(reader, writer):
        ch = protocol.Channel(reader, Tap(writer))
        await protocol.handshake(ch, protocol.Identity("host-b", 2, 6783, "b" * 16), secret, False)
        ch.send({"type": "heartbeat"})
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ch = protocol.Channel(reader, Tap(writer))
    await protocol.handshake(ch, protocol.Identity("host-a", 1, 6783, "a" * 16), secret, True)
    ch.send({"type": "gossip", "peers": [{"peer_id": 2, "name": "host-b", "host": "10.47.0.2", "port": 6783}],
             "links": [{"peer_id": 1, "name": "host-a", "version": 3, "links": [2]}]})
    await writer.drain()
    await ch.read()
    writer.close()
    server.close()
    return crossed


def control_seeds():
    seeds = {}
    for secret in (None, b"network secret"):
        for i, frame in enumerate(asyncio.run(capture_handshake(secret))):
            seeds[f"stream_{'psk' if secret else 'none'}_{i}"] = frame   # length-prefixed, as on the socket
            seeds[f"body_{'psk' if secret else 'none'}_{i}"] = frame[4:]
    for message in ({"type": "session", "epoch": 2, "key_id": 2053},
                    {"type": "rekey", "epoch": 3, "public": "ab" * 32},
                    {"type": "rekey_ack", "epoch": 3, "public": "cd" * 32, "key_id": 3077},
                    {"type": "heartbeat"},
                    {"type": "error", "reason": "protocol version mismatch"},
                    {"type": "gossip", "peers": [], "links": [{"peer_id": 1, "name": "a", "version": 1,
                                                               "links": [2, 3]}]}):
        seeds[f"body_{message['type']}"] = protocol.encode_message(message)[4:]
    seeds["heartbeat_ping"] = protocol.encode_heartbeat(protocol.PING, 1, 1700000000.0)
    seeds["heartbeat_pong"] = protocol.encode_heartbeat(protocol.PONG, 1, 1700000000.0)
    return seeds


def reasm_seeds(dgrams):
    """fuzz_reasm.c: slot count byte, then 7-byte fragments (src, msg, total, offset, len)."""
    def op(src, msg, total, offset, length):
        return struct.pack("!BBHHB", src, msg, total, offset, length)
    seeds = {
        "in_order": b"\x01" + op(0, 1, 300, 0, 100) + op(0, 1, 300, 100, 100) + op(0, 1, 300, 200, 100),
        "two_peers": b"\x01" + op(0, 1, 200, 0, 100) + op(1, 2, 200, 0, 100) + op(0, 1, 200, 100, 100)
                     + op(1, 2, 200, 100, 100),
        "lost_start": b"\x00" + op(2, 0, 300, 100, 100) + op(2, 0, 300, 0, 100),
        "replaced": b"\x02" + op(3, 0, 300, 0, 100) + op(3, 1, 300, 0, 150) + op(3, 1, 300, 150, 150),
    }
    # The FRAGMENT datagrams of a real super-frame, as (offset, length) steps.
    frags = [ref.decode_datagram(d).fragment for n, d in dgrams if n.startswith("fragment_tso")]
    total = frags[0][1]
    seeds["tso"] = b"\x03" + b"".join(op(1, 7, 0x8000 | (total // 9), 0x8000 | (o // 9), min(len(c), 239))
                                      for _, _, o, c in frags)
    return seeds


def uso_seeds():
    """fuzz_uso.c: frames, each a 2-byte length, the bytes, then csum start (2) and offset (1)."""
    def item(frame, start=34, offset=6):
        return struct.pack("!H", len(frame)) + frame + struct.pack("!HB", start, offset)
    flow = [udp_frame(b"%03d" % i * 100, ident=i) for i in range(5)] + [udp_frame(b"end", ident=9)]
    f = frames()
    return {
        "one_flow": b"".join(item(x) for x in flow),
        "two_flows": b"".join(item(udp_frame(b"a" * 200, sport=p)) for p in (1, 1, 2, 2, 1)),
        "mixed": b"".join(item(x, 14, 10) for x in (f["arp"], f["udp"], f["icmp"], f["udp"], f["tcp_syn"])),
    }


def tcp_segment(seq, payload, flags=0x10, sport=40001):
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, 1, 0x80, flags, 502, 0, 0) + \
        b"\x01\x01\x08\x0a" + struct.pack("!II", 12345, 678) + payload
    return eth(MAC_B, MAC_A, 0x0800, ipv4(6, tcp))


def tso_seeds():
    """fuzz_tso.c: a virtio-net header, then frames (2-byte length each); the first one
    is also cut as a super-frame behind that header."""
    def item(frame):
        return struct.pack("!H", len(frame)) + frame
    sf = tso_superframe(9000)
    segs = [tcp_segment(1000 + i * 1000, bytes([i]) * 1000) for i in range(5)]
    return {
        "superframe": sf[:10] + item(sf[10:]) + b"".join(item(x) for x in segs),
        "in_order": bytes(10) + b"".join(item(x) for x in segs),
        "out_of_order": bytes(10) + b"".join(item(segs[i]) for i in (0, 2, 1, 3, 4)),
        "two_flows": bytes(10) + b"".join(item(tcp_segment(1000 + (i // 2) * 1000, b"z" * 1000, sport=40001 + i % 2))
                                          for i in range(6)),
        "psh_last": bytes(10) + b"".join(item(x) for x in segs[:3]) + item(tcp_segment(4000, b"e" * 10, 0x18)),
    }


def rxpath_seeds(dgrams):
    """fuzz_rxpath.c: receive batches of datagrams (2-byte length each, 0xffff ends a batch),
    src_peer 1..3 known, this router 100."""
    def item(d):
        return struct.pack("!H", len(d)) + d

    def renumber(d, src):
        return d[:8] + struct.pack("!II", src, 0) + d[16:]
    by_name = dict(dgrams)
    frames_ = [renumber(d, 1) for n, d in dgrams if n.startswith("frames_")]
    tso = [renumber(d, 2) for n, d in dgrams if n.startswith("fragment_tso")]
    vlan = [renumber(d, 3) for n, d in dgrams if n.startswith("fragment_vlan")]
    # A message split across two batches (through the reassembler), another one starting.
    frame = udp_frame(b"x" * 100)
    rec = struct.pack("!HBB", len(frame), 0, 0) + frame

    def frag(src, msg, total, off, chunk):
        return ref.encode_header(ref.TYPE_FRAGMENT, src, 0, 1) + struct.pack("!III", msg, total, off) + chunk
    return {
        "frames_one_batch": b"".join(item(d) for d in frames_),
        "tso_one_batch": b"".join(item(d) for d in tso),
        "tso_two_batches": item(tso[0]) + b"\xff\xff" + b"".join(item(d) for d in tso[1:]),
        "interleaved": b"".join(item(a) + item(b) for a, b in zip(tso, vlan + frames_)),
        "udp_flow": b"".join(item(renumber(by_name["frames_udp"], 1)) for _ in range(6)),
        "tcp_segments": b"".join(item(ref.encode_datagrams(1, 0, 10 + i, [(0, tcp_segment(1000 + i * 1000, bytes([i]) * 1000))],
                                                           1472)[0]) for i in range(5)),
        "reassembled_then_new": item(frag(1, 1, len(rec), 0, rec[:60])) + b"\xff\xff"
                                + item(frag(1, 1, len(rec), 60, rec[60:])) + item(frag(2, 5, 3000, 0, b"\xee" * 200)),
    }


def replay_seeds():
    """fuzz_replay.c: 9-byte steps (mode, u64)."""
    def step(mode, v):
        return struct.pack("!BQ", mode, v)
    return {
        "in_order": b"".join(step(0, 1) for _ in range(20)),
        "reordered": b"".join(step(m, v) for m, v in ((0, 5), (1, 3), (1, 3), (0, 40), (1, 8000), (1, 8192))),
        "jumps": b"".join(step(m, v) for m, v in ((2, 20000), (1, 100), (3, 1234), (4, 3), (4, 3), (5, 77))),
        "other_key": step(0x80, 5) + step(0, 5) + step(0x81, 1),
    }


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    dgrams = datagrams()
    # fuzz_datagram.c: received datagrams, trailer included.
    write("datagram", {n: ref.seal_datagram(d, ref.CIPHER_NONE, TOKEN) for n, d in dgrams})
    write("reasm", reasm_seeds(dgrams))
    write("rxpath", rxpath_seeds(dgrams))
    write("uso", uso_seeds())
    write("tso", tso_seeds())
    # fuzz_aead.c: 3 steering bytes, then a datagram sealed with its key (and one in the clear).
    aead = {}
    for n, d in dgrams[::3]:
        for c in (ref.CIPHER_AES_256_GCM, ref.CIPHER_CHACHA20_POLY1305):
            aead[f"{n}_c{c}"] = b"\x00\x10\x03" + ref.seal_datagram(d, c, FUZZ_C_KEY)
        aead[f"{n}_c0"] = b"\x00\x10\x03" + ref.seal_datagram(d, ref.CIPHER_NONE, FUZZ_C_KEY[:16])
    write("aead", aead)
    write("replay", replay_seeds())
    write("control", control_seeds())
    # fuzz_reference.py: opened datagrams, and sealed ones with its keys.
    refseeds = {n: d for n, d in dgrams}
    for n, d in dgrams[::4]:
        for c, key in PY_KEYS.items():
            refseeds[f"{n}_sealed_c{c}"] = ref.seal_datagram(d, c, key)
    write("reference", refseeds)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(CORPUS) for f in fs)
    print(f"fuzz/corpus: {sum(len(fs) for _, _, fs in os.walk(CORPUS))} files, {total // 1024} KiB")


if __name__ == "__main__":
    main()
