"""`weavefast router`: bad flags and environments give one clear line naming the fix,
and shutdown removes what the router created."""
import json
import socket
import sys

import pytest
from pyroute2 import IPRoute

from dataplane.cli import main
from dataplane.errors import RouterError
from dataplane.addresses import parse_hostport

ROUTER = [sys.executable, "-m", "dataplane", "router"]


@pytest.fixture(scope="module")
def tb(testbed_factory):
    with testbed_factory(hosts=2, containers_per_host=0) as tb:
        yield tb


def router_error(tb, *args):
    result = tb.run(tb.hosts[0], ROUTER + list(args), check=False, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--mtu", "100"], "MTU 100 is too small: use at least 576"),
    (["--mtu", "9000"], "MTU 9000 is too large for the underlay's 1500: use --mtu 1414 or less"),
    (["--peer", "no-such-host.invalid"], "peer 'no-such-host.invalid' does not resolve"),
    (["--peer", "10.47.0.2:99999"], "the port must be a number from 1 to 65535"),
    (["--port", "0"], "--port 0: use a port from 1 to 65535"),
    (["--workers", "0"], "--workers 0: use 1 to 16"),
    (["--fdb-max-age", "0"], "--fdb-max-age 0: use at least 1 second"),
    (["--plugin", "--subnet", "10.32.0.0/40"],
     "--subnet '10.32.0.0/40': give an IPv4 subnet in CIDR form, e.g. 10.32.0.0/12"),
    (["--plugin", "--dns-address", "dns.example"],
     "--dns-address 'dns.example': give an IPv4 address, e.g. 169.254.53.53"),
    (["--plugin", "--store", "http://10.47.0.2:2379"],
     "--store: store 'http://10.47.0.2:2379': use etcd://HOST:2379[,HOST:2379...]"),
])
def test_bad_flags_name_the_fix(tb, args, expected):
    assert expected in router_error(tb, *args)


def test_port_in_use(tb):
    blocker = tb.socket(tb.hosts[0])
    blocker.bind(("0.0.0.0", 6783))
    try:
        assert "UDP port 6783 is in use: stop the other router or choose another --port" in router_error(tb)
    finally:
        blocker.close()


def test_not_root(monkeypatch, capsys):
    # In-process: a real unprivileged user may not be able to read root's site-packages here.
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["router", "--peer", "10.47.0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "weavefast router: must run as root: it creates a TAP device and a bridge (try sudo)"


def links(tb, host):
    with IPRoute(netns=host.netns) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_shutdown_removes_what_it_created(tb):
    host = tb.hosts[1]
    before = links(tb, host)
    router = tb.start(host, ROUTER + ["--name", "cleanup", "--bridge", "wfnew", "--status-addr", "127.0.0.1:6790"])
    tb.wait_for(lambda: {"wfnew", "wf-wfnew"} <= links(tb, host), what="bridge and TAP created")
    assert router.stop(grace=10) == 0, router.output()
    assert links(tb, host) == before


def test_existing_bridge_is_kept(tb):
    host = tb.hosts[1]
    router = tb.start(host, ROUTER + ["--name", "keep", "--bridge", host.bridge, "--status-addr", "127.0.0.1:6791"])
    tb.wait_for(lambda: f"wf-{host.bridge}" in links(tb, host), what="TAP created")
    assert router.stop(grace=10) == 0, router.output()
    remaining = links(tb, host)
    assert host.bridge in remaining and f"wf-{host.bridge}" not in remaining


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1", ("10.0.0.1", 6783)),
    ("10.0.0.1:7000", ("10.0.0.1", 7000)),
    ("host2:6000", ("host2", 6000)),
    ("[fd00::1]:7000", ("fd00::1", 7000)),
    ("fd00::1", ("fd00::1", 6783)),
])
def test_parse_hostport(text, expected):
    assert parse_hostport(text, 6783, "--peer") == expected


def test_parse_hostport_rejects_bad_port():
    with pytest.raises(RouterError, match="the port must be a number"):
        parse_hostport("host:abc", 6783, "--peer")


def test_bridge_it_made_is_kept_while_containers_use_it(tb):
    host = tb.hosts[1]
    router = tb.start(host, ROUTER + ["--name", "shared", "--bridge", "wfbusy", "--status-addr", "127.0.0.1:6792"])
    tb.wait_for(lambda: "wf-wfbusy" in links(tb, host), what="TAP created")
    with IPRoute(netns=host.netns) as ipr:
        ipr.link("add", ifname="wfport0", kind="veth", peer="wfport1")
        ipr.link("set", index=ipr.link_lookup(ifname="wfport0")[0], master=ipr.link_lookup(ifname="wfbusy")[0])
    try:
        assert router.stop(grace=10) == 0, router.output()
        remaining = links(tb, host)
        assert "wfbusy" in remaining and "wf-wfbusy" not in remaining
    finally:
        with IPRoute(netns=host.netns) as ipr:
            for name in ("wfport0", "wfbusy"):
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)


def test_router_serves_the_docker_plugin(tb, tmp_path):
    host = tb.hosts[1]
    sock_path = tmp_path / "weavefast.sock"
    router = tb.start(host, ROUTER + ["--name", "withplugin", "--bridge", host.bridge, "--plugin",
                                      "--plugin-socket", str(sock_path),
                                      "--plugin-state-dir", str(tmp_path / "state"),
                                      "--status-addr", "127.0.0.1:6793",
                                      # no dockerd here: none of the machine's is touched
                                      "--plugin-docker-host", f"unix://{tmp_path}/docker.sock",
                                      "--docker-config", str(tmp_path / "daemon.json")])
    tb.wait_for(sock_path.exists, timeout=30, what="plugin socket")  # slow on a busy machine
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock_path))
        s.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n"
                  b"Connection: close\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(4096), b"")).decode()
    assert reply.startswith("HTTP/1.") and " 200 " in reply.splitlines()[0]
    assert json.loads(reply.split("\r\n\r\n", 1)[1]) == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert router.stop(grace=10) == 0, router.output()
    assert not sock_path.exists()
