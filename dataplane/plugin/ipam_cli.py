"""`weavefast ipam`: address blocks per host and their use; `weavefast ipam rmpeer HOST`.

Blocks per host come from the store (`--store`, or $WEAVEFAST_STORE); this host's use
of its blocks from its router's status API. Without a store, from the router only.
"""
import json
import os
import sys
import urllib.request

from dataplane.control.status import DEFAULT_ADDRESS
from dataplane.plugin.blocks import cluster_blocks, remove_host
from dataplane.plugin.protocol import PluginError
from dataplane.store import EtcdStore, StoreError


def add_arguments(parser):
    parser.add_argument("action", nargs="?", choices=["show", "rmpeer"], default="show",
                        help="show (default): blocks per host; rmpeer HOST: give back the "
                             "blocks of a host that is gone for good")
    parser.add_argument("host", nargs="?", help="with rmpeer: the departed host's router name")
    parser.add_argument("--store", default=os.environ.get("WEAVEFAST_STORE"),
                        metavar="etcd://HOST:2379", help="the cluster store (default "
                                                         "$WEAVEFAST_STORE)")
    parser.add_argument("--status-addr", default="%s:%d" % DEFAULT_ADDRESS, metavar="HOST:PORT",
                        help="this host's router status API (default %(default)s)")


def run(args):
    try:
        store = EtcdStore(args.store) if args.store else None
        if args.action == "rmpeer":
            if not args.host or store is None:
                raise PluginError("usage: weavefast ipam rmpeer HOST --store etcd://HOST:2379 "
                                  "(blocks are reclaimed through the store)")
            removed = remove_host(store, args.host)
            print(f"{args.host}: gave back {len(removed)} block(s)"
                  + (": " + ", ".join(sorted(removed)) if removed else ""))
            return 0
        print(format_blocks(store, _router_status(args.status_addr)))
        return 0
    except (ValueError, PluginError, StoreError) as e:
        print(f"weavefast ipam: {e}", file=sys.stderr)
        return 1


def _router_status(address):
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=5) as reply:
            return json.load(reply).get("plugin")
    except (OSError, ValueError):
        return None


def format_blocks(store, plugin):
    lines = []
    if plugin:
        lines.append(f"this host ({plugin['host']}):")
        for subnet, blocks in sorted(plugin["blocks"].items()):
            for block in blocks:
                lost = " (lost: now another host's)" if block.get("lost") else ""
                lines.append(f"  {subnet}  {block['block']}  {block['used']}/{block['size']} "
                             f"used{lost}")
        for c in plugin.get("conflicts", []):
            lines.append(f"  refused: {c['range']} of {c['subnet']} overlaps {c['their_range']} "
                         f"of host {c['host']}")
        for host, subnets in sorted(plugin.get("peer_ranges", {}).items()):
            for subnet, ranges in sorted(subnets.items()):
                lines.append(f"  {host} (through the mesh)  {subnet}  "
                             + ", ".join(r["range"] for r in ranges))
    elif store is None:
        return "no router answers and no --store given: nothing to show"
    if store is not None:
        lines.append(f"store {store.display}:")
        held, live = cluster_blocks(store)
        for host, subnets in sorted(held.items()):
            for subnet, blocks in sorted(subnets.items()):
                if host in live:
                    use = live[host].get(subnet, [])
                    state = (f"{sum(b['used'] for b in use)}/{sum(b['size'] for b in use)} "
                             "addresses used")
                else:
                    state = f"no router holds a lease: if gone for good, weavefast ipam rmpeer {host}"
                lines.append(f"  {host}  {subnet}  {len(blocks)} block(s): "
                             + ", ".join(sorted(blocks)) + f"  ({state})")
    return "\n".join(lines)

