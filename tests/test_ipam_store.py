"""Address blocks in a real etcd, through the plugin's real socket, without dockerd.

Three `weavefast plugin --store` processes stand for three hosts (each its own name,
socket and state directory) beside a real etcd in one simulated host's namespace;
they are called the way dockerd calls them (dockerenv.plugin_call).
"""
import ipaddress
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from dataplane import testbed
from dockerenv import plugin_call, wait_for_socket
from etcdenv import Etcd, etcd_unavailable

pytestmark = pytest.mark.root

SUBNET = "10.50.0.0/24"  # four /26 blocks
BLOCK_SIZE = 64


class HostPlugin:
    def __init__(self, tb, workdir, name, store_url, grace=3600):
        self.tb, self.name, self.store_url, self.grace = tb, name, store_url, grace
        self.socket = workdir / f"{name}.sock"
        self.state_dir = workdir / f"{name}-state"
        self.start()

    def start(self):
        self.process = self.tb.start(self.tb.hosts[0], [
            sys.executable, "-m", "dataplane", "plugin", "--socket", str(self.socket),
            "--state-dir", str(self.state_dir), "--name", self.name, "--store", self.store_url,
            "--block-grace", str(self.grace), "--log-level", "debug",
            # no dockerd here: none of the machine's is touched
            "--docker-host", f"unix://{self.socket.parent}/docker.sock"],
            name=f"{self.tb.prefix}-{self.name}")
        wait_for_socket(self.socket, self.process)

    def stop(self):
        assert self.process.stop() == 0, self.process.output()[-3000:]
        self.tb.processes.remove(self.process)

    def call(self, method, body):
        status, answer = plugin_call(self.socket, method, body)
        assert status == 200, answer
        return answer

    def pool(self, subnet=SUBNET):
        answer = self.call("IpamDriver.RequestPool", {"AddressSpace": "WeavefastLocal",
                                                      "Pool": subnet, "V6": False})
        return answer["PoolID"]

    def addresses(self, pool, count):
        """`count` addresses, or fewer and the error that stopped them."""
        got = []
        for _ in range(count):
            answer = self.call("IpamDriver.RequestAddress", {"PoolID": pool})
            if "Error" in answer:
                return got, answer["Error"]
            got.append(answer["Address"].split("/")[0])
        return got, None


@pytest.fixture(scope="module")
def env():
    reason = etcd_unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="wfs"))
    tb = testbed.Testbed(hosts=2, prefix=testbed.unique_prefix("wfs"))
    try:
        yield tb, workdir, Etcd(tb, tb.hosts[0], workdir)
    finally:
        tb.close()
        shutil.rmtree(workdir)
        left = tb.leftovers()
        assert not any(left.values()), left


@pytest.fixture
def hosts(env):
    tb, workdir, etcd = env
    if not etcd.process.alive():
        etcd.start()
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    started = []

    def start(name, **kwargs):
        started.append(HostPlugin(tb, run_dir, name, etcd.url, **kwargs))
        return started[-1]

    yield start
    for plugin in started:
        if plugin.process in tb.processes:
            plugin.stop()
    store_cli(tb, etcd, "-c", "from dataplane.store import EtcdStore; "
                              f"EtcdStore({etcd.url!r}).delete_prefix('/weavefast/')")


def store_cli(tb, etcd, *argv):
    return tb.run(tb.hosts[0], [sys.executable, *argv], check=False)


def ipam(tb, etcd, *args):
    return store_cli(tb, etcd, "-m", "dataplane", "ipam", *args, "--store", etcd.url,
                     "--status-addr", "127.0.0.1:1")


def block_of(address):
    return ipaddress.ip_network(f"{address}/26", strict=False)


def test_hosts_share_a_subnet_by_blocks_and_never_hand_out_an_address_twice(env, hosts):
    tb, _, etcd = env
    h1, h2, h3 = hosts("h1"), hosts("h2"), hosts("h3")
    pools = {h: h.pool() for h in (h1, h2, h3)}

    got1, error1 = h1.addresses(pools[h1], 70)  # more than one block
    got2, error2 = h2.addresses(pools[h2], 30)
    got3, error3 = h3.addresses(pools[h3], 100)  # the last free block, then no more

    assert (error1, error2) == (None, None)
    all_addresses = got1 + got2 + got3
    assert len(all_addresses) == len(set(all_addresses)) == 70 + 30 + len(got3)
    owners = {}
    for host, got in (("h1", got1), ("h2", got2), ("h3", got3)):
        for address in got:
            assert owners.setdefault(block_of(address), host) == host, address
    assert sorted(owners.values()) == ["h1", "h1", "h2", "h3"]
    assert "every block of 10.50.0.0/24 is held by some host" in error3
    shown = ipam(tb, etcd).stdout
    assert "h1  10.50.0.0/24  2 block(s)" in shown and "h3  10.50.0.0/24  1 block(s)" in shown


def test_a_restarted_plugin_keeps_its_blocks_and_addresses(env, hosts):
    h1 = hosts("h1")
    pool = h1.pool()
    before, _ = h1.addresses(pool, 3)
    h1.stop()
    h1.start()
    after, error = h1.addresses(pool, 3)
    assert error is None and not set(before) & set(after)
    assert {block_of(a) for a in before + after} == {block_of(before[0])}


