"""Issue 13, a scale test: N routers (16 here; `make test-scale` runs 64, or set
WEAVEFAST_SCALE_HOSTS) joined through the first one only, started one after another.

Correctness bounds, not speed assertions: the mesh converges within a generous time,
every container reaches every other, no router grows past 64 MB, and no link flaps
while the mesh is idle. The figures are printed (`pytest -s`) for a human to read.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import scale, testbed

REPO = Path(__file__).resolve().parent.parent
HOSTS = int(os.environ.get("WEAVEFAST_SCALE_HOSTS", "16"))
CONVERGE_BOUND_S = float(os.environ.get("WEAVEFAST_SCALE_CONVERGE_S", "60"))
IDLE_WINDOW_S = float(os.environ.get("WEAVEFAST_SCALE_IDLE_S", "10"))
RSS_LIMIT_MB = 64


@pytest.fixture(scope="module")
def run():
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    prefix = testbed.unique_prefix("wfi")  # conftest's base: leftovers of killed runs are cleaned
    try:
        results = scale.measure_scale(HOSTS, idle_window=IDLE_WINDOW_S,
                                      converge_timeout=CONVERGE_BOUND_S, prefix=prefix)
    finally:
        left = testbed.leftovers(prefix)
        testbed.remove_leftovers(prefix)
    assert not any(left.values()), f"the scale run left {left} behind"
    print()
    print(scale.format_table({"runs": [results], "errors": {}, "idle_window_s": IDLE_WINDOW_S,
                              "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
                              "load_average_after": os.getloadavg()}))
    return results


@pytest.mark.root
def test_the_mesh_converges(run):
    e = run["established_peers"]
    assert run["converged"], (f"{HOSTS} routers not all connected after {CONVERGE_BOUND_S:g} s: "
                              f"established peers per router min {e['min']}, median {e['median']}, "
                              f"max {e['max']} of {e['wanted']}")
    assert run["converged_after_s"] < CONVERGE_BOUND_S


@pytest.mark.root
def test_every_container_reaches_every_other(run):
    pings = run["pings"]
    assert pings["total"] == 30
    assert pings["ok"] == pings["total"], f"failed: {pings['failed']}"


@pytest.mark.root
def test_routers_stay_small(run):
    assert run["rss_mb"]["max"] < RSS_LIMIT_MB, run["idle"]["per_host"]


@pytest.mark.root
def test_no_flaps_while_idle(run):
    assert run["flaps"]["idle"] == 0, run["flaps"]["examples"]


def test_flap_counter_sees_a_link_that_left_and_came_back():
    counter = scale.FlapCounter()
    peers = lambda state, since: {"peers": [{"name": "b", "state": state, "since": since,
                                             "last_error": "no heartbeat"}]}
    counter.observe("a", peers("connecting", 1.0), {"b"}, 1)
    counter.observe("a", peers("established", 2.0), {"b"}, 2)
    counter.observe("a", peers("established", 2.0), {"b"}, 3)
    assert counter.count() == 0  # connecting, then up: no flap
    counter.observe("a", peers("established", 5.0), {"b"}, 4)  # down and up between two polls
    counter.observe("a", peers("failed", 6.0), {"b"}, 5)
    counter.observe("a", peers("retrying", 7.0), {"b"}, 6)   # still down: the same flap
    counter.observe("a", {"peers": []}, {"b"}, 7)            # gone while down: nothing new
    counter.observe("a", peers("established", 8.0), {"b"}, 8)
    counter.observe("a", {"peers": []}, {"b"}, 9)            # gone while up
    assert counter.count() == 3 and counter.count(after=4) == 2
    assert counter.examples()[1] == "a: b failed: no heartbeat"


def test_log_lines_count_links_that_came_up_again():
    line = "weavefast: {} (peer id 7) established, RTT 1.00 ms\n"
    outputs = {"h1": line.format("x-h2") + "weavefast: x-h2: control connection lost\n"
                     + line.format("x-h2") + line.format("x-h3"),
               "h2": line.format("x-h1")}
    assert scale.reestablished_in_logs(outputs) == 1
    assert scale.reestablished_in_logs({"h1": "weavefast: something else\n"}) is None


def test_containers_are_spread_over_first_middle_and_last_host():
    class Tb:
        hosts = list(range(1, 17))
    assert scale.container_hosts(Tb, 3) == [1, 9, 16]
    assert scale.container_hosts(Tb, 1) == [1]
    assert scale.container_hosts(Tb, 20) == Tb.hosts


def test_scale_sizes_are_checked():
    assert scale.parse_sizes("16,32") == [16, 32]
    with pytest.raises(ValueError):
        scale.parse_sizes("1")
    with pytest.raises(ValueError):
        scale.parse_sizes("many")


@pytest.mark.root
def test_ctrl_c_removes_everything(tmp_path):
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    proc = subprocess.Popen([sys.executable, "-m", "dataplane", "bench", "--scale", "4",
                             "--idle-window", "60", "--json", str(tmp_path / "scale.json")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    prefix = f"{scale.PREFIX_BASE}{proc.pid}n"
    try:
        output = []
        for line in proc.stdout:  # interrupted while the routers run
            output.append(line)
            if "measuring" in line:
                break
        assert testbed.leftovers(prefix)["namespaces"], "".join(output)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        left = testbed.leftovers(prefix)
        testbed.remove_leftovers(prefix)
    assert proc.returncode == 128 + signal.SIGINT, "".join(output) + rest
    assert "interrupted; everything removed" in rest
    assert not any(left.values()), f"left behind: {left}"
    assert not (tmp_path / "scale.json").exists()
