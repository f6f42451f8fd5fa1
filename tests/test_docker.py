"""The plugin under a real dockerd: what a Docker user types, on simulated hosts.

Each host is a network namespace of a `dataplane.testbed.Testbed` running its own
containerd, dockerd and `weavefast plugin` (tests/dockerenv.py). One engine setup
is shared by the module; every test removes its containers and networks.
"""
import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest

from dataplane import testbed
from dockerenv import IMAGE, DockerEngine, busybox_rootfs_tar, docker_unavailable

pytestmark = [pytest.mark.root, pytest.mark.docker]

SUBNET = "10.32.0.0/16"
TRANSFER_BYTES = 8 << 20


@pytest.fixture(scope="module")
def bed():
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="wfd"))  # short: dockerd's socket paths are limited
    tb = testbed.Testbed(hosts=2, prefix=testbed.unique_prefix("wfd"))
    try:
        yield tb, workdir, busybox_rootfs_tar(workdir / "rootfs.tar")
    finally:
        tb.close()
        shutil.rmtree(workdir)
        left = tb.leftovers()
        assert not any(left.values()), left


def _engine(bed, index):
    tb, workdir, rootfs = bed
    engine = DockerEngine(tb, tb.hosts[index], workdir / tb.hosts[index].name)
    try:
        engine.docker("import", "-c", 'CMD ["sh"]', str(rootfs), IMAGE)
    except BaseException:
        engine.close()
        raise
    return engine


