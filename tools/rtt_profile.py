"""Where a small packet's round trip goes: pings across the bench's default
two-host testbed, with the wake-ups of every router thread counted per ping.

    sudo python3 tools/rtt_profile.py [--pings 500] [--perf] [-- ROUTER ARGS...]

Prints the RTT average and p99 and, for each router thread (named wf-rx<i> /
wf-tx<i> by the engine), its context switches per ping (each one a sleep and a
wake-up). With --perf it also runs `perf sched record` over the pings and prints
`perf sched latency` (how long each woken thread waited for a CPU).
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataplane import bench, testbed  # noqa: E402


def switches(pid):
    """{thread name + tid: voluntary + involuntary context switches} of a process."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        name = status["Name"].strip()
        if name.startswith("wf-"):
            found[name] = int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--perf", action="store_true")
    p.add_argument("router_args", nargs="*")
    args = p.parse_args()
    with bench.build_testbed(bench.DEFAULT, "weavefast", prefix=testbed.unique_prefix("wfrtt")) as tb:
        tb.start_routers(extra_args=args.router_args)
        c1, c2 = tb.containers
        assert tb.ping(c1, c2.ip4).ok
        routers = {h.name: h.router.pid for h in tb.hosts}
        # the router's Python process forks nothing: its threads are the engine's and Python's
        before = {h: switches(pid) for h, pid in routers.items()}
        perf = None
        if args.perf:
            data = Path(tempfile.mkdtemp()) / "perf.data"
            perf = subprocess.Popen(["perf", "sched", "record", "-a", "-o", str(data)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rtts = bench.ping_rtts(tb, c1, c2.ip4, args.pings)
        if perf:
            perf.send_signal(2)
            perf.wait()
        after = {h: switches(pid) for h, pid in routers.items()}
    print(f"{len(rtts)} pings: avg {sum(rtts) / len(rtts) * 1000:.0f} us, "
          f"p99 {bench.percentile(rtts, 99) * 1000:.0f} us, router args {args.router_args or 'none'}")
    for host in routers:
        per_ping = {name: (after[host][name] - before[host].get(name, 0)) / len(rtts) for name in after[host]}
        print(f"  {host}: context switches per ping: "
              + ", ".join(f"{name} {n:.2f}" for name, n in sorted(per_ping.items())))
    if perf:
        report = subprocess.run(["perf", "sched", "latency", "-i", str(data), "--sort", "max"],
                                capture_output=True, text=True).stdout
        print("\n".join(line for line in report.splitlines()
                        if line.lstrip().startswith(("wf-", "ping", "Task", "---", "TOTAL"))))
        shutil.rmtree(data.parent)


if __name__ == "__main__":
    main()
