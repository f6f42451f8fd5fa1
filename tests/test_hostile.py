"""Hostile input at the control port: floods of connections, fake identities,
oversized and malformed messages. The router lives, its peers stay
established, a new real router still joins, memory and file descriptors stay
bounded, the refusals are counted, and the log does not grow with the flood.

h1 and h2 run routers; h3 is a stranger on the underlay that runs none (until
the end, when a real router joins from it).
"""
import asyncio
import json
import os
import resource
import socket

import pytest

from dataplane import testbed
from dataplane.control import protocol

pytestmark = pytest.mark.root

RSS_LIMIT_KB = 64 * 1024
FD_LIMIT = 512  # what the router may hold under any of these floods
SECRET = "hostile input test"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(tb, secret):
    h1, h2, _ = tb.hosts
    args = ["--down-after", "1"] + (["--password", SECRET] if secret else [])
    for host, peer in ((h1, h2), (h2, h1)):
        tb.start_router(host, peers=[peer], extra_args=args, wait=False)
    for host in (h1, h2):
        tb.wait_ready(host)
    established(tb)
    return args


def established(tb, hosts=None, timeout=15):
    hosts = hosts or [h for h in tb.hosts if h.router]

    def all_up():
        for host in hosts:
            states = {p["name"]: p["state"] for p in tb.status(host)["peers"]}
            if any(states.get(other.netns) != "established" for other in hosts if other is not host):
                return False
        return True
    tb.wait_for(all_up, timeout=timeout, what="the real routers established with each other")


def check_survived(tb, args):
    """The existing peers are still up, a real router joins from the stranger's
    host, and the router's resources and log stayed bounded."""
    h1, h2, h3 = tb.hosts
    log = h1.router.output()
    print(f"after the flood: {rss_kb(h1.router.pid) // 1024} MB resident, {open_fds(h1.router.pid)} fds, "
          f"{len(log)} bytes of log, refused {tb.status(h1)['refused']}")
    assert "Traceback" not in log
    assert len(log) < 20_000, f"the flood inflated the log to {len(log)} bytes"
    assert max(map(len, log.splitlines())) < 600
    assert rss_kb(h1.router.pid) < RSS_LIMIT_KB
    assert open_fds(h1.router.pid) < FD_LIMIT
    established(tb, [h1, h2])
    tb.start_router(h3, peers=[h1], extra_args=args)
    established(tb, [h1, h2, h3], timeout=10)


async def stranger_connections(tb, host, count, send, at_once=64):
    """Opens `count` TCP connections from the stranger to `host`'s control port and
    runs `send(reader, writer)` on each, `at_once` at a time (more would overflow the
    router's listen backlog: the kernel then drops handshakes the client believes
    complete, and a client waiting for the router to close would wait forever);
    returns the results (exceptions included)."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(at_once)

    async def one():
        async with slots:
            return await connection()

    async def connection():
        sock = tb.socket(tb.hosts[2], socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host.underlay_ip, testbed.ROUTER_PORT))
        except OSError as exc:
            sock.close()
            return exc
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            return await send(reader, writer)
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


@pytest.fixture
def open_files():
    """Room for thousands of client sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_fake_identities_cannot_fill_the_peer_table(testbed_factory):
    """Without a secret anyone may join, but one host cannot bring in 300 made-up routers."""
    with testbed_factory(hosts=3) as tb:
        h1 = tb.hosts[0]
        args = start(tb, secret=False)

        async def fake_router(index):
            # each claims a port of its own, so that none passes for another's restart
            me = protocol.Identity(f"fake{index}", 10_000 + index, 20_000 + index, os.urandom(8).hex())

            async def handshake(reader, writer):
                await protocol.handshake(protocol.Channel(reader, writer), me, None, True)
                await asyncio.sleep(2)  # connected, but never a data-path heartbeat
                return "joined"
            return await stranger_connections(tb, h1, 1, handshake)

        from_stranger = []

        async def watch():
            while True:
                status = await asyncio.get_running_loop().run_in_executor(None, tb.status, h1)
                from_stranger.append(sum(1 for p in status["peers"]
                                         if (p["endpoint"] or "").startswith(tb.hosts[2].underlay_ip + ":")))
                await asyncio.sleep(0.2)

        async def flood():
            watcher = asyncio.ensure_future(watch())
            results = []
            try:
                for wave in range(3):  # faster than the accept rate allows, and again once it refilled
                    results += await asyncio.gather(*(fake_router(100 * wave + i) for i in range(100)))
                    await asyncio.sleep(1)
            finally:
                watcher.cancel()
            return [r[0] for r in results]

        results = asyncio.run(flood())
        assert 0 < sum(r == "joined" for r in results) <= 3 * 4
        assert max(from_stranger) <= 4, f"{max(from_stranger)} routers from one address in the peer table"
        status = tb.status(h1)
        assert status["refused"]["connection_rate"] > 0
        assert status["refused"]["peers_from_address"] > 0
        # Those that got in never sent a data-path heartbeat: they do not stay.
        tb.wait_for(lambda: {p["name"] for p in tb.status(h1)["peers"]} == {tb.hosts[1].netns},
                    timeout=4 * 1 + 5, what="the fake routers dropped from the peer table")
        check_survived(tb, args)