def test_store_outage_delays_new_blocks_only(env, hosts):
    tb, _, etcd = env
    h1, h2 = hosts("h1"), hosts("h2")
    pool1, pool2 = h1.pool(), h2.pool()
    first, _ = h1.addresses(pool1, 1)

    etcd.stop()
    inside, error = h1.addresses(pool1, BLOCK_SIZE)  # the rest of its block, then a new one
    assert len(inside) == BLOCK_SIZE - 2  # .0 is the subnet's network address
    assert "cannot claim an address block" in error and "unreachable" in error
    assert "once the store is back" in error

    etcd.start()
    more, error = h1.addresses(pool1, 1)
    theirs, error2 = h2.addresses(pool2, 5)
    assert (error, error2) == (None, None)
    everything = first + inside + more + theirs
    assert len(everything) == len(set(everything))


def test_address_asked_for_by_value_must_not_be_in_another_hosts_block(env, hosts):
    h1, h2 = hosts("h1"), hosts("h2")
    pool1, pool2 = h1.pool(), h2.pool()
    mine, _ = h1.addresses(pool1, 1)
    answer = h2.call("IpamDriver.RequestAddress", {"PoolID": pool2, "Address": mine[0]})
    assert f"address {mine[0]} is in block {block_of(mine[0])} of host h1" in answer["Error"]
    free_block_address = "10.50.0.200"
    assert h2.call("IpamDriver.RequestAddress",
                   {"PoolID": pool2, "Address": free_block_address})["Address"].startswith(
        free_block_address)


def test_rmpeer_gives_a_gone_hosts_blocks_back_once(env, hosts):
    tb, _, etcd = env
    h1, h2 = hosts("h1"), hosts("h2")
    h1.addresses(h1.pool(), 70)
    h1.stop()

    first, second = ipam(tb, etcd, "rmpeer", "h1"), ipam(tb, etcd, "rmpeer", "h1")
    assert "h1: gave back 2 block(s)" in first.stdout, first.stderr
    assert "h1: gave back 0 block(s)" in second.stdout
    got, error = h2.addresses(h2.pool(), 4 * (BLOCK_SIZE - 1) - 2)  # the whole subnet now
    assert error is None, error


def test_an_empty_block_goes_back_after_the_grace_time(env, hosts):
    tb, _, etcd = env
    h1 = hosts("h1", grace=1)
    pool = h1.pool()
    got, _ = h1.addresses(pool, 1)
    assert "h1  10.50.0.0/24  1 block(s)" in ipam(tb, etcd).stdout
    h1.call("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": got[0]})
    deadline = __import__("time").monotonic() + 10
    while "h1" in ipam(tb, etcd).stdout:
        assert __import__("time").monotonic() < deadline, "the empty block was never given back"
        __import__("time").sleep(0.5)


def test_a_store_with_credentials(env):
    """etcd with authentication on (its own etcd, on the second host's loopback)."""
    tb, workdir, _ = env
    host = tb.hosts[1]
    etcd = Etcd(tb, host, workdir / "auth")
    enable_auth = ("from dataplane.store import EtcdStore; "
                   f"s = EtcdStore({etcd.url!r}); "
                   "s.call('auth/user/add', {'name': 'root', 'password': 'sesame'}); "
                   "s.call('auth/user/grant', {'user': 'root', 'role': 'root'}); "
                   "s.call('auth/enable', {})")
    tb.run(host, [sys.executable, "-c", enable_auth])
    try:
        def ipam_show(url):
            return tb.run(host, [sys.executable, "-m", "dataplane", "ipam", "--store", url,
                                 "--status-addr", "127.0.0.1:1"], check=False)

        anonymous = ipam_show(etcd.url)
        assert anonymous.returncode == 1 and "weavefast ipam: etcd 127.0.0.1:2379 refused" \
            in anonymous.stderr, anonymous.stderr
        assert len(anonymous.stderr.strip().splitlines()) == 1
        wrong = ipam_show("etcd://root:guess@127.0.0.1:2379")
        assert "user 'root' cannot log in" in wrong.stderr, wrong.stderr
        allowed = ipam_show("etcd://root:sesame@127.0.0.1:2379")
        assert allowed.returncode == 0 and "store 127.0.0.1:2379:" in allowed.stdout, allowed.stderr
    finally:
        etcd.stop()


def test_a_store_over_tls_with_a_client_certificate(env):
    """etcd that accepts only TLS clients with a certificate of its CA."""
    tb, workdir, _ = env
    host = tb.hosts[1]
    etcd = Etcd(tb, host, workdir / "tls", tls=True)
    try:
        def ipam_show(url):
            return tb.run(host, [sys.executable, "-m", "dataplane", "ipam", "--store", url,
                                 "--status-addr", "127.0.0.1:1"], check=False)

        with_certificate = ipam_show(etcd.url)
        assert with_certificate.returncode == 0, with_certificate.stderr
        assert "store 127.0.0.1:2379:" in with_certificate.stdout
        ca_only = etcd.url.split("&")[0]  # the server is trusted, but we show no certificate
        refused = ipam_show(ca_only)
        assert refused.returncode == 1 and "unreachable" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        etcd.stop()
