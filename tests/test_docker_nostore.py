"""Without a store: one host needs no options; hosts that would share a range are refused
(detected through the mesh) and hosts with their own ranges find each other's names
through the mesh. Two simulated hosts, each with a real dockerd and `weavefast router
--plugin`, no etcd."""
import tempfile
from pathlib import Path

import pytest

from dataplane import testbed
from dataplane.dns import DEFAULT_DNS_ADDRESS
from dockerenv import IMAGE, DockerEngine, busybox_rootfs_tar, close_all, docker_unavailable
from test_docker_cluster import address, router_status, run, unreachable, wait_for_records

pytestmark = [pytest.mark.root, pytest.mark.docker]

SUBNET = "10.32.0.0/13"  # the default 10.32.0.0/12 holds the testbed's underlay


@pytest.fixture(scope="module")
def hosts():
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="wfn"))
    tb = testbed.Testbed(hosts=2, prefix=testbed.unique_prefix("wfn"))
    engines = []
    try:
        rootfs = busybox_rootfs_tar(workdir / "rootfs.tar")
        # the second host makes no ready-made network: whether it would be refused at
        # create or at the first `docker run` depends on when it hears of the first host
        for host, ready_made in zip(tb.hosts, ("weavefast", "")):
            engines.append(DockerEngine(tb, host, workdir / host.name, dns=DEFAULT_DNS_ADDRESS,
                                        plugin="router", peers=[h for h in tb.hosts if h is not host],
                                        plugin_args=["--subnet", SUBNET, "--network", ready_made]))
            engines[-1].docker("import", "-c", 'CMD ["sh"]', str(rootfs), IMAGE)
        tb.wait_connected()
        tb.wait_for(lambda: router_status(engines[0])["blocks"], what="the ready-made network")
        yield engines
    finally:
        close_all(tb, engines, workdir)


def knows_range_of(engine, other, subnet):
    """Whether `engine`'s router has heard (through the mesh) of `other`'s range in `subnet`."""
    peer_ranges = router_status(engine)["peer_ranges"].get(other.host.netns, {})
    return subnet in peer_ranges


def test_one_host_needs_no_options_and_a_second_one_is_refused_clearly(hosts):
    first, second = hosts
    run(first, "solo", "weavefast")
    first.docker("network", "create", "-d", "weavefast", "--ipam-driver", "weavefast", "plain")
    run(first, "solo2", "plain")
    assert address(first, "solo", "weavefast") != address(first, "solo2", "plain")
    assert unreachable(first, "solo", ["solo2", address(first, "solo2", "plain")]) == []

    first.tb.wait_for(lambda: knows_range_of(second, first, SUBNET),
                      what="the first host's range to reach the second through the mesh")
    refused = second.docker("network", "create", "-d", "weavefast", "--ipam-driver", "weavefast",
                            "late", check=False)
    assert refused.returncode != 0
    message = (f"host {first.host.netns} already hands out addresses from {SUBNET} of "
               f"{SUBNET}, which overlaps this host's {SUBNET}: give each host its own part "
               "with --ip-range, or run every router with --store etcd://HOST:2379")
    assert message in refused.stderr, refused.stderr
    assert "late" not in second.docker("network", "ls", "--format", "{{.Name}}").stdout
    first.docker("rm", "-f", "solo", "solo2")
    first.docker("network", "rm", "plain")


def test_overlapping_ranges_are_refused_and_disjoint_ones_share_names(hosts):
    first, second = hosts
    create = ["network", "create", "-d", "weavefast", "--ipam-driver", "weavefast",
              "--subnet", "10.40.0.0/16"]
    first.docker(*create, "--ip-range", "10.40.1.0/24", "ranged")
    first.tb.wait_for(lambda: knows_range_of(second, first, "10.40.0.0/16"),
                      what="the first host's range to reach the second through the mesh")
    refused = second.docker(*create, "--ip-range", "10.40.1.128/25", "ranged", check=False)
    assert refused.returncode != 0
    assert (f"host {first.host.netns} already hands out addresses from 10.40.1.0/24 of "
            "10.40.0.0/16") in refused.stderr, refused.stderr

    second.docker(*create, "--ip-range", "10.40.2.0/24", "ranged")
    theirs = second.docker("run", "-d", "--name", "squatter", "--ip", "10.40.1.50", "--network",
                           "ranged", IMAGE, "sleep", "600", check=False)
    assert theirs.returncode != 0
    assert f"address 10.40.1.50 is in the range of host {first.host.netns}" in theirs.stderr, \
        theirs.stderr
    second.docker("rm", "-f", "squatter")
    run(first, "left", "ranged")
    run(second, "right", "ranged")
    assert address(second, "right", "ranged").startswith("10.40.2.")
    wait_for_records(first, 2)
    assert unreachable(first, "left", ["right"]) == []
    assert unreachable(second, "right", ["left"]) == []
    for engine, name in ((first, "left"), (second, "right")):
        engine.docker("rm", "-f", name)
        engine.docker("network", "rm", "ranged")
