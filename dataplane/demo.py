"""`weavefast demo`: two simulated hosts in network namespaces, end to end.

Builds two hosts joined by a veth underlay with a container on each, starts a
router on each host, pings across the overlay (IPv4 and IPv6), sends a bulk TCP
transfer and checks its sha256 digest, prints a summary, and removes everything.
Nothing is created outside the namespaces it makes.
"""
import sys

from dataplane import testbed

SUMMARY_COUNTERS = ("tap_rx_frames", "tap_tx_frames", "udp_tx_datagrams", "udp_rx_datagrams")


def add_arguments(parser):
    parser.add_argument("--megabytes", type=int, default=200, metavar="MB",
                        help="size of the TCP transfer (default: %(default)s)")
    parser.add_argument("--underlay-mtu", type=int, default=1500, metavar="N",
                        help="MTU of the simulated underlay (default: %(default)s)")


def run(args) -> int:
    reason = testbed.netns_available()
    if reason:
        print(f"weavefast demo: {reason}; run it as root, e.g. `sudo weavefast demo`",
              file=sys.stderr)
        return 2
    try:
        with testbed.Testbed(hosts=2, containers_per_host=1, underlay_mtu=args.underlay_mtu) as tb:
            failures, summary = _demo(tb, args.megabytes << 20)
            print("tearing down ...", flush=True)
    except KeyboardInterrupt:
        print("interrupted; everything removed", file=sys.stderr)
        return 130
    except Exception as e:  # an operator wants one line, not a traceback
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if failures:
        print(f"FAILED: {', '.join(failures)}")
        return 1
    print(summary)
    return 0


def _demo(tb, nbytes):
    """Runs the steps, printing as it goes; returns (what failed, the summary line)."""
    h1, h2 = tb.hosts
    c1, c2 = tb.containers
    print(f"hosts {h1.name} ({h1.underlay_ip}) and {h2.name} ({h2.underlay_ip}), underlay MTU "
          f"{tb.underlay_mtu}; containers {c1.name} ({c1.ip4}) and {c2.name} ({c2.ip4}), "
          f"overlay MTU {tb.overlay_mtu}")
    print("starting routers ...", flush=True)
    tb.start_routers()
    failures = []

    pings = {}
    for family, address in (("IPv4", c2.ip4), ("IPv6", c2.ip6)):
        pings[family] = result = tb.ping(c1, address, count=5)
        if result.ok:
            print(f"ping {c1.name} -> {c2.name} {family}: {result.received}/{result.transmitted}, "
                  f"rtt avg {result.rtt_avg_ms:.3f} ms")
        else:
            failures.append(f"ping {family}")
            print(f"ping {c1.name} -> {c2.name} {family} FAILED:\n{result.output}")

    if failures:  # a transfer over an overlay that does not ping would only time out
        return failures, ""
    print(f"sending {nbytes >> 20} MB over TCP {c1.name} -> {c2.name} ...", flush=True)
    transfer = tb.tcp_transfer(c1, c2, nbytes)
    if transfer.intact:
        print(f"transfer: {transfer.bytes_received} bytes, sha256 verified, "
              f"{transfer.mbit_per_s:.0f} Mbit/s")
    else:
        failures.append("transfer")
        print(f"transfer FAILED: sent {transfer.bytes_sent} bytes sha256 {transfer.sent_sha256}, "
              f"received {transfer.bytes_received} bytes sha256 {transfer.received_sha256}")

    print("router counters:")
    for host in tb.hosts:
        status = tb.status(host)
        counters = ", ".join(f"{name} {status['counters'].get(name, 0)}"
                             for name in SUMMARY_COUNTERS)
        drops = ", ".join(f"{reason} {n}" for reason, n in status["drops"].items() if n)
        print(f"  {host.name}: {counters}; drops: {drops or 'none'}")

    summary = (f"OK: ping rtt {pings['IPv4'].rtt_avg_ms:.3f} ms, "
               f"TCP {transfer.mbit_per_s:.0f} Mbit/s, {transfer.bytes_received} bytes verified"
               if not failures else "")
    return failures, summary
