"""`weavefast bench --scale N[,N...]`: how the mesh of N routers converges and idles.

For each N, a fresh testbed (`dataplane.testbed`): N host namespaces on one underlay
bridge, a router on every host, containers on only a few of them (by default 2 on
each of 3 hosts: the first, the middle and the last). The routers are started the way
a new user would: h1's first (and waited for), then every other one right after the
other, each with `--peer` h1's address only, so that all but one link must be
learned through the mesh. Then:

- convergence: seconds from the last router's start until every router's status
  shows all N-1 others "established". Statuses are polled every `poll_interval`
  (0.5 s), with 2-second timeouts, 4 at a time, only from the routers not yet
  complete, and at most `max_polls_per_s` (32) a second in all: a status of 63
  peers is about 40 KB and costs its router a few ms of CPU, so polling 64 routers
  flat out would itself load a 2-core machine. Once all were seen complete, one
  round over all confirms it. The figure is taken from the routers' own clocks:
  the latest `since` of an established peer in that confirming round (the moment
  the last link came up), so it does not depend on how often polls come. Without
  convergence within `converge_timeout`: the min / median / max of established
  peers per router;
- idle, over `idle_window` seconds starting `settle` seconds after convergence:
  bytes/s in + out on each host's underlay link (its port on the underlay bridge),
  mean and max over the hosts; each router's CPU (utime + stime from /proc, percent
  of one core), mean, max and all routers together; no status is polled meanwhile;
- memory: each router's VmRSS at the end of the window, max and mean;
- pings: every ordered pair of containers (2 pings each, 10 s deadline), ok / total;
- flaps: how many times a router saw a peer leave "established" during the run,
  summed over routers, from two sources, each a lower bound (the larger is
  reported). Status polls: every poll compares each peer's state and `since` with
  the previous poll of that router; an established peer whose `since` changed (it
  left and came back between two polls), one no longer established, or one gone
  from the table, is one flap. This needs no log format and misses no flap of a
  link after it first saw it established (several flaps of one link between two
  polls count as one), but cannot see what happened before. The routers' logs
  (they run with `-v`): a peer's "established" lines beyond the first. `idle`
  counts the flaps polling first saw after convergence; that is complete, since
  every router was polled with every peer up at convergence.

The neighbour table: the testbed gives every host permanent ARP entries for every
other host (see `dataplane.testbed`), which the kernel's global limit
(`net.ipv4.neigh.default.gc_thresh3`, 1024 entries for all namespaces together)
does not apply to. With `static_neighbours=False`, the gc_thresh sysctls are raised
for the run instead and restored afterwards (unless someone changed them meanwhile).

For reuse (the store-based variant, other liveness settings): `router_args` go to
every router; `router_args_for(host)` adds per-host ones; `join=False` starts
routers without any `--peer` (they must find each other through a store given in
the args); `before_routers(tb)` runs once the namespaces exist, before any router
(to start an etcd in a namespace, say); `on_converged(tb, results)` runs with the
whole mesh up, before the idle window (to profile the routers); `save_logs` keeps
the routers' output; `idle_window`, `settle`, `converge_timeout`, `poll_interval`
and the container placement are parameters of `measure_scale`. From the command
line: `--router-args`, `--no-join`, `--idle-window`, `--converge-timeout`,
`--poll-interval`, `--containers`, `--logs`, `--json`.

Status fields this relies on, and nothing else of the router: `peers[].name`,
`.state` ("established") and `.since` (the time of the last state change).
"""
import concurrent.futures
import contextlib
import http.client
import itertools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import IPRoute

from dataplane import testbed

PREFIX_BASE = "wfs"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ESTABLISHED = "established"
NEIGH_SYSCTLS = tuple(f"net.ipv4.neigh.default.gc_thresh{i}" for i in (1, 2, 3))
DEFAULT_JSON = "bench-results/scale.json"


class ScaleError(Exception):
    """The harness could not measure (a router died, the testbed failed)."""


# -- what the routers say -------------------------------------------------------------

