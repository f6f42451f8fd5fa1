"""A router from before the quiet-membership change (control protocol version 2,
heartbeats on every connection, whole-state gossip) meshes with today's (version
3) and stays established: an upgrade need not be done on every host at once.

The older router is the real code of that release, built from git history.
"""
import subprocess
import sys
import time
from pathlib import Path

import pytest

OLD_RELEASE = "cd05e81"  # the last commit that speaks control protocol version 2 only
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory):
    tree = tmp_path_factory.mktemp("old-router")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_RELEASE], capture_output=True)
    if archive.returncode:
        pytest.skip(f"commit {OLD_RELEASE} is not in this clone (shallow?): "
                    f"{archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=tree, check=True,
                   capture_output=True)
    return tree


def test_an_older_router_meshes_with_new_ones_and_stays(testbed_factory, old_tree):
    with testbed_factory(hosts=3, containers_per_host=1) as tb:
        h1, h2, h3 = tb.hosts
        tb.start_router(h1, peers=[], wait=False)
        tb.start_router(h2, peers=[h1], wait=False)
        argv = [sys.executable, "-c",
                f"import sys; sys.path.insert(0, {str(old_tree)!r}); from dataplane.cli import main; main()",
                "router", "--name", h3.netns, "--bridge", h3.bridge, "--mtu", str(tb.overlay_mtu),
                "--peer", h1.underlay_ip]
        h3.router = tb.start(h3, argv, name=f"{h3.netns}-router")
        for host in tb.hosts:
            tb.wait_ready(host)
        tb.wait_connected(timeout=30)
        assert tb.status(h3)["protocol_versions"] == [2, 2], "not the old router"
        since = {h.name: {p["name"]: p["since"] for p in tb.status(h)["peers"]} for h in tb.hosts}
        time.sleep(4 * 3.0)  # the old router drops a connection silent for --down-after (3 s)
        for host in tb.hosts:
            for peer in tb.status(host)["peers"]:
                assert peer["state"] == "established" and peer["since"] == since[host.name][peer["name"]], \
                    (host.name, peer["name"], peer["last_error"])
        c1, c2, c3 = tb.containers
        assert tb.ping(c3, c1.ip4).ok and tb.ping(c3, c2.ip4).ok and tb.ping(c1, c2.ip4).ok
        # the new ones learned of each other and of the old one through its whole-state gossip too
        assert {p["name"] for p in tb.status(h2)["peers"]} == {h1.netns, h3.netns}
