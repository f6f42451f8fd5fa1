"""Membership through the cluster store: routers with `--store etcd://...` and no `--peer`
find each other in a real etcd (on the first simulated host's underlay address), keep
the mesh when the store is away, come back to it, and ignore what does not belong there.

The last test checks the parsing and validation of store entries without root.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from dataplane.control import discovery
from dataplane.control.errors import ProtocolError
from dataplane.errors import RouterError
from etcdenv import Etcd, etcd_unavailable

IFA_F_NODAD = 0x02
UNDERLAY6 = "fd48::{}"  # host h3 registers its IPv6 address: the store carries both families
BAD_ENTRIES = {  # key suffix -> value (Python source): each ignored, counted once, logged once
    "9001": "'not json'",
    "9002": "json.dumps({'name': 'big', 'peer_id': 9002, 'host': '10.47.0.9', 'port': 6783, "
            "'pad': 'x' * 200_000})",  # larger than a watch message may be, too
    "9003": "json.dumps({'name': 'mismatch', 'peer_id': 9999, 'host': '10.47.0.9', 'port': 1})",
    "9004": "json.dumps({'name': 'loop', 'peer_id': 9004, 'host': '127.0.0.1', 'port': 6783})",
    "9005": "json.dumps({'name': 'port', 'peer_id': 9005, 'host': '10.47.0.9', 'port': '6783'})",
    "9006": "json.dumps(['a', 'list'])",
    "not-a-peer-id": "json.dumps({'name': 'x', 'peer_id': 1, 'host': '10.47.0.9', 'port': 1})",
}


def store_script(etcd, code):
    """Python run in the etcd host's namespace with `store` (an EtcdStore) and `prefix`."""
    return [sys.executable, "-c",
            "import json, sys\nfrom dataplane.store import EtcdStore\n"
            f"store = EtcdStore({etcd.url!r})\nprefix = {discovery.ROUTERS_PREFIX!r}\n" + code]


def registered(tb, etcd):
    """{peer id: value} of the routers registered in the store."""
    out = tb.run(etcd.host, store_script(etcd, "print(json.dumps(store.get_prefix(prefix)))")).stdout
    return {key[len(discovery.ROUTERS_PREFIX):]: json.loads(value)
            for key, (value, _) in json.loads(out).items()}


def membership(tb, host):
    return tb.status(host)["membership"]


def wait_mesh(tb, hosts, timeout=30.0):
    """Every router of `hosts` shows every other one established."""
    states = {}

    def full():
        for host in hosts:
            states[host.name] = {p["name"]: p["state"] for p in tb.status(host)["peers"]}
        return all(states[h.name].get(o.netns) == "established"
                   for h in hosts for o in hosts if o is not h)
    try:
        tb.wait_for(full, timeout=timeout, what="a full mesh through the store")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; peer states: {states}") from None


def pings(tb, pairs):
    for src, dst in pairs:
        result = tb.ping(src, dst.ip4, count=2, interval=0.2)
        assert result.ok, f"{src.name} -> {dst.name}: {result.output}"


def start_router(tb, host, etcd):
    extra = ["--store", etcd.url]
    if host.name == "h3":
        extra += ["--advertise-address", UNDERLAY6.format(host.index)]
    tb.start_router(host, peers=[], extra_args=extra, wait=False)


@pytest.fixture(scope="module")
def env(testbed_factory):
    reason = etcd_unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="wfm"))
    try:
        with testbed_factory(hosts=4, containers_per_host=1, overlay_mtu=1394) as tb:
            for host in tb.hosts:
                with IPRoute(netns=host.netns) as ipr:
                    ipr.addr("add", index=ipr.link_lookup(ifname="ul0")[0],
                             address=UNDERLAY6.format(host.index), prefixlen=64,
                             flags=IFA_F_NODAD)
            etcd = Etcd(tb, tb.hosts[0], workdir, ip=tb.hosts[0].underlay_ip)
            for host in tb.hosts[:3]:  # the fourth joins later (test 2)
                start_router(tb, host, etcd)
            for host in tb.hosts[:3]:
                tb.wait_ready(host)
            yield tb, etcd
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.root
def test_routers_with_a_store_and_no_peer_form_a_full_mesh(env):
    tb, etcd = env
    hosts = tb.hosts[:3]
    wait_mesh(tb, hosts)
    c1, c2, c3, _ = tb.containers
    pings(tb, [(c1, c2), (c2, c3), (c3, c1)])
    found = registered(tb, etcd)
    assert {v["name"] for v in found.values()} == {h.netns for h in hosts}
    h3 = next(v for v in found.values() if v["name"] == tb.hosts[2].netns)
    assert h3["host"] == UNDERLAY6.format(3)  # --advertise-address, IPv6
    assert next(v for v in found.values() if v["name"] == tb.hosts[0].netns)["host"] == \
        tb.hosts[0].underlay_ip  # the default: the source address toward the store
    for host in hosts:
        m = membership(tb, host)
        assert m["state"] == "registered" and m["routers"] == 2, m
        assert not [d for d in tb.status(host)["degradations"] if d["what"] == "membership store"]