class FlapCounter:
    """Counts peers leaving "established", from successive status snapshots."""

    def __init__(self):
        self._up = {}      # (router, peer) -> ("up", `since` of its established state) or None
        self.events = []   # (monotonic time seen, router, peer, what)

    def observe(self, router, status, expected, seen_at):
        """`status`: a router's status JSON; `expected`: the peer names it should have."""
        current = {}
        for peer in status.get("peers", ()):
            name = peer.get("name")
            if name not in expected:
                continue
            if peer.get("state") == ESTABLISHED:
                current[name] = (ESTABLISHED, peer.get("since"), None)
            elif name not in current:
                current[name] = (peer.get("state"), None, peer.get("last_error"))
        for name in expected:
            key = (router, name)
            before = self._up.get(key)
            state, since, error = current.get(name, ("gone", None, None))
            if state == ESTABLISHED:
                if before is not None and None not in (since, before[1]) and since != before[1]:
                    self.events.append((seen_at, router, name, "re-established"))
                self._up[key] = ("up", since)
            else:
                if before is not None:
                    self.events.append((seen_at, router, name,
                                        f"{state}: {error}" if error else state))
                self._up[key] = None

    def count(self, after=None):
        return sum(1 for t, *_ in self.events if after is None or t > after)

    def examples(self, after=None, limit=10):
        return [f"{router}: {peer} {what}" for t, router, peer, what in self.events
                if after is None or t > after][:limit]


ESTABLISHED_LINE = re.compile(r"^weavefast: (\S+) \(peer id \d+\) established", re.M)


def reestablished_in_logs(outputs):
    """Links that came up again, from the routers' `-v` log lines ("NAME (peer id N)
    established", one per link coming up): per router, such lines beyond the first for
    each peer, summed. None when no router logged any such line (not run with -v, or
    the line's wording changed), rather than a 0 that would mean no flap."""
    total, matched = 0, False
    for output in outputs.values():
        names = ESTABLISHED_LINE.findall(output)
        matched = matched or bool(names)
        total += len(names) - len(set(names))
    return total if matched else None


def established_names(status):
    return {p["name"] for p in status.get("peers", ()) if p.get("state") == ESTABLISHED}


class StatusPoller:
    """Fetches routers' statuses a few at a time, each with a short timeout."""

    def __init__(self, tb, timeout=2.0, parallel=4):
        self.tb = tb
        self.timeout = timeout
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel,
                                                          thread_name_prefix="scale-status")
        self.requests = 0
        self.failures = 0

    def _one(self, host):
        try:
            return self.tb.status(host, timeout=self.timeout), time.monotonic()
        except (OSError, http.client.HTTPException, ValueError, RuntimeError):
            return None, time.monotonic()

    def fetch(self, hosts):
        """[(host, status or None, monotonic time of the answer)] in the order of `hosts`."""
        results = [(host, *answer) for host, answer in zip(hosts, self.pool.map(self._one, hosts))]
        self.requests += len(hosts)
        self.failures += sum(1 for _, status, _ in results if status is None)
        return results

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


# -- host-side figures ------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of `pid` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) / 1024


def underlay_bytes(tb):
    """{host name: bytes in + out on its underlay link so far}, from one netlink dump
    of the underlay bridge's ports (a host's in is its port's out)."""
    if tb.switch_netns:
        with IPRoute(netns=tb.switch_netns) as ipr:
            stats = {link.get("ifname"): link.get("IFLA_STATS64") for link in ipr.get_links()}
        return {h.name: stats[h.name]["rx_bytes"] + stats[h.name]["tx_bytes"] for h in tb.hosts}
    totals = {}
    for host in tb.hosts:  # one or two hosts: no switch, ask each host about its ul0
        with IPRoute(netns=host.netns) as ipr:
            links = ipr.link_lookup(ifname="ul0")
            stats = ipr.get_links(links[0])[0].get("IFLA_STATS64") if links else None
        totals[host.name] = stats["rx_bytes"] + stats["tx_bytes"] if stats else 0
    return totals