@pytest.fixture(scope="module")
def engine1(bed):
    engine = _engine(bed, 0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def engine2(bed):
    engine = _engine(bed, 1)
    yield engine
    engine.close()


@pytest.fixture
def host1(engine1):
    yield engine1
    remove_all(engine1)


@pytest.fixture
def host2(engine2):
    yield engine2
    remove_all(engine2)


@pytest.fixture(scope="module")
def routers(bed):
    if importlib.util.find_spec("dataplane.router") is None:
        pytest.skip("needs the router (dataplane/router.py)")
    tb, _, _ = bed
    tb.start_routers()


def remove_all(engine):
    containers = engine.docker("ps", "-aq").stdout.split()
    if containers:
        engine.docker("rm", "-f", *containers)
    networks = engine.docker("network", "ls", "-q", "--filter", "driver=weavefast").stdout.split()
    if networks:
        engine.docker("network", "rm", *networks)


def create_network(engine, name, ip_range, subnet=SUBNET, options=()):
    engine.docker("network", "create", "-d", "weavefast", "--ipam-driver", "weavefast",
                  "--subnet", subnet, "--ip-range", ip_range, *options, name)


def run(engine, name, network):
    engine.docker("run", "-d", "--name", name, "--network", network, IMAGE, "sleep", "600")


def sh(engine, container, command, check=True):
    return engine.docker("exec", container, "sh", "-c", command, check=check)


def address(engine, container, network):
    template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return engine.docker("inspect", "-f", template, container).stdout.strip()


def ping(engine, container, ip):
    """Ping from a container; a few seconds of grace for ARP across the overlay."""
    return sh(engine, container, f"ping -c 3 -w 10 {ip}", check=False)


def plugin_ports(engine):
    """The host ends of the plugin's veth pairs and their bridge: {ifname: master}."""
    return {name: master for name, master in engine.links().items() if name.startswith("wfd")}


def test_two_containers_on_one_host_talk_through_the_bridge(host1):
    create_network(host1, "wfdnet", "10.32.1.0/24", options=("-o", "mtu=1400"))
    run(host1, "ca", "wfdnet")
    run(host1, "cb", "wfdnet")

    ip_a, ip_b = address(host1, "ca", "wfdnet"), address(host1, "cb", "wfdnet")
    assert {ip_a, ip_b} == {"10.32.1.2", "10.32.1.3"}  # from this host's range
    links = sh(host1, "ca", "ip -o link show").stdout
    assert "eth0" in links and "eth1" not in links, links  # no docker_gwbridge interface
    assert sh(host1, "ca", "cat /sys/class/net/eth0/mtu").stdout.strip() == "1400"
    assert "default" not in sh(host1, "ca", "ip route").stdout
    assert "docker_gwbridge" not in host1.docker("network", "ls").stdout
    ports = plugin_ports(host1)
    assert len(ports) == 2 and set(ports.values()) == {"weavefast"}, ports
    result = ping(host1, "ca", ip_b)
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout


def test_network_connect_and_disconnect(host1):
    create_network(host1, "wfdfront", "10.32.1.0/24")
    create_network(host1, "wfdback", "10.33.1.0/24", "10.33.0.0/16")
    run(host1, "web", "wfdfront")
    run(host1, "db", "wfdback")
    ip_db = address(host1, "db", "wfdback")
    assert ping(host1, "web", ip_db).returncode != 0  # not connected yet

    host1.docker("network", "connect", "wfdback", "web")
    assert "eth1" in sh(host1, "web", "ip -o link show").stdout
    assert ping(host1, "web", ip_db).returncode == 0
    assert len(plugin_ports(host1)) == 3

    host1.docker("network", "disconnect", "wfdback", "web")
    assert "eth1" not in sh(host1, "web", "ip -o link show").stdout
    assert len(plugin_ports(host1)) == 2  # the disconnected veth is gone


def test_a_plugin_restart_between_two_container_starts_loses_nothing(host1):
    create_network(host1, "wfdnet", "10.32.1.0/24")
    run(host1, "before", "wfdnet")

    assert host1.stop_plugin() == 0
    host1.start_plugin()

    run(host1, "after", "wfdnet")
    ip_before, ip_after = address(host1, "before", "wfdnet"), address(host1, "after", "wfdnet")
    assert ip_before != ip_after
    assert ping(host1, "after", ip_before).returncode == 0
    host1.docker("rm", "-f", "before")  # an endpoint made before the restart
    assert len(plugin_ports(host1)) == 1


def test_removing_containers_and_the_network_leaves_nothing_behind(host1):
    create_network(host1, "wfdnet", "10.32.1.0/24")
    run(host1, "ca", "wfdnet")
    run(host1, "cb", "wfdnet")
    assert len(plugin_ports(host1)) == 2

    host1.docker("rm", "-f", "ca", "cb")
    host1.docker("network", "rm", "wfdnet")

    assert plugin_ports(host1) == {}  # neither veth end, so no bridge port either
    state = host1.plugin_state()
    assert (state["networks"], state["endpoints"], state["pools"]) == ({}, {}, {})


def test_docker_reports_the_plugins_errors_and_creates_nothing(host1):
    bad_mtu = host1.docker("network", "create", "-d", "weavefast", "-o", "mtu=jumbo", "wfdbad",
                           check=False)
    assert bad_mtu.returncode != 0 and "mtu 'jumbo' is not a number" in bad_mtu.stderr
    for options in ((), ("--subnet", SUBNET)):  # Docker's own IPAM: the same addresses everywhere
        docker_ipam = host1.docker("network", "create", "-d", "weavefast", *options, "wfdbad",
                                   check=False)
        assert docker_ipam.returncode != 0
        assert "need weavefast's IPAM" in docker_ipam.stderr
        assert "add --ipam-driver weavefast" in docker_ipam.stderr
    assert "wfdbad" not in host1.docker("network", "ls").stdout
    state = host1.plugin_state()
    assert (state["networks"], state["pools"]) == ({}, {})


def test_containers_on_two_hosts_talk_across_the_overlay(routers, host1, host2):
    create_network(host1, "wfdwide", "10.32.1.0/24")
    create_network(host2, "wfdwide", "10.32.2.0/24")
    run(host1, "left", "wfdwide")
    # -i keeps nc's stdin open: busybox nc stops reading the network at its stdin's end
    host2.docker("run", "-d", "-i", "--name", "right", "--network", "wfdwide", IMAGE,
                 "sh", "-c", "nc -l -p 7000 | sha256sum")
    ip_left, ip_right = address(host1, "left", "wfdwide"), address(host2, "right", "wfdwide")
    assert ip_left.startswith("10.32.1.") and ip_right.startswith("10.32.2."), (ip_left, ip_right)
    overlay_mtu = str(host1.tb.overlay_mtu)  # the plugin's default: what the overlay carries
    assert sh(host1, "left", "cat /sys/class/net/eth0/mtu").stdout.strip() == overlay_mtu

    result = ping(host1, "left", ip_right)
    assert result.returncode == 0, result.stdout
    sent = sh(host1, "left", f"head -c {TRANSFER_BYTES} /dev/urandom > /tmp/data && "
                             f"sha256sum < /tmp/data && nc {ip_right} 7000 < /tmp/data")
    assert host2.docker("wait", "right").stdout.strip() == "0"
    received = host2.docker("logs", "right").stdout
    assert received.split()[0] == sent.stdout.split()[0]