def test_floods_before_authentication_stay_bounded(testbed_factory, open_files):
    """With a secret: 300 connections that each announce a 1 MiB message, 2,000
    that say nothing, and hellos with every kind of bad field."""
    with testbed_factory(hosts=3) as tb:
        h1 = tb.hosts[0]
        args = start(tb, secret=True)

        async def huge_message(reader, writer):
            writer.write((1 << 20).to_bytes(4, "big") + b"x" * 65536)
            await writer.drain()
            return await reader.read(4096)

        async def idle(reader, writer):
            return await reader.read(4096)   # until the router closes it

        async def flood():
            big = await stranger_connections(tb, h1, 300, huge_message)
            quiet = await stranger_connections(tb, h1, 2000, idle)
            return big, quiet

        peak = {"rss": 0, "fds": 0}

        async def watch():
            while True:
                peak["rss"] = max(peak["rss"], rss_kb(h1.router.pid))
                peak["fds"] = max(peak["fds"], open_fds(h1.router.pid))
                await asyncio.sleep(0.05)

        async def flood_watched():
            watcher = asyncio.ensure_future(watch())
            try:
                return await flood()
            finally:
                watcher.cancel()

        big, quiet = asyncio.run(flood_watched())
        print(f"during the flood: at most {peak['rss'] // 1024} MB resident, {peak['fds']} fds")
        assert peak["rss"] < RSS_LIMIT_KB and peak["fds"] < FD_LIMIT, peak
        status = tb.status(h1)
        refused = status["refused"]
        assert refused["connection_rate"] + refused["unauthenticated_connections"] \
            + refused["unauthenticated_from_source"] > 2000, refused
        assert status["unauthenticated_connections"] == 0
        check_survived(tb, args)


BAD_HELLOS = [
    ({"peer_id": 0}, "peer_id must be an integer from 1 to 4294967295, got 0"),
    ({"peer_id": 2**32}, "peer_id must be an integer from 1 to 4294967295, got 4294967296"),
    ({"peer_id": -5}, "peer_id must be an integer from 1 to 4294967295, got -5"),
    ({"peer_id": 7.5}, "peer_id must be an integer from 1 to 4294967295, got 7.5"),
    ({"peer_id": True}, "peer_id must be an integer from 1 to 4294967295, got True"),
    ({"port": 70000}, "port must be an integer from 1 to 65535, got 70000"),
    ({"name": "x" * 3000}, "name must be 1 to 64 letters, digits or . _ - : @ +, got 'xxxx"),
    ({"name": "a\nb"}, "name must be 1 to 64 letters"),
    ({"versions": [0, 300]}, "versions must be [lowest, highest] from 1 to 255"),
    ({"versions": [3, 2]}, "versions must be [lowest, highest] from 1 to 255"),
    ({"public": "zz" * 32}, "public must be 64 lowercase hex digits"),
    ({"ciphers": []}, "ciphers must be a list of 1 to 8 names"),
    ({"type": "helo"}, "expected 'hello' during the handshake, got 'helo'"),
    ({"name": "y" * (1 << 20)}, "exceeds the limit of 4096"),
]