@contextlib.contextmanager
def raised_neighbour_limits(entries):
    """Raise the kernel's global neighbour-table thresholds so that `entries` fit;
    put the old values back afterwards, unless they were changed meanwhile."""
    def read():
        return {name: int(Path("/proc/sys", *name.split(".")).read_text()) for name in NEIGH_SYSCTLS}

    def write(values):
        for name, value in values.items():
            Path("/proc/sys", *name.split(".")).write_text(str(value))

    before = read()
    wanted = {NEIGH_SYSCTLS[0]: max(before[NEIGH_SYSCTLS[0]], entries),
              NEIGH_SYSCTLS[1]: max(before[NEIGH_SYSCTLS[1]], 2 * entries),
              NEIGH_SYSCTLS[2]: max(before[NEIGH_SYSCTLS[2]], 4 * entries)}
    if wanted == before:
        yield before
        return
    # thresh3 first when raising: the kernel wants thresh1 <= thresh2 <= thresh3 only loosely,
    # but a reader in between should never see a lower hard limit than before
    write(dict(reversed(list(wanted.items()))))
    try:
        yield wanted
    finally:
        if read() == wanted:
            write(before)


def container_hosts(tb, count):
    """`count` hosts spread over the testbed: the first, the last, the ones between."""
    n = len(tb.hosts)
    if count >= n:
        return list(tb.hosts)
    if count == 1:
        return [tb.hosts[0]]
    picks = sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
    return [tb.hosts[i] for i in picks]


def _summary(values):
    values = list(values)
    if not values:
        return {"mean": None, "max": None, "min": None}
    return {"mean": statistics.fmean(values), "max": max(values), "min": min(values)}


# -- the measurement ----------------------------------------------------------------------

def measure_scale(hosts, *, containers_on=3, containers_per_host=2, router_args=(),
                  router_args_for=None, join=True, before_routers=None, on_converged=None,
                  idle_window=20.0, settle=2.0, converge_timeout=120.0, poll_interval=0.5,
                  max_polls_per_s=32, static_neighbours=True, prefix=None, save_logs=None,
                  log=print):
    """Builds the testbed, starts the routers, measures (see the module docstring),
    tears everything down (also on failure or a signal raised as an exception);
    returns the figures as a dict.

    Hooks, for reuse: `router_args` go to every router, `router_args_for(host)` adds
    that host's own; `join=False` leaves out `--peer` (routers that meet through a
    store in their args); `before_routers(tb)` runs before the first router starts;
    `on_converged(tb, results)` once the wait for convergence is over (converged or
    not, `results["converged"]` says), before the idle window, with every router
    running (to profile them, say). `save_logs`: a directory that gets each router's
    output (`h1.log`, ...) before the testbed goes."""
    if hosts < 2:
        raise ValueError("a scale run needs at least 2 hosts")
    neighbour_limits = (contextlib.nullcontext() if static_neighbours
                        else raised_neighbour_limits(hosts * hosts + 64))
    with neighbour_limits:
        started = time.monotonic()
        tb = testbed.Testbed(hosts=hosts, containers_per_host=0,
                             prefix=prefix or testbed.unique_prefix(PREFIX_BASE),
                             static_neighbours=static_neighbours)
        with tb:
            for host in container_hosts(tb, containers_on):
                for _ in range(containers_per_host):
                    tb.add_container(host)
            built_s = time.monotonic() - started
            log(f"{hosts} hosts: testbed built in {built_s:.1f} s "
                f"({len(tb.containers)} containers on {containers_on} hosts)")
            if before_routers:
                before_routers(tb)
            poller = StatusPoller(tb)
            opts = dict(router_args=router_args, router_args_for=router_args_for, join=join,
                        on_converged=on_converged, idle_window=idle_window, settle=settle,
                        converge_timeout=converge_timeout, poll_interval=poll_interval,
                        max_polls_per_s=max_polls_per_s, log=log)
            try:
                results = _measure_in(tb, poller, **opts)
            finally:
                poller.close()
                if save_logs:
                    _save_logs(tb, Path(save_logs))
            results["testbed_build_s"] = built_s
            results["static_neighbours"] = static_neighbours
            return results


