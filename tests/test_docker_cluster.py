"""Addresses and names across hosts, as a Docker user sees them: three simulated hosts,
each with a real dockerd and `weavefast router --plugin --store etcd://...`, and a real
etcd on the first host's underlay address.

The engines and routers are shared by the module; every test removes its containers
and networks (the ready-made network `weavefast` stays, as on a real host).
"""
import sys
import tempfile
from pathlib import Path

import pytest

from dataplane import testbed
from dataplane.dns import DEFAULT_DNS_ADDRESS
from dockerenv import IMAGE, DockerEngine, busybox_rootfs_tar, close_all, docker_unavailable
from etcdenv import Etcd, etcd_unavailable

pytestmark = [pytest.mark.root, pytest.mark.docker]

CONTAINERS = 20
BLOCK_GRACE = 2  # seconds, so that the test sees empty blocks go back
# Weave's 10.32.0.0/12 holds the testbed's underlay (10.47.0.0/24), which dockerd refuses
SUBNET = "10.32.0.0/13"


@pytest.fixture(scope="module")
def cluster():
    reason = docker_unavailable() or etcd_unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="wfc"))  # short: dockerd's socket paths are limited
    tb = testbed.Testbed(hosts=3, prefix=testbed.unique_prefix("wfc"))
    engines = []
    try:
        etcd = Etcd(tb, tb.hosts[0], workdir, ip=tb.hosts[0].underlay_ip)
        rootfs = busybox_rootfs_tar(workdir / "rootfs.tar")
        for host in tb.hosts:
            engines.append(DockerEngine(tb, host, workdir / host.name, dns=DEFAULT_DNS_ADDRESS,
                                        plugin="router", peers=[h for h in tb.hosts if h is not host],
                                        plugin_args=["--store", etcd.url, "--subnet", SUBNET,
                                                     "--block-grace", str(BLOCK_GRACE)]))
            engines[-1].docker("import", "-c", 'CMD ["sh"]', str(rootfs), IMAGE)
        tb.wait_connected()
        yield tb, etcd, engines
    finally:
        close_all(tb, engines, workdir)


@pytest.fixture
def hosts(cluster):
    tb, etcd, engines = cluster
    yield engines
    if not etcd.process.alive():
        etcd.start()
    for engine in engines:
        containers = engine.docker("ps", "-aq").stdout.split()
        if containers:
            engine.docker("rm", "-f", *containers)
        for network in engine.docker("network", "ls", "-q", "--filter",
                                     "driver=weavefast").stdout.split():
            if engine.docker("network", "inspect", "-f", "{{.Name}}",
                             network).stdout.strip() != "weavefast":
                engine.docker("network", "rm", network)


def run(engine, name, network, *options):
    engine.docker("run", "-d", "--name", name, "--network", network, *options, IMAGE,
                  "sleep", "600")


def address(engine, container, network):
    template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return engine.docker("inspect", "-f", template, container).stdout.strip()


def sh(engine, container, command, check=False, timeout=60):
    return engine.docker("exec", container, "sh", "-c", command, check=check, timeout=timeout)


def unreachable(engine, container, targets):
    """The targets (names or addresses) a container cannot ping (one ping each, in one exec)."""
    script = "; ".join(f"ping -c 1 -W 3 {t} >/dev/null 2>&1 || echo {t}" for t in targets)
    return sh(engine, container, script, timeout=120).stdout.split()


def router_status(engine):
    return engine.tb.status(engine.host)["plugin"]


def used_addresses(engine):
    return sum(b["used"] for blocks in router_status(engine)["blocks"].values() for b in blocks)


def ipam_line(engine, etcd, host_engine):
    """What `weavefast ipam` on `engine`'s host says of `host_engine`'s host."""
    shown = engine.tb.run(engine.host, [sys.executable, "-m", "dataplane", "ipam",
                                        "--store", etcd.url]).stdout
    return next((line.strip() for line in shown.splitlines()
                 if line.split()[0] == host_engine.host.netns), None)


def wait_for_records(engine, count):
    """Names reach the store, and the other hosts, within a second or so."""
    engine.tb.wait_for(lambda: router_status(engine)["names"]["records"] == count,
                       what=f"{count} name records on {engine.host.name}")