def test_each_bad_hello_field_is_refused_with_its_reason(testbed_factory):
    with testbed_factory(hosts=3) as tb:
        h1 = tb.hosts[0]
        start(tb, secret=False)
        good = {"type": "hello", "protocol": "weavefast", "versions": [2, 2], "auth": "none",
                "nonce": "00" * 16, "public": "11" * 32, "ciphers": ["chacha20-poly1305"],
                "name": "stranger", "peer_id": 4242, "port": 6783, "incarnation": "22" * 8}

        async def send_hello(fields):
            async def exchange(reader, writer):
                body = json.dumps({**good, **fields}).encode()
                # The length says it all: a body over the limit is refused before it is read
                # (sending it whole would only make the router's close a reset).
                writer.write(len(body).to_bytes(4, "big") + body[:protocol.MAX_HANDSHAKE_MESSAGE])
                replies = []
                while True:
                    head = await reader.read(4)
                    if len(head) < 4:
                        return replies
                    replies.append(json.loads(await reader.readexactly(int.from_bytes(head, "big"))))
            [result] = await stranger_connections(tb, h1, 1, exchange)
            return result

        for fields, reason in BAD_HELLOS:
            replies = asyncio.run(send_hello(fields))
            errors = [m["reason"] for m in replies if m["type"] == "error"]
            assert errors and reason in errors[-1], (fields if len(str(fields)) < 200 else list(fields), replies)
            assert len(errors[-1]) < 400, "the refusal quotes the whole input back"
            asyncio.run(asyncio.sleep(0.1))   # within the stranger's accept rate
        assert "Traceback" not in h1.router.output()
        assert len(h1.router.output()) < 20_000


def test_oversized_gossip_after_the_handshake_is_refused(testbed_factory):
    """Without a secret a stranger may complete the handshake; what it then sends
    is checked all the same."""
    with testbed_factory(hosts=3) as tb:
        h1 = tb.hosts[0]
        args = start(tb, secret=False)
        me = protocol.Identity("gossiper", 777, 6783, os.urandom(8).hex())

        async def gossip(reader, writer):
            channel = protocol.Channel(reader, writer)
            await protocol.handshake(channel, me, None, True)
            channel.send({"type": "gossip", "peers": [], "links": [
                {"peer_id": 5, "name": "n" * 900_000, "version": 1, "links": []}]})
            try:
                while True:
                    await channel.read()
            except (asyncio.IncompleteReadError, ConnectionError):
                return "closed"

        [result] = asyncio.run(stranger_connections(tb, h1, 1, gossip))
        assert result == "closed"
        assert tb.status(h1)["refused"]["invalid_message"] == 1
        assert "gossip link state: name must be 1 to 64" in h1.router.output()
        check_survived(tb, args)


def test_a_live_peer_identity_cannot_be_taken_over(testbed_factory):
    """Without a secret, a stranger that claims h2's name and peer id while h2 is
    alive is refused, and h1 keeps talking to the real h2."""
    with testbed_factory(hosts=3) as tb:
        h1, h2, _ = tb.hosts
        args = start(tb, secret=False)
        real = next(p for p in tb.status(h1)["peers"] if p["name"] == h2.netns)
        me = protocol.Identity(h2.netns, real["peer_id"], 6783, os.urandom(8).hex())

        async def impostor(reader, writer):
            try:
                await protocol.handshake(protocol.Channel(reader, writer), me, None, True)
            except protocol.HandshakeError as exc:
                return exc.reason
            return "accepted"

        [reason] = asyncio.run(stranger_connections(tb, h1, 1, impostor))
        assert reason == (f"{h2.netns} (peer id {real['peer_id']}) is connected from {h2.underlay_ip}; "
                          f"another one from {tb.hosts[2].underlay_ip} is refused while that one answers")
        peer = next(p for p in tb.status(h1)["peers"] if p["name"] == h2.netns)
        assert peer["state"] == "established" and peer["endpoint"].startswith(h2.underlay_ip + ":")
        check_survived(tb, args)


def test_a_flood_of_status_api_connections_stays_bounded(testbed_factory, open_files):
    with testbed_factory(hosts=3) as tb:
        h1 = tb.hosts[0]
        args = start(tb, secret=False)
        threads_before = len(os.listdir(f"/proc/{h1.router.pid}/task"))
        clients = []
        try:
            for _ in range(1000):   # connect and say nothing, as a slow client would
                sock = tb.socket(h1, socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(5)
                sock.connect(("127.0.0.1", testbed.STATUS_PORT))
                clients.append(sock)
            threads = len(os.listdir(f"/proc/{h1.router.pid}/task"))
            assert threads <= threads_before + 16 + 2, f"{threads} threads for {len(clients)} idle clients"
            assert rss_kb(h1.router.pid) < RSS_LIMIT_KB and open_fds(h1.router.pid) < FD_LIMIT
        finally:
            for sock in clients:
                sock.close()
        status = tb.wait_for(lambda: tb.status(h1), what="the status API after the flood")
        assert status["status_api_turned_away"] > 900
        check_survived(tb, args)