def _save_logs(tb, directory):
    directory.mkdir(parents=True, exist_ok=True)
    for host in tb.hosts:
        if host.router:
            (directory / f"{host.name}.log").write_text(host.router.output())


def _router_argv(tb, host, router_args, router_args_for):
    # -v: the routers log each link coming up, which the flap count reads as well
    return ["-v", *router_args, *(router_args_for(host) if router_args_for else ())]


def _check_alive(tb):
    dead = [h for h in tb.hosts if h.router and not h.router.alive()]
    if dead:
        h = dead[0]
        raise ScaleError(f"{len(dead)} router(s) exited, {h.name}'s with {h.router.popen.returncode}:\n"
                         f"{h.router.output()[-2000:]}")


def _measure_in(tb, poller, *, router_args, router_args_for, join, on_converged, idle_window,
                settle, converge_timeout, poll_interval, max_polls_per_s, log):
    n = len(tb.hosts)
    first = tb.hosts[0]
    expected = {h.name: {o.netns for o in tb.hosts if o is not h} for h in tb.hosts}
    flaps = FlapCounter()
    results = {"hosts": n, "containers": len(tb.containers),
               "container_hosts": sorted({c.host.name for c in tb.containers}, key=lambda s: int(s[1:])),
               "join": f"--peer {first.underlay_ip}" if join else "none",
               "router_args": list(router_args)}

    # -- start, as a user would: h1, then the others one after another
    t0 = time.monotonic()
    tb.start_router(first, peers=[], extra_args=_router_argv(tb, first, router_args, router_args_for),
                    wait=False)
    try:
        tb.wait_ready(first, timeout=60)
    except (RuntimeError, TimeoutError) as e:
        raise ScaleError(f"h1's router did not start: {e}") from e
    first_ready = time.monotonic()
    for host in tb.hosts[1:]:
        tb.start_router(host, peers=[first] if join else [],
                        extra_args=_router_argv(tb, host, router_args, router_args_for), wait=False)
    last_start = time.monotonic()
    harness_cpu_before = _own_cpu_seconds()
    last_start_wall = time.time() - (time.monotonic() - last_start)
    results["first_router_ready_s"] = first_ready - t0
    results["started_in_s"] = last_start - first_ready
    log(f"{n} hosts: {n} routers started in {last_start - t0:.1f} s; waiting for the mesh ...")

    # -- convergence
    pending = {h.name for h in tb.hosts}
    counts = {h.name: 0 for h in tb.hosts}
    ready_at = {}
    startup_cpu = {}  # CPU seconds a router had used when its status API first answered
    deadline = last_start + converge_timeout
    converged = False
    confirm_at = None
    next_report = last_start + 10
    while True:
        round_start = time.monotonic()
        _check_alive(tb)
        confirming = not pending
        targets = [h for h in tb.hosts if confirming or h.name in pending]
        fetched = poller.fetch(targets)
        sinces = []
        for host, status, at in fetched:
            if status is None:
                if confirming:
                    pending.add(host.name)
                continue
            if host.name not in ready_at:
                ready_at[host.name] = at
                startup_cpu[host.name] = cpu_seconds(host.router.pid)
            flaps.observe(host.name, status, expected[host.name], at)
            established = established_names(status) & expected[host.name]
            counts[host.name] = len(established)
            if counts[host.name] == n - 1:
                pending.discard(host.name)
                sinces += [p["since"] for p in status["peers"]
                           if p.get("name") in established and p.get("since") is not None]
            else:
                pending.add(host.name)
        if confirming and not pending:
            converged = True
            confirm_at = time.monotonic()
            break
        now = time.monotonic()
        if now > deadline:
            # fresh counts of every router for the report
            for host, status, at in poller.fetch(tb.hosts):
                if status is not None:
                    flaps.observe(host.name, status, expected[host.name], at)
                    counts[host.name] = len(established_names(status) & expected[host.name])
            break
        if now > next_report:
            log(f"{n} hosts: after {now - last_start:.0f} s, {n - len(pending)} of {n} routers "
                f"see every peer established")
            next_report = now + 10
        period = max(poll_interval, len(targets) / max_polls_per_s)
        time.sleep(max(0.0, period - (time.monotonic() - round_start)))

    results["converged"] = converged
    results["ready_after_s"] = (max(ready_at.values()) - last_start) if len(ready_at) == n else None
    if converged:
        # the routers' own clocks: when the last link of the confirming round came up
        latest = max(sinces) if sinces else None
        by_since = latest - last_start_wall if latest is not None else None
        by_poll = confirm_at - last_start
        results["converged_after_s"] = by_since if by_since is not None and 0 <= by_since <= by_poll \
            else by_poll
        results["converged_seen_after_s"] = by_poll
        log(f"{n} hosts: converged after {results['converged_after_s']:.1f} s "
            f"(confirmed by polling after {by_poll:.1f} s)")
    else:
        results["converged_after_s"] = None
        log(f"{n} hosts: NOT converged after {converge_timeout:g} s")
    values = sorted(counts.values())
    results["established_peers"] = {"min": values[0], "median": statistics.median(values),
                                    "max": values[-1], "wanted": n - 1}
    results["status_polls"] = poller.requests
    results["status_polls_per_s"] = poller.requests / max(1e-3, time.monotonic() - last_start)
    results["status_poll_failures"] = poller.failures
    results["cpu_s_when_ready"] = _summary(startup_cpu.values())
    results["cpu_s_after_wait"] = _summary(cpu_seconds(h.router.pid) for h in tb.hosts)
    # what the harness itself cost while it polled (it must not be what loads the machine)
    harness_cpu = _own_cpu_seconds() - harness_cpu_before
    results["harness"] = {"cpu_s_during_wait": harness_cpu,
                          "cpu_percent_during_wait": 100 * harness_cpu / (time.monotonic() - last_start),
                          "open_fds": len(os.listdir("/proc/self/fd"))}
    results["established_per_host"] = counts
    if on_converged:
        on_converged(tb, results)
    converged_mark = time.monotonic()

    # -- idle
    time.sleep(settle)
    _check_alive(tb)
    pids = {h.name: h.router.pid for h in tb.hosts}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    bytes_before, t_before = underlay_bytes(tb), time.monotonic()
    log(f"{n} hosts: measuring {idle_window:g} s of idle ...")
    time.sleep(idle_window)
    bytes_after, t_after = underlay_bytes(tb), time.monotonic()
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    window = t_after - t_before
    _check_alive(tb)
    traffic = {name: (bytes_after[name] - bytes_before[name]) / window for name in bytes_before}
    cpu = {name: 100 * (cpu_after[name] - cpu_before[name]) / window for name in pids}
    rss = {name: rss_mb(pid) for name, pid in pids.items()}
    results["idle"] = {
        "window_s": window,
        "underlay_bytes_per_s": _summary(traffic.values()),
        "router_cpu_percent": {**_summary(cpu.values()), "total": sum(cpu.values())},
        "per_host": {name: {"underlay_bytes_per_s": traffic[name], "router_cpu_percent": cpu[name],
                            "rss_mb": rss[name]} for name in pids},
    }
    results["rss_mb"] = _summary(rss.values())
    for host, status, at in poller.fetch(tb.hosts):
        if status is not None:
            flaps.observe(host.name, status, expected[host.name], at)
    idle_flaps = flaps.count(after=converged_mark)

    # -- pings between every ordered pair of containers
    pairs = list(itertools.permutations(tb.containers, 2))
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda pair: tb.ping(pair[0], pair[1].ip4, count=2, deadline=10),
                                 pairs))
    failed = [f"{a.name}({a.host.name}) -> {b.name}({b.host.name})"
              for (a, b), r in zip(pairs, outcomes) if not r.ok]
    results["pings"] = {"ok": len(pairs) - len(failed), "total": len(pairs), "failed": failed}
    for host, status, at in poller.fetch(tb.hosts):
        if status is not None:
            flaps.observe(host.name, status, expected[host.name], at)
    from_logs = reestablished_in_logs({h.name: h.router.output() for h in tb.hosts})
    total = max(flaps.count(), from_logs or 0)
    results["flaps"] = {"total": total, "idle": idle_flaps, "seen_by_polling": flaps.count(),
                        "seen_by_polling_before_convergence":
                            flaps.count() - flaps.count(after=converged_mark),
                        "reestablished_in_logs": from_logs, "examples": flaps.examples()}
    log(f"{n} hosts: pings {results['pings']['ok']}/{len(pairs)}, flaps {total} "
        f"({idle_flaps} while idle)")
    return results


