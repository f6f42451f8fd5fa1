"""`weavefast expose [CIDR]` and `weavefast hide [CIDR]`: the host on the overlay.

Containers sit behind the router's bridge, which has no address: the host itself
cannot reach them ("Network is unreachable"). `expose` gives the bridge an address
of the overlay, as Weave's `weave expose` did, so the host reaches every container
of that subnet on every host (the bridge's MTU follows the router's TAP, so the
host sends nothing the overlay cannot carry). Without CIDR it exposes the gateway
address of each weavefast Docker network of this host: Docker reserves it on every
network and the plugin never gives it to a container, and each host's is in its own
`--ip-range` or address blocks, so no two hosts collide. `hide` removes the given
address, or all but the address of the router's DNS server (`--dns-address`).

The bridge is the running router's (asked on its status API). An address does not
outlive the bridge: when the router removes a bridge it created, expose again.
"""
import errno
import ipaddress
import json
import sys
import urllib.request

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.addresses import parse_hostport
from dataplane.control.status import DEFAULT_ADDRESS
from dataplane.errors import RouterError


def add_arguments_for(name, parser):
    parser.add_argument("cidr", nargs="?", metavar="CIDR",
                        help="address and prefix length for this host, e.g. 10.32.0.254/16 "
                             + ("(default: the gateway address of each weavefast Docker network)"
                                if name == "expose" else "(default: every address exposed)"))
    parser.add_argument("--status-addr", default="%s:%d" % DEFAULT_ADDRESS, metavar="HOST:PORT",
                        help="the router's status API (default %(default)s)")


def run(args):
    try:
        status = router_status(args.status_addr)
        bridge = status["bridge"]
        if args.command == "expose":
            wanted = [parse_cidr(args.cidr)] if args.cidr else docker_gateways(status)
            for address, note in expose(bridge, wanted):
                print(f"{address} on bridge {bridge}: {note}")
        else:
            dns = ((status.get("plugin") or {}).get("dns") or {}).get("address")
            hidden = hide(bridge, parse_cidr(args.cidr) if args.cidr else None,
                          keep={dns} if dns else set())
            print(f"removed {', '.join(map(str, hidden))} from bridge {bridge}" if hidden
                  else f"nothing exposed on bridge {bridge}")
    except RouterError as e:
        print(f"weavefast {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


def router_status(status_addr):
    base = "http://%s:%d" % parse_hostport(status_addr, DEFAULT_ADDRESS[1], "--status-addr")
    try:
        with urllib.request.urlopen(base + "/status", timeout=10) as reply:
            return json.load(reply)
    except OSError as e:
        raise RouterError(f"no router answers at {base} ({getattr(e, 'reason', e)}); "
                          "start `weavefast router` first") from None


def parse_cidr(text):
    if "/" not in text:
        raise RouterError(f"{text!r} has no prefix length: give the overlay's, "
                          "e.g. 10.32.0.254/16")
    try:
        address = ipaddress.ip_interface(text)
    except ValueError:
        raise RouterError(f"{text!r} is not an address in CIDR form, e.g. 10.32.0.254/16") from None
    if address.ip in (address.network.network_address, address.network.broadcast_address) \
            and address.network.prefixlen < 31:
        raise RouterError(f"{text} is the subnet's own network or broadcast address: "
                          "choose a host address")
    return address


def docker_gateways(status):
    plugin = status.get("plugin") or {}
    gateways = [ipaddress.ip_interface(network["gateway"])
                for network in plugin.get("networks", []) if network.get("gateway")]
    if not gateways:
        raise RouterError("no weavefast Docker network on this host to take an address from: "
                          "give one, e.g. `weavefast expose 10.32.0.254/16`")
    return gateways


def expose(bridge, addresses):
    """Add each address to `bridge`; yields (address, what happened)."""
    with IPRoute() as ipr:
        index = _bridge_index(ipr, bridge)
        for address in addresses:
            try:
                ipr.addr("add", index=index, address=str(address.ip),
                         prefixlen=address.network.prefixlen)
                yield address, f"exposed: this host reaches {address.network} on the overlay"
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise RouterError(f"cannot add {address} to {bridge}: {e}") from None
                yield address, "already exposed"


def hide(bridge, address=None, keep=()):
    """Remove `address` (or every address) from `bridge`, never those in `keep` (the
    router's DNS server's); returns those removed."""
    with IPRoute() as ipr:
        index = _bridge_index(ipr, bridge)
        present = [ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                   for a in ipr.get_addr(index=index)
                   if a["scope"] == 0 and a.get_attr("IFA_ADDRESS") not in keep]  # not link-local
        if address is not None:
            if address not in present:
                raise RouterError(f"{address} is not exposed on {bridge} "
                                  f"(exposed: {', '.join(map(str, present)) or 'nothing'})")
            present = [address]
        for found in present:
            ipr.addr("del", index=index, address=str(found.ip), prefixlen=found.network.prefixlen)
        return present


def _bridge_index(ipr, bridge):
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        raise RouterError(f"the router's bridge {bridge} is not in this network namespace")
    return found[0]
