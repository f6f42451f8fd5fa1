"""weavefast's DNS server over real UDP on loopback, asked by busybox's nslookup."""
import shutil
import subprocess

import pytest

from dataplane.dns import DnsServer

RECORDS = {"web": ["10.32.0.5"], "db": ["10.32.0.6", "10.32.0.7"]}


def nslookup(name, server):
    return subprocess.run(["busybox", "nslookup", name, f"127.0.0.1:{server.port}"],
                          capture_output=True, text=True, timeout=20)


def reverse(ip):
    return next((name for name, ips in RECORDS.items() if ip in ips), None)


@pytest.fixture
def servers():
    if shutil.which("busybox") is None:
        pytest.skip("needs busybox (apt-get install busybox-static)")
    upstream = DnsServer("127.0.0.1", lambda name: ["192.0.2.1"] if name == "outside" else [],
                         lambda ip: None, port=0, upstream=[])
    ours = DnsServer("127.0.0.1", lambda name: RECORDS.get(name, []), reverse, port=0,
                     upstream=[("127.0.0.1", upstream.port)])
    yield ours, upstream
    ours.close()
    upstream.close()


def test_names_and_addresses_of_containers(servers):
    ours, _ = servers
    web = nslookup("web", ours)
    assert "Address: 10.32.0.5" in web.stdout, web.stdout
    both = nslookup("DB", ours).stdout  # names are case-insensitive
    assert "10.32.0.6" in both and "10.32.0.7" in both, both
    assert "name = db" in nslookup("10.32.0.7", ours).stdout
    assert ours.answered >= 3 and ours.forwarded == 0


def test_other_names_go_to_the_hosts_resolvers(servers):
    ours, upstream = servers
    outside = nslookup("outside", ours)
    assert "Address: 192.0.2.1" in outside.stdout, outside.stdout
    assert ours.forwarded >= 1 and upstream.answered >= 1
    missing = nslookup("nowhere", ours)
    assert missing.returncode != 0 and "NXDOMAIN" in missing.stdout, missing.stdout