# -- membership through etcd ------------------------------------------------------------------

ETCD_PORT = 2379


class StoreOnFirstHost:
    """`before_routers` for the store variant: a one-member etcd (Debian's etcd-server)
    on h1's underlay address (stopped with the testbed; `remove()` its data after);
    `url` is what the routers get as --store."""

    def __init__(self):
        self.url = None
        self.data = Path(tempfile.mkdtemp(prefix="wfscale-etcd-"))

    def remove(self):
        shutil.rmtree(self.data, ignore_errors=True)

    def __call__(self, tb):
        if shutil.which("etcd") is None:
            raise ScaleError("the store variant needs etcd (apt-get install etcd-server)")
        first = tb.hosts[0]
        client = f"http://{first.underlay_ip}:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
        tb.start(first, ["etcd", "--name", "scale", "--data-dir", str(self.data / "etcd"),
                         "--listen-client-urls", client, "--advertise-client-urls", client,
                         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                         "--initial-cluster", f"scale={peer}"], name=f"{first.netns}-etcd")
        deadline = time.monotonic() + 30
        while True:
            try:
                with tb.socket(first, socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1)
                    sock.connect((first.underlay_ip, ETCD_PORT))
                    sock.sendall(b"GET /version HTTP/1.0\r\n\r\n")
                    if b"etcdserver" in sock.recv(4096):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ScaleError(f"etcd on {first.name} did not answer in 30 s")
            time.sleep(0.2)
        self.url = f"etcd://{first.underlay_ip}:{ETCD_PORT}"