@pytest.mark.root
def test_store_away_keeps_the_mesh_and_it_comes_back(env):
    tb, etcd = env
    hosts = tb.hosts[:3]
    c1, c2, c3, c4 = tb.containers
    etcd.stop()
    try:
        for host in hosts:
            tb.wait_for(lambda: membership(tb, host)["state"] == "unreachable", timeout=15,
                        what=f"{host.name} to see the store away")
        for host in hosts:
            status = tb.status(host)
            assert "membership store" in [d["what"] for d in status["degradations"]], status
            assert all(p["state"] == "established" for p in status["peers"]), status["peers"]
        shown = tb.run(hosts[0], [sys.executable, "-m", "dataplane", "status"]).stdout
        assert "DEGRADED: membership store" in shown and "UNREACHABLE" in shown, shown
        pings(tb, [(c1, c2), (c2, c3), (c3, c1)])
    finally:
        if not etcd.process.alive():
            etcd.start()
    for host in hosts:
        tb.wait_for(lambda: membership(tb, host)["state"] == "registered", timeout=20,
                    what=f"{host.name} registered again")
    assert {v["name"] for v in registered(tb, etcd).values()} == {h.netns for h in hosts}
    assert "membership store" not in [d["what"] for d in tb.status(hosts[0])["degradations"]]
    # a key that goes while its router runs (a lost lease, a hand) is written again
    h2_key = str(tb.status(hosts[1])["peer_id"])
    tb.run(etcd.host, store_script(etcd, f"store.delete(prefix + {h2_key!r})"))
    tb.wait_for(lambda: h2_key in registered(tb, etcd), timeout=10, what="h2's key again")

    # a router started now joins through the store alone
    start_router(tb, tb.hosts[3], etcd)
    tb.wait_ready(tb.hosts[3])
    wait_mesh(tb, tb.hosts)
    pings(tb, [(c4, c1), (c3, c4)])

    # a clean stop revokes the lease: the key is gone once the router has exited, not
    # when the lease would end
    assert tb.hosts[3].router.stop() == 0, tb.hosts[3].router.output()[-3000:]
    assert tb.hosts[3].netns not in {v["name"] for v in registered(tb, etcd).values()}


@pytest.mark.root
def test_malformed_entries_are_ignored_counted_and_logged_once(env):
    tb, etcd = env
    hosts = [h for h in tb.hosts if h.router is not None and h.router.alive()]
    before = {h.name: membership(tb, h)["rejected"] for h in hosts}
    puts = "".join(f"store.put(prefix + {k!r}, {v})\n" for k, v in BAD_ENTRIES.items())
    try:
        tb.run(etcd.host, store_script(etcd, puts))
        for host in hosts:
            tb.wait_for(lambda: membership(tb, host)["rejected"] - before[host.name]
                        >= len(BAD_ENTRIES), timeout=10, what=f"{host.name} to ignore them")
        # a new value is a new entry: counted, but the key is not logged again
        tb.run(etcd.host, store_script(etcd, f"store.put(prefix + '9001', 'still not json')\n"))
        for host in hosts:
            tb.wait_for(lambda: membership(tb, host)["rejected"] - before[host.name]
                        == len(BAD_ENTRIES) + 1, timeout=10, what=f"{host.name}: one more")
            status = tb.status(host)
            assert status["membership"]["routers"] == len(hosts) - 1, status["membership"]
            states = {p["name"]: p["state"] for p in status["peers"]}
            assert all(states[o.netns] == "established" for o in hosts if o is not host), states
            assert not any(p["peer_id"] in (9001, 9002, 9003, 9004, 9005, 9006, 9999)
                           for p in status["peers"])
            log = host.router.output()
            for key in BAD_ENTRIES:
                assert log.count(f"ignored '{discovery.ROUTERS_PREFIX}{key}'") == 1, log[-3000:]
        c1, c2 = tb.containers[:2]
        pings(tb, [(c1, c2)])
    finally:
        tb.run(etcd.host, store_script(etcd, "".join(
            f"store.delete(prefix + {k!r})\n" for k in BAD_ENTRIES)), check=False)


