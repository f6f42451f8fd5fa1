"""`weavefast bench`: weavefast against kernel VXLAN and a direct veth, same topology.

Each system gets a fresh two-host testbed (`dataplane.testbed`: two host
namespaces joined by a veth underlay, one container behind a bridge in each),
built the same way, and the same measurements between container c1 (client) and
container c2 (server):

- ping RTT average and p99 (run first, on an idle path);
- iperf3 TCP, 1 stream and 4 streams (Gbit/s received);
- iperf3 UDP with 64-byte payloads at full rate (`-b 0 -l 64`): packets per
  second *received*;
- weavefast rows only: the two routers' CPU seconds (utime + stime from /proc) per GB
  received during the 1-stream TCP run, and their peak resident memory (VmHWM).

The systems differ only in what carries c1's frames to c2:

- weavefast: `weavefast router` in each host, its TAP on the bridge (container MTU 1414
  on a 1500-byte underlay: 86 bytes of encapsulation),
  no network secret: frames in clear, each datagram carrying the session token;
- weavefast-sealed: the same with `--password`: every datagram sealed (AES-256-GCM
  where the CPU has AES instructions, else ChaCha20-Poly1305);
- vxlan: a kernel `vxlan` device on each bridge, VNI 42, UDP port 4789, remote =
  the other host (container MTU 1450: 50 bytes);
- direct: no encapsulation. Each host routes its container's /32 over the underlay
  veth and answers ARP for the remote container (proxy ARP on the bridge), so
  the containers talk as on one subnet (container MTU 1500).

Other engineers' and CI's work on a small machine makes single runs noisy:
`--repeat N` measures every system N times, in turns, and reports the medians.

`--matrix` runs the same measurements over host variants that real users have
(`VARIANTS`: IPv6 disabled on the hosts, container veths without offloads,
underlay MTU 9000 and 1280, a TAP created by the operator with `--mtu 1400`,
`--workers 2`), each against kernel VXLAN and direct in the same run, and ends
with one table of weavefast's ratios to kernel VXLAN per variant.

`--scale N[,N...]` measures something else: how a mesh of N routers converges and
idles (see `dataplane.scale`).

`--loss 0,0.1,1,10` measures single-stream TCP (iperf3, BBR where the kernel has
it) through weavefast and through kernel VXLAN on the same two hosts while the
underlay drops that percentage of each system's UDP datagrams, each on its own
(`Testbed.set_loss`: the hosts joined through a switch namespace whose bridge
drops them with an nftables `numgen random` rule on the system's port, the
hosts' segmentation offloads off so every datagram meets it alone, their veth
GRO on), and prints
one row per loss rate with weavefast's ratio to VXLAN and how weavefast sent its
TCP super-frames at the end (segments or fragments). One testbed per system
and round, the loss rates in ascending order; `--repeat N` takes the medians of
N rounds, the systems in turns.

Results: a table (each figure also as a ratio to kernel VXLAN), JSON, and a PNG
chart when matplotlib is installed. Every namespace and process is removed at the
end, also on failure, Ctrl-C or SIGTERM.
"""
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from dataplane import scale, testbed
from dataplane.router import OFFLOAD_FLAGS

SYSTEMS = ("weavefast", "weavefast-sealed", "vxlan", "direct")
ENCAP_OVERHEAD = {"weavefast": testbed.ENCAP_OVERHEAD, "weavefast-sealed": testbed.ENCAP_OVERHEAD,
                  "vxlan": 50, "direct": 0}
OPERATOR_TAP = "wfop0"


@dataclass(frozen=True)
class Variant:
    """A way real hosts differ from the project's testbed."""
    name: str
    description: str
    systems: tuple = ("weavefast", "vxlan", "direct")
    underlay_mtu: int = 1500
    overlay_mtu: int | None = None   # every system's containers, and weavefast's --mtu
    router_args: tuple = ()
    ipv6_disabled: bool = False
    veth_offloads_off: bool = False
    operator_tap: bool = False

    def container_mtu(self, system):
        return self.overlay_mtu or self.underlay_mtu - ENCAP_OVERHEAD[system]