# -- the command ------------------------------------------------------------------------------

def add_arguments(p):
    """Options of `weavefast bench` for --scale (added to bench's own)."""
    g = p.add_argument_group("scale (--scale)")
    g.add_argument("--scale", metavar="N[,N...]",
                   help="instead of the data path: start N routers joined through the first one, "
                        "and report convergence, idle traffic, CPU, memory, pings and flaps")
    g.add_argument("--idle-window", type=float, default=20.0, metavar="SECONDS",
                   help="idle measurement after convergence (default %(default)s)")
    g.add_argument("--converge-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up waiting for the mesh after this long (default %(default)s)")
    g.add_argument("--router-args", default="", metavar="'ARGS'",
                   help="extra arguments for every router, e.g. --router-args='--down-after 5'")
    g.add_argument("--no-join", action="store_true",
                   help="start the routers without --peer (they must meet through a store given "
                        "in --router-args)")
    g.add_argument("--membership-store", action="store_true",
                   help="membership through etcd: start one on h1 and give every router --store "
                        "and no --peer (needs etcd-server)")
    g.add_argument("--containers", default="3x2", metavar="HOSTSxPER_HOST",
                   help="containers: on how many hosts, how many each (default %(default)s)")
    g.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS",
                   help="status polling while waiting for the mesh (default %(default)s)")
    g.add_argument("--logs", metavar="DIR",
                   help="keep every router's output in DIR/<hosts>/h<i>.log")


def parse_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 2:
        raise ValueError(f"--scale {text!r}: give host counts of 2 or more, e.g. --scale 16,32")
    return sizes


