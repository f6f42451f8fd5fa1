"""Docker on hosts run as in production: boot order, reconciliation, MTU, status, multicast.

Three simulated hosts on a 1460-byte underlay, each with containerd and a real
dockerd; every router derives the overlay MTU from that underlay by itself:

- h1 and h2 run `weavefast router --plugin` as weavefast.service does: started
  before dockerd, which starts only once the router said READY=1;
- h3 runs a plain router and `weavefast plugin` on its own, which asks the router
  for the overlay MTU.

The plugins reconcile with their dockerd every second (production: 30 s).
"""
import ipaddress
import json
import operator
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dataplane import testbed
from dockerenv import IMAGE, PLUGIN_SOCKET, DockerEngine, busybox_rootfs_tar, close_all, \
    docker_unavailable
from test_docker import address, create_network, plugin_ports, remove_all, sh

pytestmark = [pytest.mark.root, pytest.mark.docker]

UNDERLAY_MTU = 1460
RANGES = {"h1": "10.32.1.0/24", "h2": "10.32.2.0/24", "h3": "10.32.3.0/24"}
GROUP, GROUP_PORT = "239.7.7.7", 7007
# exits at once on SIGTERM, so that stopping dockerd does not wait 10 s for it
SERVICE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


@pytest.fixture(scope="module")
def engines():
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="wfl"))  # short: dockerd's socket paths are limited
    tb = testbed.Testbed(hosts=3, underlay_mtu=UNDERLAY_MTU, prefix=testbed.unique_prefix("wfl"))
    engines = {}
    try:
        rootfs = busybox_rootfs_tar(workdir / "rootfs.tar")
        h1, h2, h3 = tb.hosts
        # the router of `weavefast plugin` on its own
        h3.router = tb.start(h3, [sys.executable, "-m", "dataplane", "router", "--name", h3.netns,
                                  "--peer", h1.underlay_ip, "--peer", h2.underlay_ip],
                             name=f"{h3.netns}-router")
        for host in (h1, h2):
            engines[host.name] = DockerEngine(
                tb, host, workdir / host.name, plugin="router", peers=[h for h in tb.hosts
                                                                       if h is not host],
                # no ready-made network: its default subnet would overlap wfl's
                plugin_args=["--plugin-reconcile-interval", "1", "--network", ""])
        engines["h3"] = DockerEngine(tb, h3, workdir / "h3", mtu="router",
                                     plugin_args=["--reconcile-interval", "1"])
        for engine in engines.values():
            engine.docker("import", "-c", 'CMD ["sh"]', str(rootfs), IMAGE)
        tb.wait_ready(h3)
        tb.wait_connected()
        yield engines
    finally:
        close_all(tb, engines.values(), workdir)


@pytest.fixture
def hosts(engines):
    """The engines, each with a weavefast network `wfl` on its own range."""
    for name, engine in engines.items():
        create_network(engine, "wfl", RANGES[name])
    yield engines
    for engine in engines.values():
        remove_all(engine)


def run(engine, name, *options, command=SERVICE):
    engine.docker("run", "-d", "--name", name, "--network", "wfl", *options, IMAGE, *command)
    return address(engine, name, "wfl")


def ping(engine, container, ip, size=56):
    return sh(engine, container, f"ping -c 3 -w 10 -s {size} {ip}", check=False)


def overlay_mtu(engine):
    """The overlay MTU of `engine`'s router, as it reports it."""
    return engine.tb.status(engine.host)["mtu"]


def plugin_status(engine):
    if engine.plugin_mode == "router":
        return engine.tb.status(engine.host)["plugin"]
    return json.loads(engine.run_in([sys.executable, "-m", "dataplane", "report"]).stdout)["plugin"]


def plugin_and_docker(engine):
    """(plugin, Docker): endpoints, addresses and veth pairs of the plugin; endpoints and
    addresses of Docker's running containers and the network's gateway, and the veth
    pairs those endpoints should have."""
    state = engine.plugin_state()
    gateway = str(next(ipaddress.ip_network(RANGES[engine.host.name]).hosts()))
    docker_endpoints, docker_addresses = set(), {gateway}
    for container in engine.docker("ps", "-q").stdout.split():
        networks = json.loads(engine.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}",
                                            container).stdout)
        docker_endpoints.add(networks["wfl"]["EndpointID"])
        docker_addresses.add(networks["wfl"]["IPAddress"])
    plugin_addresses = {a for subnet in state["subnets"].values() for a in subnet["allocated"]}
    ports = {name[4:] for name in plugin_ports(engine) if name.startswith("wfdh")}
    return ((set(state["endpoints"]), plugin_addresses, ports),
            (docker_endpoints, docker_addresses, {e[:11] for e in docker_endpoints}))


