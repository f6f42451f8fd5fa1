"""`weavefast status|report|connect|forget`: talk to a running router's status API.

The Docker plugin's part of the status comes from the router when it serves the plugin
(`router --plugin`), else from a `weavefast plugin` running on its own, asked on its
socket.
"""
import http.client
import json
import socket
import sys
import time
import urllib.error
import urllib.request

from dataplane.addresses import parse_hostport
from dataplane.control.status import DEFAULT_ADDRESS
from dataplane.errors import RouterError

PLUGIN_SOCKET = "/run/docker/plugins/weavefast.sock"


def add_arguments_for(name, parser):
    parser.add_argument("--status-addr", default="%s:%d" % DEFAULT_ADDRESS, metavar="HOST:PORT",
                        help="the router's status API (default %(default)s)")
    if name in ("status", "report"):
        parser.add_argument("--plugin-socket", default=PLUGIN_SOCKET, metavar="PATH",
                            help="where a `weavefast plugin` running on its own answers "
                                 "(default %(default)s)")
    if name == "status":
        parser.add_argument("what", nargs="?", choices=["peers"],
                            help="'peers': one line per peer")
    elif name in ("connect", "forget"):
        parser.add_argument("peer", metavar="HOST[:PORT]",
                            help="address of the peer" + (" (or its name)" if name == "forget" else ""))


def run(args):
    try:
        base = "http://%s:%d" % parse_hostport(args.status_addr, DEFAULT_ADDRESS[1], "--status-addr")
        host, port = parse_hostport(getattr(args, "peer", ""), 0, "peer")
    except RouterError as e:
        print(f"weavefast {args.command}: {e}", file=sys.stderr)
        return 2
    try:
        if args.command in ("connect", "forget"):
            token = _token(_request(base + "/status"))
            reply = _request(base + "/" + args.command, {"host": host, "port": port or None}, token)
            print(", ".join(reply["forgotten"]) + ": forgotten" if "forgotten" in reply
                  else f"connecting to {reply['connecting']}")
            return 0
        status = _request(base + "/status")
        if not status.get("plugin"):
            status["plugin"] = standalone_plugin_status(args.plugin_socket)
    except urllib.error.HTTPError as exc:
        print(f"weavefast {args.command}: {json.load(exc).get('error', exc)}", file=sys.stderr)
        return 1
    except _NoToken as exc:
        print(f"weavefast {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"weavefast {args.command}: no router answers at {base} ({getattr(exc, 'reason', exc)}); "
              "is `weavefast router` running?", file=sys.stderr)
        return 1
    if args.command == "report":
        json.dump(status, sys.stdout, indent=2)
        print()
    elif args.what == "peers":
        print(format_peers(status))
    else:
        print(format_status(status))
    return 0


def standalone_plugin_status(path):
    """The status of a `weavefast plugin` serving `path`, or None when none does."""

    class Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(path)

    connection = Connection("localhost", timeout=5)
    try:
        connection.request("GET", "/status")
        reply = connection.getresponse()
        return json.load(reply) if reply.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()


class _NoToken(Exception):
    pass


def _token(status):
    """The router's token for changes, from the file its status names."""
    path = status.get("control_token_file")
    try:
        with open(path) as f:
            return f.read().strip()
    except PermissionError:
        raise _NoToken(f"cannot read the router's token {path}: run this as root") from None
    except (OSError, TypeError):
        raise _NoToken(f"the router's token file {path} is missing: is it this host's router?") from None


