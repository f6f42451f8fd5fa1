"""`weavefast bench` end to end, as CI runs it: the harness measures every figure
and cleans up. Correctness only; the figures themselves are never judged here."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import bench, testbed

REPO = Path(__file__).resolve().parent.parent


def weavefast_bench(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "dataplane", "bench", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.root

def run_bench(tmp_path, *args):
    """Runs `weavefast bench ARGS`; its output and JSON results, once it exited 0 and
    left nothing behind."""
    json_path = tmp_path / "bench.json"
    proc = subprocess.Popen([sys.executable, "-m", "dataplane", "bench", *args, "--json", str(json_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
        left = testbed.leftovers(f"{bench.PREFIX_BASE}{proc.pid}n")
        testbed.remove_leftovers(f"{bench.PREFIX_BASE}{proc.pid}n")
    assert proc.returncode == 0, output
    assert not any(left.values()), f"the bench left {left} behind"
    return output, json.loads(json_path.read_text())

def test_quick_bench_of_weavefast_reports_every_figure(tmp_path):
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3: apt-get install iperf3")
    png_path = tmp_path / "bench.png"
    output, results = run_bench(tmp_path, "--quick", "--only", "weavefast,weavefast-sealed",
                                "--png", str(png_path))
    assert list(results["systems"]) == ["weavefast", "weavefast-sealed"] and not results["errors"]
    for system, cipher in (("weavefast", "none"), ("weavefast-sealed", "aes-256-gcm chacha20-poly1305")):
        figures = results["systems"][system]
        for key, label, *_ in bench.METRICS:
            assert figures[key] > 0, f"{system} {label}: {figures[key]!r}"
            assert label in output  # the table shows it
        assert figures["container_mtu"] == 1414
        assert figures["cipher"] in cipher.split()
        assert all(status["udp_rx_datagrams"] > 0 for status in figures["router_counters"].values())
    if importlib.util.find_spec("matplotlib"):
        assert png_path.read_bytes().startswith(b"\x89PNG")
    else:
        assert "pip install matplotlib" in output and not png_path.exists()


def test_bench_without_iperf3_says_how_to_install_it(tmp_path):
    # a PATH holding every tool the bench needs except iperf3
    for tool in ("nsenter", "ping", "sysctl", "ss"):
        if found := shutil.which(tool):
            (tmp_path / tool).symlink_to(found)
    result = weavefast_bench("--quick", env=dict(os.environ, PATH=str(tmp_path)), timeout=60)
    assert result.returncode != 0
    assert "apt-get install iperf3" in result.stderr


def test_bench_matrix_names_its_variants_when_given_an_unknown_one():
    result = weavefast_bench("--matrix", "default,no-such-variant", timeout=60)
    assert result.returncode == 2
    assert f"choose from {', '.join(bench.VARIANT_NAMES)}" in result.stderr


@pytest.mark.root
def test_quick_loss_bench_reports_each_rate_and_cleans_up(tmp_path):
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("iperf3") is None or shutil.which("nft") is None:
        pytest.skip("needs iperf3 and nft: apt-get install iperf3 nftables")
    output, results = run_bench(tmp_path, "--quick", "--loss", "0,10")
    assert list(results["systems"]) == ["weavefast", "vxlan"] and not results["errors"]
    for system in ("weavefast", "vxlan"):
        assert set(results["systems"][system]) == {"0", "10"}
        assert all(row["tcp1_gbps"] > 0 for row in results["systems"][system].values())
        assert results["systems"][system]["10"]["dropped"] > 0
    assert results["systems"]["weavefast"]["10"]["sending"] == "segments"
    assert "weavefast/vxlan" in output