def test_networks_without_options_give_every_container_its_own_address_and_name(cluster, hosts):
    etcd = cluster[1]
    for engine in hosts:  # the router made it ready on every host
        engine.tb.wait_for(lambda: "weavefast" in engine.docker(
            "network", "ls", "--format", "{{.Name}}").stdout, what="the ready-made network")
        engine.docker("network", "create", "-d", "weavefast", "--ipam-driver", "weavefast",
                      "wfnet")
    gateways = [used_addresses(engine) for engine in hosts]
    names = [f"c{i}" for i in range(CONTAINERS)]
    for i, name in enumerate(names):
        alias = ("--network-alias", "www") if name == "c1" else ()
        run(hosts[i % 3], name, "wfnet" if i % 4 else "weavefast", *alias)
    addresses = {}
    for i, name in enumerate(names):
        network = "wfnet" if i % 4 else "weavefast"
        addresses[name] = address(hosts[i % 3], name, network)
    assert len(set(addresses.values())) == CONTAINERS, addresses
    assert all(a.startswith("10.3") for a in addresses.values()), addresses

    for engine in hosts:
        wait_for_records(engine, CONTAINERS)
    for engine, first in zip(hosts, names[:3]):  # one container on each host asks for all
        others = [n for n in names if n != first]
        assert unreachable(engine, first, others) == []
        assert unreachable(engine, first, [addresses[n] for n in others]) == []
    www = sh(hosts[2], "c2", "nslookup www").stdout  # c1's network alias, from another host
    assert f"Address: {addresses['c1']}" in www, www
    lookup = sh(hosts[0], "c0", f"nslookup {addresses['c1']}").stdout  # PTR, across hosts
    assert "c1" in lookup, lookup
    for engine in hosts:  # blocks per host and their use, from the store
        [block] = router_status(engine)["blocks"][SUBNET]
        expected = (f"{engine.host.netns}  {SUBNET}  1 block(s): {block['block']}  "
                    f"({block['used']}/{block['size']} addresses used)")
        engine.tb.wait_for(lambda: ipam_line(hosts[0], etcd, engine) == expected,
                           what=f"weavefast ipam to show {expected!r}")
    live = hosts[1].host.netns
    refused = hosts[0].tb.run(hosts[0].host, [sys.executable, "-m", "dataplane", "ipam", "rmpeer",
                                             live, "--store", etcd.url], check=False)
    assert refused.returncode == 1
    assert f"host {live} is alive (its router holds its lease in the store)" in refused.stderr
    status = hosts[0].tb.run(hosts[0].host, [sys.executable, "-m", "dataplane", "status"]).stdout
    assert f"dns: {DEFAULT_DNS_ADDRESS}, dockerd setting in place" in status, status
    assert "ready-made network weavefast: ready" in status, status

    for i, name in enumerate(names):
        hosts[i % 3].docker("rm", "-f", name)
    for engine, expected in zip(hosts, gateways):  # only the networks' gateways remain
        assert used_addresses(engine) == expected
    run(hosts[0], "probe", "wfnet")
    wait_for_records(hosts[0], 1)  # the probe's own: the others went with their containers
    gone = sh(hosts[0], "probe", "nslookup c5 2>&1; nslookup c6 2>&1").stdout
    assert "can't find c5" in gone and "can't find c6" in gone, gone


def test_losing_the_store_stops_no_traffic_and_no_container_with_room(cluster, hosts):
    tb, etcd, _ = cluster
    run(hosts[0], "before", "weavefast")
    run(hosts[1], "peer", "weavefast")
    target = address(hosts[1], "peer", "weavefast")

    etcd.stop()
    hosts[0].tb.wait_for(lambda: router_status(hosts[0])["store"]["state"] == "unreachable",
                         what="the router to notice the store is gone")
    status = tb.run(hosts[0].host, [sys.executable, "-m", "dataplane", "status"]).stdout
    assert "UNREACHABLE: new address blocks wait for it" in status, status
    assert unreachable(hosts[0], "before", [target]) == []  # forwarding goes on
    run(hosts[0], "during", "weavefast")  # room left in this host's block
    during = address(hosts[0], "during", "weavefast")

    etcd.start()
    hosts[0].tb.wait_for(lambda: router_status(hosts[0])["store"]["state"] == "reachable",
                         what="the router to see the store again")
    run(hosts[2], "after", "weavefast")
    seen = [address(hosts[0], "before", "weavefast"), target, during,
            address(hosts[2], "after", "weavefast")]
    assert len(set(seen)) == len(seen), seen
    wait_for_records(hosts[2], len(seen))
    assert unreachable(hosts[2], "after", ["before", "during", "peer"]) == []


def test_a_container_gets_its_address_back_after_a_dockerd_restart(hosts):
    engine = hosts[1]
    # sleep ignores SIGTERM: a short stop timeout keeps dockerd's shutdown short
    engine.docker("run", "-d", "--name", "keeper", "--restart", "always", "--stop-timeout", "1",
                  "--network", "weavefast", IMAGE, "sleep", "600")
    run(engine, "other", "weavefast")
    before = address(engine, "keeper", "weavefast")
    engine.docker("rm", "-f", "other")  # next in turn is after other's: not keeper's address

    assert engine.stop_dockerd() == 0  # without live-restore: its containers stop
    engine.start_dockerd()

    engine.tb.wait_for(lambda: engine.docker("inspect", "-f", "{{.State.Running}}",
                                             "keeper").stdout.strip() == "true",
                       timeout=60, what="the container to come back")
    assert address(engine, "keeper", "weavefast") == before
    engine.docker("restart", "-t", "0", "keeper")  # and after a plain restart too
    assert address(engine, "keeper", "weavefast") == before