def _request(url, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as reply:
        return json.load(reply)


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def human_age(since, now=None):
    seconds = int((now or time.time()) - since)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _transfer(counters, prefix=""):
    rx, tx = counters.get(prefix + "rx_bytes"), counters.get(prefix + "tx_bytes")
    if rx is None and tx is None:
        return None
    return f"{human_bytes(rx or 0)} received, {human_bytes(tx or 0)} sent"


def format_status(status, now=None):
    """A summary in the spirit of `wg show`."""
    offloads = [name for name, on in sorted(status["offloads"].items()) if on]
    drops = sum(status["drops"].values())
    lines = [
        f"router: {status['name']}",
        f"  peer id: {status['peer_id']}",
        f"  listening port: {status['port']}",
        f"  network secret: {'yes' if status['authenticated'] else 'none'}",
        f"  encryption: {_encryption(status['encryption'])}",
        f"  offloads: {', '.join(offloads) or 'none'}",
        f"  mac table: {status['mac_table']['size']} entries",
    ]
    lines += [f"  DEGRADED: {d['what']}: {d['why']}; fix: {d['fix']}" for d in status.get("degradations", ())]
    membership = status.get("membership")
    if membership:
        lines.append(f"  membership: etcd {membership['store']}, {_membership(membership)}")
    transfer = _transfer(status["counters"], "udp_")
    if transfer:
        lines.append(f"  transfer: {transfer}")
    lines.append(f"  drops: {drops}" + (" (" + ", ".join(
        f"{reason} {n}" for reason, n in sorted(status["drops"].items()) if n) + ")" if drops else ""))
    for peer in status["peers"]:
        ident = f" (peer id {peer['peer_id']})" if peer["peer_id"] else ""
        lines += ["", f"peer: {peer['name'] or peer['address']}{ident}",
                  f"  state: {peer['state']} for {human_age(peer['since'], now)}",
                  f"  endpoint: {peer['endpoint'] or peer['address']}"]
        if peer["route"]:
            lines.append(f"  route: {peer['route']}")
        if peer["rtt_ms"] is not None:
            lines.append(f"  rtt: {peer['rtt_ms']:.2f} ms")
        transfer = _transfer(peer["counters"])
        if transfer:
            lines.append(f"  transfer: {transfer}")
        segments = peer.get("segments")
        if segments:
            lost = peer["counters"].get("rx_lost_datagrams", 0)
            lines.append(f"  tcp super-frames: as {segments['sending']} (--segments {segments['mode']}; "
                         f"{peer['counters'].get('tx_segmented', 0)} sent as segments, "
                         f"{lost} of its datagrams lost on the way here"
                         + (", told it so" if segments["loss_reported"] else "") + ")")
        session = peer.get("session")
        if session and session["epoch"] is not None:
            lines.append(f"  session: {session['cipher']}, key epoch {session['epoch']}, "
                         f"{session['key_age_s']:g} s old")
        if peer["last_error"] and peer["state"] != "established":
            lines.append(f"  last error: {peer['last_error']}")
    if status.get("plugin"):
        lines += ["", *format_plugin(status["plugin"], now)]
    return "\n".join(lines)


def _membership(m):
    found = f"{m['routers']} other router(s) in the store"
    if m["rejected"]:
        found += f", {m['rejected']} entr{'y' if m['rejected'] == 1 else 'ies'} ignored"
    if m["state"] == "unreachable":
        return f"UNREACHABLE: {m['error']} (the mesh keeps its peers; retrying); {found}"
    return f"{m['state']} as {m['advertised']} ({m['key']}, lease {m['lease_ttl']} s); {found}"


def _encryption(encryption):
    if encryption["mode"] == "cleartext":
        return "none: frames in clear, datagrams carry a session token (set --password or --key-file)"
    return f"{', '.join(encryption['ciphers'])}, keys renewed every {encryption['rekey_after_s']:g} s"


def format_plugin(plugin, now=None):
    """The Docker plugin's lines of `weavefast status`."""
    lines = [f"docker plugin: {plugin['socket']} (host {plugin['host']})",
             f"  overlay mtu: {plugin['overlay_mtu'] or 'unknown (no router answers)'}"]
    store = plugin["store"]
    if store is None:
        lines.append("  store: none (address ranges announced through the mesh)")
    elif store["state"] == "reachable":
        lines.append(f"  store: etcd {store['endpoints']}, reachable")
    else:
        lines.append(f"  store: etcd {store['endpoints']}, UNREACHABLE: new address blocks wait "
                     f"for it ({store['error']})")
    used = sum(b["used"] for blocks in plugin["blocks"].values() for b in blocks)
    count = sum(len(blocks) for blocks in plugin["blocks"].values())
    lines.append(f"  address blocks: {count}, {used} address(es) in use")
    for c in plugin["conflicts"]:
        lines.append(f"  refused range {c['range']}: host {c['host']} has {c['their_range']}")
    network = plugin.get("network")
    if network:
        lines.append(f"  ready-made network {network['name']}: {network['state']}")
    names = plugin["names"]
    if names:
        lines.append(f"  docker: {names['docker']}, {names['records']} name record(s)")
    setting = (plugin.get("dns") or {}).get("setting")
    if setting:
        lines.append(f"  dns: {setting['address']}, dockerd setting "
                     + ("in place" if setting["in_place"] else f"MISSING: {setting['fix']}"))
    reconciliation = plugin.get("reconciliation")
    if reconciliation:
        last = reconciliation["last"]
        lines.append(f"  reconciled with {reconciliation['docker_host']} every "
                     f"{reconciliation['interval']:g} s" + (
                         f", last {human_age(last['time'], now)} ago" if last else
                         ", dockerd not reached yet"))
    for network in plugin["networks"]:
        ip_range = f", range {network['ip_range']}" if network["ip_range"] else ""
        lines.append(f"  network {network['name'] or '?'} ({network['id']}): subnet "
                     f"{network['subnet']}{ip_range}, mtu {network['mtu']}")
        for endpoint in network["endpoints"]:
            lines.append(f"    {endpoint['container'] or '?'}: {endpoint['address'] or '-'} "
                         f"{endpoint['mac']}" + (f" on {endpoint['interface']}"
                                                 if endpoint["interface"] else ""))
    for error in plugin["last_errors"]:
        lines.append(f"  error {human_age(error['time'], now)} ago: {error['message']}")
    return lines


def format_peers(status):
    rows = [("PEER", "ID", "STATE", "ENDPOINT", "ROUTE", "RTT", "LAST ERROR")]
    for peer in status["peers"]:
        rows.append((peer["name"] or "?", str(peer["peer_id"] or "?"), peer["state"],
                     peer["endpoint"] or peer["address"], peer["route"] or "-",
                     f"{peer['rtt_ms']:.2f} ms" if peer["rtt_ms"] is not None else "-",
                     peer["last_error"] if peer["state"] != "established" and peer["last_error"] else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]).rstrip()
                     for row in rows)