@pytest.mark.root
def test_no_address_to_advertise_is_a_startup_error_naming_the_flag(env):
    tb, etcd = env
    host = tb.hosts[3]  # its router was stopped by the test before: nothing runs there
    result = tb.run(host, [sys.executable, "-m", "dataplane", "router", "--name", "x",
                           "--store", "etcd://127.0.0.1:2379"], check=False, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "give --advertise-address HOST" in result.stderr, result.stderr


# -- without root -------------------------------------------------------------------------

def entry(**fields):
    value = {"name": "h2", "peer_id": 42, "host": "10.0.0.2", "port": 6783} | fields
    return json.dumps(value).encode()


def key(suffix="42"):
    return (discovery.ROUTERS_PREFIX + suffix).encode()


def test_entries_are_parsed_and_validated_like_gossip():
    assert discovery.parse_entry(key(), entry()) == discovery.RouterEntry(42, "h2", "10.0.0.2",
                                                                          6783)
    six = discovery.parse_entry(key(), entry(host="FD00:0::2"))
    assert six.host == "fd00::2"
    assert discovery.parse_entry(key(), entry(host="::ffff:10.0.0.2")).host == "10.0.0.2"
    me = discovery.RouterEntry(7, "me", "fd00::7", 6783)
    assert discovery.parse_entry(key("7"), discovery.entry_value(me).encode()) == me
    bad = [
        (key(), b"\xff\xfe"),
        (key(), b"[1, 2]"),
        (key(), entry(peer_id=43)),
        (key(), entry(peer_id=True)),
        (key("042"), entry()),
        (key("x"), entry()),
        (key("42" * 20), entry()),
        (b"/weavefast/other/42", entry()),
        (key(), entry(name="bad name!")),
        (key(), entry(name="n" * 65)),
        (key(), entry(host="0.0.0.0")),
        (key(), entry(host="224.0.0.1")),
        (key(), entry(host="127.0.0.1")),
        (key(), entry(host="::1")),
        (key(), entry(host="router.example")),
        (key(), entry(host=["10.0.0.2"])),
        (key(), entry(port=0)),
        (key(), entry(port=65536)),
        (key(), entry(port=6783.0)),
        (key(), entry(pad="x" * discovery.MAX_ENTRY_BYTES)),
        (key(), entry() + b" " * discovery.MAX_ENTRY_BYTES),
    ]
    for k, v in bad:
        with pytest.raises(ProtocolError):
            discovery.parse_entry(k, v)


class FakeLoop:
    def call_soon_threadsafe(self, function, *args):
        function(*args)

    def call_later(self, *args):
        pass


class FakeStore:
    endpoints, timeout, display = [("127.0.0.1", 2379)], 1.0, "127.0.0.1:2379"


def test_discovery_bounds_counts_and_hands_routers_to_the_mesh():
    learned = []
    me = discovery.RouterEntry(1, "me", "10.0.0.1", 6783)
    d = discovery.StoreDiscovery(FakeStore(), me, max_peers=2)
    d._loop, d._learn = FakeLoop(), lambda *args: learned.append(args)
    d._put(key("2"), entry(peer_id=2, name="two", host="fd00::2"), 5)
    d._put(key("2"), entry(peer_id=2, name="two", host="fd00::2"), 6)  # unchanged: once
    d._put(key("3"), entry(peer_id=3, name="three"), 7)
    d._put(key("4"), entry(peer_id=4, name="four"), 8)  # over the cap
    d._put(key("1"), entry(peer_id=1, name="me"), 9)  # our own key: ours to write
    d._put(key("5"), b"junk", 10)
    d._put(key("5"), b"junk", 10)  # the same entry again (a listing): counted once
    d._put(key("5"), b"junk again", 11)
    assert learned == [(2, "two", "fd00::2", 6783), (3, "three", "10.0.0.2", 6783)]
    assert d.rejected == 3 and len(d.entries) == 2
    # a deleted key leaves the table, never the mesh
    d._event({"type": "DELETE", "kv": {"key": "L3dlYXZlZmFzdC9yb3V0ZXJzLzI=", "mod_revision": "12"}})
    assert len(d.entries) == 1 and d.revision == 12
    assert d.status()["state"] == "registering" and d.degradations() == []
    d._set_error("registration", "etcd 127.0.0.1:2379 unreachable")
    assert d.status()["state"] == "unreachable"
    assert [x["what"] for x in d.degradations()] == ["membership store"]


def test_advertise_address():
    class Store:
        endpoints = [("127.0.0.1", 2379)]
    assert discovery.advertise_address(Store(), "fd00::5") == "fd00::5"
    assert discovery.advertise_address(Store(), "192.0.2.7") == "192.0.2.7"
    for given in ("127.0.0.1", "::", "224.0.0.1"):
        with pytest.raises(ValueError, match="--advertise-address"):
            discovery.advertise_address(Store(), given)
    # a store on loopback says nothing of the address other hosts reach
    with pytest.raises(ValueError, match="give --advertise-address"):
        discovery.advertise_address(Store())


def test_advertise_address_needs_a_store():
    from argparse import Namespace

    from dataplane.router import membership_from_args
    args = Namespace(store=None, advertise_address="192.0.2.7")
    with pytest.raises(RouterError, match="--store"):
        membership_from_args(args, None)