def assert_no_leak(engine, timeout=20):
    try:
        engine.tb.wait_for(lambda: operator.eq(*plugin_and_docker(engine)), timeout=timeout,
                           what="the plugin's state to match Docker's")
    except TimeoutError:
        plugin, docker = plugin_and_docker(engine)
        pytest.fail(f"the plugin has (endpoints, addresses, veths) {plugin}, Docker {docker}")


def test_the_plugin_gives_the_routers_mtu_and_refuses_a_larger_one(hosts):
    mtu = overlay_mtu(hosts["h1"])
    assert mtu < UNDERLAY_MTU - 50  # not the 1414 a 1500-byte underlay would give
    for name in ("h1", "h3"):  # the plugin in the router, and on its own
        engine = hosts[name]
        assert overlay_mtu(engine) == mtu
        refused = engine.docker("network", "create", "-d", "weavefast", "--ipam-driver",
                                "weavefast", "--subnet", "10.40.0.0/16", "--ip-range",
                                "10.40.1.0/24", "-o", "mtu=9000", "wflbig", check=False)
        assert refused.returncode != 0
        assert f"-o mtu=9000 is larger than the overlay carries: at most {mtu}" in refused.stderr
        assert "wflbig" not in engine.docker("network", "ls").stdout

    run(hosts["h1"], "wflsmall")
    far = run(hosts["h3"], "wflbig")
    for name, container in (("h1", "wflsmall"), ("h3", "wflbig")):
        assert sh(hosts[name], container, "cat /sys/class/net/eth0/mtu").stdout.strip() == str(mtu)
    # the largest packet the container sends crosses the overlay whole
    result = ping(hosts["h1"], "wflsmall", far, size=mtu - 28)
    assert " 0% packet loss" in result.stdout, result.stdout


def test_status_shows_the_plugins_networks_endpoints_and_errors(hosts):
    h1, h3 = hosts["h1"], hosts["h3"]
    ip = run(h1, "wflweb")
    mac = h1.docker("inspect", "-f", "{{.NetworkSettings.Networks.wfl.MacAddress}}",
                    "wflweb").stdout.strip()
    h1.docker("network", "create", "-d", "weavefast", "-o", "mtu=99999", "wflbad", check=False)

    def web_known():
        status = plugin_status(h1)
        network = next((n for n in status["networks"] if n["name"] == "wfl"), None)
        return status if network and network["endpoints"][0]["container"] == "wflweb" else None

    status = h1.tb.wait_for(web_known, what="the container's name in the status")
    mtu = overlay_mtu(h1)
    network = next(n for n in status["networks"] if n["name"] == "wfl")
    assert status["socket"] == PLUGIN_SOCKET and status["overlay_mtu"] == mtu
    assert (network["subnet"], network["ip_range"], network["mtu"]) == \
        ("10.32.0.0/16", RANGES["h1"], mtu)
    endpoint, = network["endpoints"]
    assert (endpoint["address"], endpoint["mac"]) == (f"{ip}/16", mac)
    assert "mtu 99999 is outside 68..65535" in status["last_errors"][-1]["message"]

    text = h1.run_in([sys.executable, "-m", "dataplane", "status"]).stdout
    assert f"docker plugin: {PLUGIN_SOCKET}" in text
    assert f"subnet 10.32.0.0/16, range {RANGES['h1']}, mtu {mtu}" in text
    assert f"wflweb: {ip}/16 {mac} on wfdh" in text
    serving = [line for line in h1.plugin.output().splitlines() if "Docker plugin serving" in line]
    assert len(serving) == 1 and PLUGIN_SOCKET in serving[0], serving

    run(h3, "wflalone")  # `weavefast plugin` on its own: `weavefast status` asks its socket
    h3.tb.wait_for(lambda: "wflalone: 10.32.3." in h3.run_in(
        [sys.executable, "-m", "dataplane", "status"]).stdout, what="h3's plugin in the status")


