"""The `weavefast` command: one subcommand per module, imported only when used.

Each module named here provides `add_arguments(parser)` and `run(args) -> int`.
"""
import argparse
import importlib
import sys

from dataplane import __version__

SUBCOMMANDS = {
    "router": ("dataplane.router", "run the overlay router on this host"),
    "demo": ("dataplane.demo", "two simulated hosts in network namespaces, end to end"),
    "status": ("dataplane.control.cli", "show the router's peers and counters"),
    "report": ("dataplane.control.cli", "the router's status as JSON"),
    "connect": ("dataplane.control.cli", "add a peer to a running router"),
    "forget": ("dataplane.control.cli", "remove a peer from a running router"),
    "plugin": ("dataplane.plugin.server", "serve Docker's remote network and IPAM driver"),
    "ipam": ("dataplane.plugin.ipam_cli", "address blocks per host; rmpeer HOST reclaims a gone host's"),
    "expose": ("dataplane.expose", "give this host an address on the overlay"),
    "hide": ("dataplane.expose", "take this host's overlay address away"),
    "install-service": ("dataplane.service", "install and start the systemd units (router and "
                                             "Docker plugin, before docker.service)"),
    "bench": ("dataplane.bench", "measure weavefast against kernel VXLAN and a direct veth"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="weavefast", description="A userspace overlay network for containers.",
        epilog="`weavefast COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"weavefast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            if hasattr(module, "add_arguments_for"):
                module.add_arguments_for(name, p)
            else:
                module.add_arguments(p)
            p.set_defaults(_module=module)
    args = parser.parse_args(argv)
    return args._module.run(args) or 0
