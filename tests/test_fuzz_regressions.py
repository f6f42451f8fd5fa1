"""Regression tests for what the fuzz targets (fuzz/, README "Fuzzing") found.

Each test carries the input that showed the bug, and says how it was found.
"""
import subprocess
import sys

import pytest

from dataplane.control import messages, protocol
from impls import impl  # noqa: F401  (fixture)


# fuzz/fuzz_reasm.c: crash-d1c8373e700407b3e108725ae4b1bf5e06ed4310
# (base64 AAYAACwAAAYsAAAGAAAGAAs=): one slot; peer 0 starts a 44-byte message;
# peer 2 sends a 6-byte message in one fragment. The reference returns it without
# taking a slot; reasm.h takes the only slot, dropping peer 0's partial message.
def test_reasm_whole_message_in_one_fragment_keeps_other_partials(impl):
    r = impl.Reassembler(1)
    assert r.feed(1, 0, 44, 0, b"a" * 6) is None
    assert r.feed(2, 0, 6, 0, b"b" * 6) == b"b" * 6
    assert r.feed(1, 0, 44, 6, b"c" * 38) == b"a" * 6 + b"c" * 38
    assert r.dropped == 0


# Found reading wf_reasm_feed for the harness: with no slot, the eviction loop
# finds no oldest slot and writes through NULL (SIGSEGV in the test process,
# hence the subprocess). The reference refuses slots < 1 with ValueError.
def test_core_reassembler_refuses_zero_slots():
    pytest.importorskip("dataplane._core")
    code = ("from dataplane import _core\n"
            "try:\n"
            "    r = _core.Reassembler(0)\n"
            "except ValueError:\n"
            "    raise SystemExit(0)\n"
            "r.feed(1, 0, 10, 0, b'x' * 5)\n"
            "raise SystemExit(3)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-500:]!r}"


# Found reading _parse while writing fuzz/fuzz_control.py (the fuzzer itself did not
# reach 1000 levels of nesting in short runs; its dictionary now helps): a handshake
# message is up to MAX_HANDSHAKE_MESSAGE (4096) bytes of JSON, read before any
# authentication; 4096 '[' make json.loads raise RecursionError, which
# _parse does not turn into ProtocolError: the connection's task dies with a
# traceback in the log ("control plane task failed"), and for a connection the
# router dialled, the peer stays marked as dialling and is never retried.
@pytest.mark.parametrize("body", [b"[" * 4096, b'{"a":' * 680 + b"1" + b"}" * 680],
                         ids=["arrays", "objects"])
def test_control_parse_deep_nesting_is_a_protocol_error(body):
    assert len(body) <= protocol.MAX_HANDSHAKE_MESSAGE
    with pytest.raises(protocol.ProtocolError):
        protocol._parse(body)


# fuzz/fuzz_control.py, crash after ~20 s from the seed corpus:
# a hello whose port (or peer_id, or a version) is 1e400 or Infinity, which
# Python's json reads as float('inf'): int() raises OverflowError, which the
# hello validation does not turn into ProtocolError (same effect as above).
HELLO_OVERFLOW = (b'{"type":"weavefasq","versions":[1,2],"auth":"pse53755a","ci4hers":["a256ly1305"],'
                  b'"name":"host-a","peer_id":0,"port":67831e400,"incarnation":"aaaaaa"}')


@pytest.mark.parametrize("hello", [
    HELLO_OVERFLOW,
    b'{"type":"hello","protocol":"weavefast","versions":[2,2],"auth":"none","name":"a",'
    b'"peer_id":Infinity,"port":6783,"incarnation":"0123456789abcdef"}',
    b'{"type":"hello","protocol":"weavefast","versions":[2,-Infinity],"auth":"none","name":"a",'
    b'"peer_id":1,"port":6783,"incarnation":"0123456789abcdef"}',
], ids=["fuzzed-port", "peer_id", "versions"])
def test_hello_with_infinite_number_is_a_protocol_error(hello):
    with pytest.raises(protocol.ProtocolError):
        messages.check_hello_identity(protocol._parse(hello))


# Found reading ext/pipeline.pxi while transcribing it into fuzz/fuzz_rxpath.c, which
# reported it on the seed
# fuzz/corpus/rxpath/reassembled_then_new; a blind 60 s run did not find it. A
# FRAGMENT message completed by the reassembler (its first fragment arrived in an
# earlier receive batch) whose record is a plain IPv4/UDP frame is held for
# coalescing (rx_uso_hold) while it still lies in the reassembly slot, which
# wf_reasm_feed has already made free again. A fragment that starts another message
# later in the same batch is gathered, spilled into the reassembler at the end of
# the batch (before rx_uso_flush), lands in that slot and overwrites the held frame:
# the TAP gets the new fragment's bytes instead. Reproduced here on a real router:
# cleartext mode (the session token is read off the wire, as anyone on the path can),
# h1's router stopped while the second batch queues up so that it is read at once.
def wait_stopped(pid, timeout=5.0):
    """Until every thread of `pid` is stopped (SIGSTOP is not instantaneous)."""
    import glob
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
            try:
                with open(stat) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        if states and all(state in "tT" for state in states):
            return
        time.sleep(0.005)
    raise TimeoutError(f"process {pid} did not stop")


@pytest.mark.root
def test_rx_frame_held_for_coalescing_survives_reassembly(testbed_factory):
    import os
    import signal
    import socket
    import struct
    import time

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from dataplane import reference as wire
    from dataplane import testbed
    from test_sealed import LISTEN_PORT, capture_traffic, from_host

    with testbed_factory(hosts=3) as tb:
        h1, h2, stranger = tb.hosts
        tb.add_container(h1)
        tb.add_container(h2)
        for host, peer in ((h1, h2), (h2, h1)):
            tb.start_router(host, peers=[peer], wait=False)
        for host in (h1, h2):
            tb.wait_ready(host)
        tb.wait_for(lambda: all(p["state"] == "established" for h in (h1, h2) for p in tb.status(h)["peers"]),
                    timeout=20, what="h1 and h2 established")
        c1, c2 = tb.containers
        real = from_host(capture_traffic(tb, udp_count=2), h2)
        assert real, "no datagram from h2 captured"
        last = max(real, key=lambda d: int.from_bytes(d[16:24], "big"))
        key_id, token = int.from_bytes(last[6:8], "big"), last[-wire.TRAILER_LEN:]
        counter = int.from_bytes(last[16:24], "big") + 1000
        ids = {h.name: tb.status(h)["peer_id"] for h in (h1, h2)}
        payload = b"held-for-coalescing-" + os.urandom(8).hex().encode()
        frame = bytes(Ether(src=c2.mac, dst=c1.mac) / IP(src=c2.ip4, dst=c1.ip4)
                      / UDP(sport=4444, dport=LISTEN_PORT, chksum=0) / payload)
        record = struct.pack("!HBB", len(frame), 0, 0) + frame

        def fragment(msg, total, offset, chunk):
            nonlocal counter
            counter += 1
            return (wire.encode_header(wire.TYPE_FRAGMENT, ids["h2"], ids["h1"], counter, key_id=key_id)
                    + struct.pack("!III", msg, total, offset) + chunk + token)

        first, second = fragment(0x7f000001, len(record), 0, record[:40]), \
            fragment(0x7f000001, len(record), 40, record[40:])
        other = fragment(0x7f000002, 3000, 0, b"\xee" * 200)   # starts a message that never ends
        with tb.socket(c1) as listener, tb.socket(stranger) as out:
            listener.bind((c1.ip4, LISTEN_PORT))
            listener.settimeout(3)
            out.sendto(first, (h1.underlay_ip, testbed.ROUTER_PORT))
            time.sleep(0.3)   # read alone: spilled into the reassembler at the end of its batch
            os.kill(h1.router.pid, signal.SIGSTOP)
            try:
                wait_stopped(h1.router.pid)
                out.sendto(second, (h1.underlay_ip, testbed.ROUTER_PORT))
                out.sendto(other, (h1.underlay_ip, testbed.ROUTER_PORT))
                time.sleep(0.1)
            finally:
                os.kill(h1.router.pid, signal.SIGCONT)   # both read in one batch
            try:
                got = listener.recv(2048)
            except socket.timeout:
                got = None
        assert got == payload