def container_socket(engine, container):
    """A UDP socket in `container`'s network namespace, as a program there would have."""
    pid = engine.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
    return engine.tb.socket(f"/proc/{pid}/ns/net")


def join_group(engine, container):
    sock = container_socket(engine, container)
    sock.bind(("0.0.0.0", GROUP_PORT))
    interface = socket.inet_aton(address(engine, container, "wfl"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(GROUP) + interface)
    sock.settimeout(10)
    return sock


def receive(sock):
    try:
        return sock.recv(100)
    except TimeoutError:
        return None


def test_multicast_from_one_host_reaches_two_others(hosts):
    for name in ("h1", "h2", "h3"):
        run(hosts[name], f"wflm{name}")
    # a member on the sender's own host too: its bridge must still send the group out
    run(hosts["h1"], "wflmlocal")
    members = {container: join_group(hosts[name], container) for name, container in
               (("h2", "wflmh2"), ("h3", "wflmh3"), ("h1", "wflmlocal"))}
    try:
        with container_socket(hosts["h1"], "wflmh1") as sender:
            # no interface chosen: the container's routes must know where groups go
            sender.sendto(b"hello-group", (GROUP, GROUP_PORT))
        received = {name: receive(sock) for name, sock in members.items()}
    finally:
        for sock in members.values():
            sock.close()
    assert received == {"wflmh2": b"hello-group", "wflmh3": b"hello-group",
                        "wflmlocal": b"hello-group"}


@pytest.mark.parametrize("live_restore", [False, True], ids=["live-restore-off",
                                                            "live-restore-on"])
def test_restart_always_containers_come_back_after_a_reboot(hosts, live_restore):
    h1, h2 = hosts["h1"], hosts["h2"]
    run(h1, "wflclient")
    run(h2, "wflserver", "--restart", "always")

    h2.reboot(live_restore=live_restore)  # dockerd, weavefast stopped; started in unit order

    h2.tb.wait_for(lambda: h2.docker("inspect", "-f", "{{.State.Running}}",
                                     "wflserver").stdout.strip() == "true",
                   timeout=30, what="the container running again")
    h2.tb.wait_connected()
    result = ping(h1, "wflclient", address(h2, "wflserver", "wfl"))
    assert " 0% packet loss" in result.stdout, result.stdout
    assert_no_leak(h2)


def test_nothing_leaks_when_the_plugin_was_down_while_containers_came_and_went(hosts):
    h3 = hosts["h3"]
    run(h3, "wflstays")
    run(h3, "wflgoes")
    h3.stop_plugin(signal.SIGKILL)
    # dockerd retries a missing plugin for 15 s per call, then gives up and forgets
    removing = subprocess.Popen(["docker", "rm", "-f", "wflgoes"], env=h3.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    creating = h3.docker("run", "-d", "--name", "wflnew", "--network", "wfl", IMAGE, *SERVICE,
                         check=False, timeout=120)
    assert creating.returncode != 0 and "weavefast" in creating.stderr, creating.stderr
    assert removing.wait(timeout=120) == 0, removing.stdout.read()
    leaked = h3.plugin_state()
    assert len(leaked["endpoints"]) == 2  # dockerd forgot wflgoes; the plugin could not

    h3.start_plugin()

    assert_no_leak(h3)
    run(h3, "wflafter")
    assert " 0% packet loss" in ping(h3, "wflafter", address(h3, "wflstays", "wfl")).stdout


def test_expose_gives_the_host_its_gateway_address_on_each_docker_network(hosts):
    h1, h2 = hosts["h1"], hosts["h2"]
    far = run(h2, "wflfar")
    expose = [sys.executable, "-m", "dataplane", "expose"]

    exposed = h1.run_in(expose)

    assert exposed.returncode == 0, exposed.stderr
    assert exposed.stdout.startswith("10.32.1.1/16 on bridge weavefast: exposed")
    assert h1.tb.ping(h1.host, far).ok  # the host reaches a container on another host
    hidden = h1.run_in([sys.executable, "-m", "dataplane", "hide"])
    # the router's DNS server keeps its address on the bridge
    assert hidden.stdout == "removed 10.32.1.1/16 from bridge weavefast\n", hidden.stderr
    assert not h1.tb.ping(h1.host, far, count=1, deadline=2).ok