VARIANTS = (
    Variant("default", "the project's testbed", systems=SYSTEMS),
    Variant("ipv6-off", "IPv6 disabled on the hosts by sysctl", ipv6_disabled=True),
    Variant("veth-offloads-off", "container veths with offloads off (ethtool -K tx tso gso gro off)",
            veth_offloads_off=True),
    Variant("jumbo", "underlay MTU 9000", underlay_mtu=9000),
    Variant("mtu-1280", "underlay MTU 1280", underlay_mtu=1280),
    Variant("operator-tap", f"TAP {OPERATOR_TAP} created and bridged by the operator, --tap and --mtu 1400 "
            "(every system's containers at MTU 1400)", overlay_mtu=1400, operator_tap=True),
    Variant("workers-2", "weavefast with --workers 2", router_args=("--workers", "2")),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
DEFAULT = VARIANTS[0]
BENCH_SECRET = "weavefast bench"
VXLAN_VNI = 42
VXLAN_PORT = 4789
VXLAN_IFNAME = "wfbvx"
IPERF_PORT = 5201
UDP_PAYLOAD = 64
PREFIX_BASE = "wfb"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_main_pid = os.getpid()

# (key in the JSON, label, unit shown, scale from the JSON value to the unit shown, better)
METRICS = (
    ("tcp1_gbps", "TCP 1 stream", "Gbit/s", 1, "higher"),
    ("tcp4_gbps", "TCP 4 streams", "Gbit/s", 1, "higher"),
    ("udp64_rx_pps", "UDP 64 B received", "kpps", 1e-3, "higher"),
    ("ping_avg_ms", "ping RTT avg", "ms", 1, "lower"),
    ("ping_p99_ms", "ping RTT p99", "ms", 1, "lower"),
    ("router_cpu_s_per_gb", "router CPU per GB", "s/GB", 1, "lower"),
    ("router_peak_rss_mb", "router peak RSS", "MB", 1, "lower"),
)


class BenchError(Exception):
    """A measurement that could not be made; the message says which and why."""


class _Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the bench is so that the testbed is torn down."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def add_arguments(p) -> None:
    p.add_argument("--duration", type=int, default=5, metavar="SECONDS",
                   help="length of each iperf3 run (default %(default)s)")
    p.add_argument("--pings", type=int, default=200, help="pings per system, 10 ms apart (default %(default)s)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="measure every system N times, in turns, and report the medians (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run for CI: 1-second iperf3 runs, 20 pings (overrides --duration, --pings)")
    p.add_argument("--only", default=",".join(SYSTEMS), metavar="LIST",
                   help="comma-separated systems to measure, of: %(default)s")
    p.add_argument("--matrix", nargs="?", const=",".join(VARIANT_NAMES), metavar="LIST",
                   help="measure over host variants (all, or a comma-separated list of: "
                        f"{', '.join(VARIANT_NAMES)}) and print weavefast's ratios to kernel VXLAN per variant")
    p.add_argument("--loss", metavar="LIST",
                   help="comma-separated loss rates in percent (e.g. 0,0.1,1,10): TCP throughput of "
                        "weavefast and kernel VXLAN with that share of underlay datagrams dropped")
    p.add_argument("--congestion", default="bbr", metavar="NAME",
                   help="TCP congestion control of the --loss runs (default %(default)s; cubic where "
                        "the kernel lacks it)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the results (default bench-results/bench.json, "
                        f"with --scale {scale.DEFAULT_JSON})")
    p.add_argument("--png", default="bench-results/bench.png", metavar="PATH",
                   help="where to draw the chart, needs matplotlib (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="passed to each weavefast router (default 1)")
    p.add_argument("--segments", choices=("auto", "always", "never"),
                   help="passed to each weavefast router (default: the router's, auto)")
    for flag in OFFLOAD_FLAGS:
        option = f"--no-{flag.replace('_', '-')}"
        p.add_argument(option, dest=f"no_{flag}", action="store_true", help="passed to each weavefast router")
    scale.add_arguments(p)


def run(args) -> int:
    if args.scale:
        return run_scale(args)
    args.json = args.json or "bench-results/bench.json"
    try:
        systems = _parse_only(args.only)
        variants = _parse_matrix(args.matrix) if args.matrix else [DEFAULT]
        if min(args.duration, args.pings, args.repeat) < 1:
            raise ValueError("--duration, --pings and --repeat must be at least 1")
    except ValueError as e:
        print(f"weavefast bench: {e}", file=sys.stderr)
        return 2
    problem = _missing_prerequisite(need_ethtool=any(v.veth_offloads_off for v in variants))
    if problem:
        print(f"weavefast bench: {problem}", file=sys.stderr)
        return 2
    duration, pings = (1, 20) if args.quick else (args.duration, args.pings)
    router_args = ["--workers", str(args.workers)] + [
        f"--no-{flag.replace('_', '-')}" for flag in OFFLOAD_FLAGS if getattr(args, f"no_{flag}")]
    if args.segments:
        router_args += ["--segments", args.segments]
    if args.loss is not None:
        return run_loss(args, duration, router_args)
    results = {
        "command": " ".join(["weavefast", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "duration_s": duration,
        "pings": pings,
        "repeat": args.repeat,
        "router_args": router_args,
        "errors": {},
    }
    plan = [(v, [s for s in systems if s in v.systems] if args.matrix else systems) for v in variants]
    testbed.remove_leftovers(PREFIX_BASE)  # namespaces of a bench that was killed
    rounds = {(v.name, system): [] for v, chosen in plan for system in chosen}
    with _Interruptible() as stop:
        # in turns, so that a burst of load elsewhere on the machine hits one round of
        # each system rather than every round of one
        for turn in range(1, args.repeat + 1):
            for variant, chosen in plan:
                for system in chosen:
                    label = f"{variant.name}/{system}" if args.matrix else system
                    if label in results["errors"]:
                        continue
                    print(f"{label}: building the testbed (container MTU {variant.container_mtu(system)})"
                          f"{f', round {turn} of {args.repeat}' if args.repeat > 1 else ''} ...", flush=True)
                    try:
                        rounds[variant.name, system].append(measure(system, variant, duration, pings,
                                                                    router_args, label))
                    except BenchError as e:
                        print(f"{label}: FAILED: {e}", file=sys.stderr)
                        results["errors"][label] = str(e)
    if stop.signum:
        return 128 + stop.signum
    results["load_average_after"] = os.getloadavg()
    if args.repeat > 1:
        results["rounds"] = {"/".join(key): runs for key, runs in rounds.items()}
    if args.matrix:
        results["variants"] = {}
        for variant, chosen in plan:
            measured = {s: medians(rounds[variant.name, s]) for s in chosen if rounds[variant.name, s]}
            results["variants"][variant.name] = {
                "description": variant.description, "systems": measured,
                "ratios_vs_vxlan": ratios_vs_vxlan(measured)}
            if measured:
                print(f"\n{variant.name}: {variant.description}")
                print(format_table({**results, **results["variants"][variant.name]}, errors=False))
        print()
        print(format_matrix(results))
    else:
        results["systems"] = {s: medians(rounds[DEFAULT.name, s]) for s in systems if rounds[DEFAULT.name, s]}
        results["ratios_vs_vxlan"] = ratios_vs_vxlan(results["systems"])
        if results["systems"]:
            print()
            print(format_table(results))
    write_json(results, Path(args.json))
    print(f"results: {args.json}")
    if not args.matrix:
        draw_chart_or_explain(results, Path(args.png))
    return 1 if results["errors"] else 0


def run_scale(args) -> int:
    """`--scale N[,N...]` (dataplane.scale), with the same clean-up on a signal."""
    previous_handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return scale.run(args, interrupted_type=_Interrupted)
    except _Interrupted as e:
        return 128 + e.signum
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _parse_matrix(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown or not names:
        raise ValueError(f"--matrix {text!r}: choose from {', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANTS if v.name in names]


def _parse_only(text):
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise ValueError(f"--only {text!r}: choose from {', '.join(SYSTEMS)}")
    return [s for s in SYSTEMS if s in systems]  # always in the same order


def _missing_prerequisite(need_ethtool=False):
    if need_ethtool and shutil.which("ethtool") is None:
        return "ethtool is not installed (the veth-offloads-off variant needs it): apt-get install ethtool"
    if shutil.which("iperf3") is None:
        return "iperf3 is not installed: apt-get install iperf3"
    if shutil.which("ping") is None:
        return "ping is not installed: apt-get install iputils-ping"
    reason = testbed.netns_available()
    if reason:
        return f"{reason}; run it as root, e.g. `sudo weavefast bench`"
    return None


class _Interruptible:
    """Ctrl-C or SIGTERM inside the block unwinds it (each testbed tears itself
    down) and is then reported; whatever the bench's namespaces left is removed."""

    def __enter__(self):
        self.signum = 0
        self._previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind, error, traceback):
        # A signal may have cut a testbed's own teardown short: remove what is left.
        testbed.remove_leftovers(f"{PREFIX_BASE}{os.getpid()}n")
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if isinstance(error, _Interrupted):
            print("interrupted; everything removed", file=sys.stderr)
            self.signum = error.signum
            return True
        return False


def _interrupt(signum, frame):
    if os.getpid() != _main_pid:
        # A fork that inherited this handler (pyroute2 forks to make a socket in a
        # namespace and stops the child with SIGTERM): it must not unwind our stack
        # and tear down the testbed from there.
        os._exit(128 + signum)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardown short
    raise _Interrupted(signum)


# -- loss ------------------------------------------------------------------------------

LOSS_SYSTEMS = ("weavefast", "weavefast-sealed", "vxlan")


def _parse_loss(text):
    try:
        rates = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        rates = []
    if not rates or any(not 0 <= r <= 100 for r in rates):
        raise ValueError(f"--loss {text!r}: give percentages from 0 to 100, e.g. 0,0.1,1,10")
    return rates


def _congestion_control(wanted):
    """`wanted` if the kernel has it (loading its module if need be), else cubic."""
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", f"tcp_{wanted}"], capture_output=True, check=False)
    try:
        available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    except OSError:
        available = []
    return wanted if wanted in available else "cubic"


def run_loss(args, duration, router_args):
    """`--loss`: TCP 1 stream at each loss rate, weavefast and kernel VXLAN."""
    try:
        rates = _parse_loss(args.loss)
        systems = [s for s in _parse_only(args.only) if s in LOSS_SYSTEMS] or ["weavefast", "vxlan"]
    except ValueError as e:
        print(f"weavefast bench: {e}", file=sys.stderr)
        return 2
    if args.only == ",".join(SYSTEMS):
        systems = ["weavefast", "vxlan"]
    problem = _missing_prerequisite() or (None if shutil.which("nft") else
                                          "nft is not installed (--loss needs it): apt-get install nftables")
    if problem:
        print(f"weavefast bench: {problem}", file=sys.stderr)
        return 2
    congestion = _congestion_control(args.congestion)
    results = {
        "command": " ".join(["weavefast", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(), "duration_s": duration,
        "congestion_control": congestion, "router_args": router_args,
        "loss_percent": rates, "systems": {}, "errors": {},
    }
    testbed.remove_leftovers(PREFIX_BASE)
    rounds = {system: [] for system in systems}
    with _Interruptible() as stop:
        for turn in range(1, args.repeat + 1):
            for system in systems:
                if system in results["errors"]:
                    continue
                if args.repeat > 1:
                    print(f"{system}: round {turn} of {args.repeat}", flush=True)
                try:
                    rounds[system].append(measure_loss(system, rates, duration, congestion, router_args))
                except BenchError as e:
                    print(f"{system}: FAILED: {e}", file=sys.stderr)
                    results["errors"][system] = str(e)
    if stop.signum:
        return 128 + stop.signum
    results["load_average_after"] = os.getloadavg()
    results["repeat"] = args.repeat
    if args.repeat > 1:
        results["rounds"] = rounds
    for system, runs in rounds.items():
        if runs:
            results["systems"][system] = {rate: medians([run[rate] for run in runs if rate in run])
                                          for rate in runs[-1]}
    print()
    print(format_loss(results))
    write_json(results, Path(args.json))
    print(f"results: {args.json}")
    return 1 if results["errors"] else 0


def measure_loss(system, rates, duration, congestion, router_args):
    """{loss: {"tcp1_gbps", "retransmits", "sending", "dropped"}} for one system on
    one testbed, the loss rates in the order given."""
    try:
        tb = build_testbed(DEFAULT, system, switch=True)
    except Exception as e:
        raise BenchError(f"building the testbed: {type(e).__name__}: {e}") from e
    figures = {}
    with tb:
        try:
            c1, c2 = tb.containers
            if system.startswith("weavefast"):
                try:
                    tb.start_routers(extra_args=router_args + weavefast_args(DEFAULT, system))
                except (RuntimeError, TimeoutError) as e:
                    raise BenchError(f"the routers did not start: {e}") from e
                port = testbed.ROUTER_PORT
            else:
                add_vxlan(tb)
                port = VXLAN_PORT
            if not tb.ping(c1, c2.ip4, count=3, interval=0.1).ok:
                raise BenchError(f"{c1.name} cannot ping {c2.name}{_router_logs(tb)}")
            start_iperf_server(tb, c2)
            for rate in rates:
                tb.set_loss(rate, ports=(port,))
                dropped = tb.loss_dropped()
                report = iperf(tb, c1, c2, duration, ["-P", "1", "-C", congestion])
                row = {"tcp1_gbps": report["end"]["sum_received"]["bits_per_second"] / 1e9,
                       "retransmits": report["end"]["sum_sent"].get("retransmits", 0),
                       "dropped": tb.loss_dropped() - dropped}
                if system.startswith("weavefast"):
                    peer = tb.status(tb.hosts[0])["peers"][0]
                    row["sending"] = peer["segments"]["sending"]
                    row["tx_segmented"] = peer["counters"].get("tx_segmented", 0)
                figures[f"{rate:g}"] = row
                print(f"{system}: {rate:g} % loss: TCP 1 stream {row['tcp1_gbps']:.3f} Gbit/s, "
                      f"{row['retransmits']} retransmits, {row['dropped']} datagrams dropped"
                      + (f", sending {row['sending']}" if "sending" in row else ""), flush=True)
        except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError) as e:
            raise BenchError(f"{type(e).__name__}: {e}{_router_logs(tb)}") from e
    return figures


def format_loss(results):
    """One row per loss rate: each system's Gbit/s, weavefast's ratio to VXLAN."""
    systems = list(results["systems"])
    wf = [s for s in systems if s.startswith("weavefast")]
    header = ["loss %", *(f"{s} Gbit/s" for s in systems),
              *(f"{s}/vxlan" for s in wf if "vxlan" in systems), *(f"{s} sends" for s in wf)]
    rows = [header]
    for rate in results["loss_percent"]:
        key = f"{rate:g}"
        values = {s: results["systems"][s].get(key, {}) for s in systems}
        row = [key, *(_number(values[s]["tcp1_gbps"]) if "tcp1_gbps" in values[s] else "-" for s in systems)]
        if "vxlan" in systems:
            base = values["vxlan"].get("tcp1_gbps")
            row += [f"{values[s]['tcp1_gbps'] / base:.2f}x" if base and "tcp1_gbps" in values[s] else "-"
                    for s in wf]
        row += [values[s].get("sending", "-") for s in wf]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    medians_of = f"medians of {results['repeat']} rounds, " if results.get("repeat", 1) > 1 else ""
    lines.append(f"TCP 1 stream ({results['congestion_control']}), {medians_of}iperf3 runs of {results['duration_s']:g} s, "
                 "each underlay datagram of the system's UDP port dropped independently with that "
                 f"probability, both directions; {results['cpus']} CPUs, load average "
                 f"{results['load_average_before'][0]:.2f} before, {results['load_average_after'][0]:.2f} after")
    lines += [f"{s}: FAILED: {e.splitlines()[0]}" for s, e in results["errors"].items()]
    return "\n".join(lines)


# -- one system ---------------------------------------------------------------------

def measure(system, variant, duration, pings, router_args, label=None):
    """Builds the testbed for `system` on `variant`'s hosts, measures, tears it
    down; returns the figures. `label` names the run in progress lines."""
    try:
        tb = build_testbed(variant, system)
    except Exception as e:
        raise BenchError(f"building the testbed: {type(e).__name__}: {e}") from e
    with tb:
        try:
            return _measure_in(tb, system, variant, duration, pings, router_args, label or system)
        except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError) as e:
            raise BenchError(f"{type(e).__name__}: {e}{_router_logs(tb)}") from e


def build_testbed(variant, system, prefix=None, switch=False):
    """Two hosts with a container each, built as `variant` says (joined by a
    switch namespace with `switch`, where loss is made); the caller closes it
    (`with`)."""
    tb = testbed.Testbed(hosts=2, containers_per_host=1, underlay_mtu=variant.underlay_mtu,
                         overlay_mtu=variant.container_mtu(system),
                         prefix=prefix or testbed.unique_prefix(PREFIX_BASE), switch=switch)
    try:
        for host in tb.hosts:
            if variant.ipv6_disabled:
                tb.sysctl(host.netns, {"net.ipv6.conf.all.disable_ipv6": 1,
                                       "net.ipv6.conf.default.disable_ipv6": 1})
            if variant.veth_offloads_off:
                for container in host.containers:
                    for node, ifname in ((container, container.ifname), (host, f"v{container.name}")):
                        tb.run(node, ["ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off",
                                      "gro", "off"])
            if variant.operator_tap and system.startswith("weavefast"):
                tb.run(host, ["ip", "tuntap", "add", "dev", OPERATOR_TAP, "mode", "tap"])
                tb.run(host, ["ip", "link", "set", OPERATOR_TAP, "mtu", str(variant.overlay_mtu),
                              "master", host.bridge, "up"])
    except BaseException:
        tb.close()
        raise
    return tb


def weavefast_args(variant, system):
    """What `variant` and `system` add to the routers' command line."""
    args = list(variant.router_args)
    if variant.operator_tap:
        args += ["--tap", OPERATOR_TAP]
    if system == "weavefast-sealed":
        args += ["--password", BENCH_SECRET]
    return args


def _measure_in(tb, system, variant, duration, pings, router_args, label):
    c1, c2 = tb.containers
    figures = {"container_mtu": variant.container_mtu(system)}
    if system.startswith("weavefast"):
        try:
            tb.start_routers(extra_args=router_args + weavefast_args(variant, system))
        except (RuntimeError, TimeoutError) as e:  # the message holds the router's output
            raise BenchError(f"the routers did not start: {e}") from e
        status = tb.status(tb.hosts[0])
        figures["offloads"] = status["offloads"]
        figures["degradations"] = status["degradations"]
        figures["cipher"] = status["peers"][0]["session"]["cipher"]
    elif system == "vxlan":
        add_vxlan(tb)
    else:
        route_directly(tb)
    warmup = tb.ping(c1, c2.ip4, count=3, interval=0.1)
    if not warmup.ok:
        raise BenchError(f"{c1.name} cannot ping {c2.name} ({c2.ip4}):\n{warmup.output}{_router_logs(tb)}")
    start_iperf_server(tb, c2)

    rtts = ping_rtts(tb, c1, c2.ip4, pings)
    figures["ping_avg_ms"] = sum(rtts) / len(rtts)
    figures["ping_p99_ms"] = percentile(rtts, 99)
    print(f"{label}: ping avg {figures['ping_avg_ms']:.3f} ms, p99 {figures['ping_p99_ms']:.3f} ms",
          flush=True)

    routers = [host.router for host in tb.hosts if host.router]
    cpu_before = sum(map(cpu_seconds, routers))
    tcp1 = iperf(tb, c1, c2, duration, ["-P", "1"])
    cpu_used = sum(map(cpu_seconds, routers)) - cpu_before
    figures["tcp1_gbps"] = tcp1["end"]["sum_received"]["bits_per_second"] / 1e9
    figures["tcp1_retransmits"] = tcp1["end"]["sum_sent"].get("retransmits", 0)
    if routers:
        gigabytes = tcp1["end"]["sum_received"]["bytes"] / 1e9
        figures["router_cpu_s"] = cpu_used
        figures["router_cpu_s_per_gb"] = cpu_used / gigabytes if gigabytes else None
    print(f"{label}: TCP 1 stream {figures['tcp1_gbps']:.2f} Gbit/s", flush=True)

    tcp4 = iperf(tb, c1, c2, duration, ["-P", "4"])
    figures["tcp4_gbps"] = tcp4["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"{label}: TCP 4 streams {figures['tcp4_gbps']:.2f} Gbit/s", flush=True)

    udp = iperf(tb, c1, c2, duration, ["-u", "-b", "0", "-l", str(UDP_PAYLOAD)])
    received = udp["end"]["sum_received"]
    sent = udp["end"]["sum_sent"]
    figures["udp64_rx_pps"] = (received["packets"] - received["lost_packets"]) / received["seconds"]
    figures["udp64_tx_pps"] = sent["packets"] / sent["seconds"]
    print(f"{label}: UDP 64 B {figures['udp64_rx_pps'] / 1e3:.0f} kpps received "
          f"({figures['udp64_tx_pps'] / 1e3:.0f} kpps sent)", flush=True)

    if routers:
        figures["router_peak_rss_mb"] = max(map(peak_rss_mb, routers))
        statuses = {host.name: tb.status(host) for host in tb.hosts}
        figures["router_counters"] = {name: status["counters"] for name, status in statuses.items()}
        figures["router_drops"] = {name: {reason: n for reason, n in status["drops"].items() if n}
                                   for name, status in statuses.items()}
    return figures


def _router_logs(tb):
    logs = [f"\n--- {host.router.name} ---\n{host.router.output()[-2000:]}"
            for host in tb.hosts if host.router]
    return "".join(logs)


# -- the three data paths -------------------------------------------------------------

def add_vxlan(tb):
    """A kernel VXLAN device on each host's bridge, unicast to the other host."""
    h1, h2 = tb.hosts
    for host, remote in ((h1, h2), (h2, h1)):
        with IPRoute(netns=host.netns) as ipr:
            underlay = ipr.link_lookup(ifname="ul0")[0]
            ipr.link("add", ifname=VXLAN_IFNAME, kind="vxlan", vxlan_id=VXLAN_VNI,
                     vxlan_port=VXLAN_PORT, vxlan_group=remote.underlay_ip,
                     vxlan_local=host.underlay_ip, vxlan_link=underlay, mtu=tb.overlay_mtu)
            index = ipr.link_lookup(ifname=VXLAN_IFNAME)[0]
            ipr.link("set", index=index, master=ipr.link_lookup(ifname=host.bridge)[0], state="up")


def route_directly(tb):
    """No encapsulation: each host routes the other's container over the underlay and
    answers its own container's ARP for it (proxy ARP), so the containers keep their
    one-subnet addressing."""
    h1, h2 = tb.hosts
    for host, remote in ((h1, h2), (h2, h1)):
        tb.sysctl(host.netns, {"net.ipv4.ip_forward": 1,
                               f"net.ipv4.conf.{host.bridge}.proxy_arp": 1})
        with IPRoute(netns=host.netns) as ipr:
            bridge = ipr.link_lookup(ifname=host.bridge)[0]
            underlay = ipr.link_lookup(ifname="ul0")[0]
            for container in host.containers:
                ipr.route("add", dst=f"{container.ip4}/32", oif=bridge)
            for container in remote.containers:
                ipr.route("add", dst=f"{container.ip4}/32", gateway=remote.underlay_ip, oif=underlay)


# -- measurements ---------------------------------------------------------------------

def start_iperf_server(tb, container, timeout=10.0):
    tb.start(container, ["iperf3", "-s", "-p", str(IPERF_PORT)], name=f"{container.netns}-iperf3")

    def listening():
        result = tb.run(container, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"], check=False)
        return result.stdout.strip()

    tb.wait_for(listening, timeout=timeout, what=f"iperf3 server in {container.name}")


def iperf(tb, client, server, duration, extra, attempts=3):
    """One iperf3 client run from `client` to `server`; its JSON report."""
    argv = ["iperf3", "-c", server.ip4, "-p", str(IPERF_PORT), "-t", str(duration), "-J", *extra]
    for attempt in range(attempts):
        result = tb.run(client, argv, timeout=duration + 30, check=False)
        try:
            report = json.loads(result.stdout)
        except ValueError:
            raise BenchError(f"iperf3 {' '.join(extra)}: no JSON report\n{result.stdout}{result.stderr}"
                             f"{_router_logs(tb)}")
        error = report.get("error")
        if not error:
            return report
        if "busy" not in error:  # the server may still be closing the previous test
            break
        time.sleep(1.0)
    raise BenchError(f"iperf3 {' '.join(extra)}: {error}{_router_logs(tb)}")


def ping_rtts(tb, src, dst_ip, count, interval=0.01):
    """The RTT of each of `count` pings `interval` seconds apart, in ms."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", dst_ip]
    result = tb.run(src, argv, timeout=count * interval + 30, check=False)
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", result.stdout)]
    if not rtts:
        raise BenchError(f"ping {dst_ip}: no replies\n{result.stdout}{result.stderr}{_router_logs(tb)}")
    return rtts


def percentile(values, pct):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def cpu_seconds(process):
    """utime + stime of `process` (all its threads), in seconds."""
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def peak_rss_mb(process):
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) / 1024


# -- reporting --------------------------------------------------------------------------

def medians(runs):
    """One system's figures over its rounds: the median of each number; anything
    else (offloads, counters) from the last round."""
    merged = dict(runs[-1])
    for key, value in merged.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in runs if r.get(key) is not None)
    return merged


def ratios_vs_vxlan(systems):
    """{system: {metric: value / kernel VXLAN's value}} for the metrics both have."""
    baseline = systems.get("vxlan")
    if not baseline:
        return {}
    return {name: {key: figures[key] / baseline[key]
                   for key, *_ in METRICS if figures.get(key) and baseline.get(key)}
            for name, figures in systems.items()}


MATRIX_COLUMNS = (("tcp1_gbps", "TCP 1"), ("tcp4_gbps", "TCP 4"), ("udp64_rx_pps", "UDP 64 B"),
                  ("ping_avg_ms", "ping avg"), ("ping_p99_ms", "ping p99"))


def format_matrix(results):
    """One row per variant and weavefast system: ratios to kernel VXLAN of the
    same variant, the routers' CPU per GB, the offloads off."""
    header = ["variant", "system", *(label for _, label in MATRIX_COLUMNS), "CPU s/GB", "offloads off"]
    rows = [header]
    for name, variant in results["variants"].items():
        for system, figures in variant["systems"].items():
            if not system.startswith("weavefast"):
                continue
            ratios = variant["ratios_vs_vxlan"].get(system, {})
            cpu = figures.get("router_cpu_s_per_gb")
            off = [k for k, on in figures.get("offloads", {}).items() if not on]
            rows.append([name, system, *(f"{ratios[key]:.2f}x" if key in ratios else "-"
                                         for key, _ in MATRIX_COLUMNS),
                         "-" if cpu is None else f"{cpu:.2f}", ", ".join(off) or "none"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"ratios of weavefast to kernel VXLAN measured in the same variant and run (higher is better "
                 f"for TCP and UDP, lower for ping); iperf3 runs of {results['duration_s']:g} s, "
                 f"{results['pings']} pings; {results['cpus']} CPUs, load average "
                 f"{results['load_average_before'][0]:.2f} before, {results['load_average_after'][0]:.2f} after")
    lines += [f"{label}: FAILED: {error.splitlines()[0]}" for label, error in results["errors"].items()]
    return "\n".join(lines)


def format_table(results, errors=True):
    systems = list(results["systems"])
    ratios = results["ratios_vs_vxlan"]
    header = ["", *systems]
    rows = [header]
    for key, label, unit, scale, better in METRICS:
        row = [f"{label} ({unit}, {better} is better)"]
        for system in systems:
            value = results["systems"][system].get(key)
            cell = "-" if value is None else _number(value * scale)
            if value is not None and key in ratios.get(system, {}) and system != "vxlan":
                cell += f" ({ratios[system][key]:.2f}x)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    medians_of = f"medians of {results['repeat']} rounds; " if results["repeat"] > 1 else ""
    ratio_note = "(x) = ratio to kernel VXLAN" if ratios else "no ratios: kernel VXLAN was not measured"
    notes = [f"{ratio_note}; {medians_of}iperf3 runs of {results['duration_s']:g} s, "
             f"{results['pings']} pings 10 ms apart; {results['cpus']} CPUs, load average "
             f"{results['load_average_before'][0]:.2f} before, {results['load_average_after'][0]:.2f} after"]
    for system, error in results["errors"].items() if errors else ():
        notes.append(f"{system}: FAILED: {error.splitlines()[0]}")
    return "\n".join(lines + notes)


def _number(x):
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def write_json(results, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def draw_chart_or_explain(results, path):
    try:
        import matplotlib
    except ImportError:
        print("no chart: matplotlib is not installed (pip install matplotlib, "
              "or apt-get install python3-matplotlib)")
        return
    matplotlib.use("Agg")
    from matplotlib import pyplot

    systems = list(results["systems"])
    metrics = [m for m in METRICS if any(results["systems"][s].get(m[0]) for s in systems)]
    if not metrics:
        return
    colours = {"weavefast": "tab:orange", "weavefast-sealed": "tab:red", "vxlan": "tab:blue", "direct": "tab:gray"}
    columns = min(4, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (key, label, unit, scale, better) in zip(axes.flat, metrics):
        values = [(results["systems"][s].get(key) or 0) * scale for s in systems]
        labels = [_number(v) if v else "-" for v in values]
        for i, system in enumerate(systems):
            ratio = results["ratios_vs_vxlan"].get(system, {}).get(key)
            if ratio is not None and system != "vxlan":
                labels[i] += f"\n{ratio:.2f}x VXLAN"
        bars = ax.bar(systems, values, color=[colours[s] for s in systems])
        ax.bar_label(bars, labels=labels, fontsize=8)
        ax.set_title(f"{label}\n({unit}, {better} is better)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.25)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    figure.suptitle(f"weavefast bench, {results['started']} (kernel {results['kernel']}, "
                    f"{results['cpus']} CPUs)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    print(f"chart: {path}")