def parse_containers(text):
    """'3x2' -> (3, 2): on how many hosts, how many containers each."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text.lower())
    if not match:
        raise ValueError(f"--containers {text!r}: give HOSTSxPER_HOST, e.g. 3x2")
    return int(match[1]), int(match[2])


def run(args, interrupted_type=KeyboardInterrupt):
    """`weavefast bench --scale ...`; `interrupted_type` is the exception bench's
    signal handler raises."""
    try:
        sizes = parse_sizes(args.scale)
        on, per_host = parse_containers(args.containers)
        router_args = shlex.split(args.router_args)
        if min(on, per_host) < 0 or args.idle_window <= 0 or args.poll_interval <= 0 \
                or args.converge_timeout <= 0:
            raise ValueError("--containers, --idle-window, --poll-interval and --converge-timeout "
                             "must be positive")
    except ValueError as e:
        print(f"weavefast bench: {e}", file=sys.stderr)
        return 2
    reason = testbed.netns_available()
    if reason:
        print(f"weavefast bench: {reason}; run it as root, e.g. `sudo weavefast bench --scale 16`",
              file=sys.stderr)
        return 2
    results = {"command": " ".join(["weavefast", *sys.argv[1:]]),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernel": platform.release(),
               "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
               "idle_window_s": args.idle_window, "converge_timeout_s": args.converge_timeout,
               "router_args": router_args, "runs": [], "errors": {}}
    testbed.remove_leftovers(PREFIX_BASE)
    try:
        for n in sizes:
            try:
                store = StoreOnFirstHost() if args.membership_store else None
                results["runs"].append(measure_scale(
                    n, containers_on=on, containers_per_host=per_host, router_args=router_args,
                    router_args_for=(lambda host, store=store: ["--store", store.url]) if store else None,
                    before_routers=store, join=not (args.no_join or store), idle_window=args.idle_window,
                    converge_timeout=args.converge_timeout, poll_interval=args.poll_interval,
                    save_logs=Path(args.logs) / str(n) if args.logs else None,
                    log=lambda m: print(m, flush=True)))
            except (ScaleError, OSError, RuntimeError, TimeoutError) as e:
                print(f"{n} hosts: FAILED: {e}", file=sys.stderr)
                results["errors"][str(n)] = f"{type(e).__name__}: {e}"
            finally:
                if store:
                    store.remove()
    except interrupted_type:
        print("interrupted; everything removed", file=sys.stderr)
        raise
    finally:
        testbed.remove_leftovers(f"{PREFIX_BASE}{os.getpid()}n")
    results["load_average_after"] = os.getloadavg()
    print()
    print(format_table(results))
    path = Path(args.json or DEFAULT_JSON)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")
    bad = results["errors"] or any(not r["converged"] or r["pings"]["ok"] < r["pings"]["total"]
                                   for r in results["runs"])
    return 1 if bad else 0


COLUMNS = ("hosts", "converged after", "idle traffic per host", "idle CPU per router", "RSS max",
           "pings", "flaps")


def format_row(r):
    if r["converged"]:
        converged = f"{r['converged_after_s']:.1f} s"
    else:
        e = r["established_peers"]
        converged = f"no: {e['min']}/{e['median']:g}/{e['max']} of {e['wanted']} peers"
    idle = r["idle"]
    traffic = idle["underlay_bytes_per_s"]
    cpu = idle["router_cpu_percent"]
    return [str(r["hosts"]), converged,
            f"{traffic['mean'] / 1e3:.1f} KB/s (max {traffic['max'] / 1e3:.1f})",
            f"{cpu['mean']:.1f} % (max {cpu['max']:.1f}, all {cpu['total']:.0f})",
            f"{r['rss_mb']['max']:.1f} MB",
            f"{r['pings']['ok']}/{r['pings']['total']}",
            f"{r['flaps']['total']} ({r['flaps']['idle']} idle)"]


def format_table(results):
    rows = [list(COLUMNS)] + [format_row(r) for r in results["runs"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"converged after: from the last router's start until every router has every other "
                 f"established (no: min/median/max established per router); idle: "
                 f"{results['idle_window_s']:g} s after convergence, traffic in + out on each "
                 f"host's underlay link, CPU in % of one core; {results['cpus']} CPUs, load average "
                 f"{results['load_average_before'][0]:.2f} before, "
                 f"{results['load_average_after'][0]:.2f} after")
    for n, error in results["errors"].items():
        first, *rest = [line for line in error.splitlines() if line.strip()] or [""]
        lines.append(f"{n} hosts: FAILED: {first}{' ... ' + rest[-1].strip() if rest else ''}")
    return "\n".join(lines)
