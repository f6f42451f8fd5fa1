"""The options of `weavefast router --plugin` beyond the plugin's socket, state directory
and reconciliation with dockerd (kept light: defining them imports no netlink code)."""
import os

from dataplane.dns.server import DEFAULT_DNS_ADDRESS
from dataplane.plugin import blocks
from dataplane.plugin.ipam import DEFAULT_SUBNET

DEFAULT_NETWORK = "weavefast"
DEFAULT_DOCKER_CONFIG = "/etc/docker/daemon.json"


def add_arguments(p):
    p.add_argument("--store", default=os.environ.get("WEAVEFAST_STORE"),
                   metavar="etcd://HOST:2379[,HOST:2379...]",
                   help="the cluster store for address blocks and names (also $WEAVEFAST_STORE; "
                        "etcds:// for TLS, ?ca=&cert=&key= for its files, USER:PASSWORD@ for "
                        "credentials); without one, hosts share a subnet through --ip-range")
    p.add_argument("--subnet", default=DEFAULT_SUBNET, metavar="CIDR",
                   help="subnet of the ready-made network and of networks created without "
                        "--subnet (default %(default)s)")
    p.add_argument("--ip-range", metavar="CIDR",
                   help="without a store and with several hosts: this host's part of --subnet "
                        "for the ready-made network (a different one on every host)")
    p.add_argument("--network", default=DEFAULT_NETWORK, metavar="NAME",
                   help="the ready-made Docker network (default %(default)s; '' for none)")
    p.add_argument("--block-size", type=int, default=blocks.DEFAULT_BLOCK_PREFIX, metavar="PREFIX",
                   help="prefix length of the address blocks hosts claim (default /%(default)s)")
    p.add_argument("--block-grace", type=float, default=blocks.DEFAULT_GRACE, metavar="SECONDS",
                   help="how long a block stays empty before it is given back (default %(default)s)")
    p.add_argument("--dns-address", default=DEFAULT_DNS_ADDRESS, metavar="IP",
                   help="where weavefast's DNS server listens, on the bridge (default %(default)s; "
                        "'' for none); set dockerd's \"dns\" to it")
    p.add_argument("--docker-config", default=DEFAULT_DOCKER_CONFIG, metavar="PATH",
                   help="dockerd's daemon.json, checked for the \"dns\" setting "
                        "(default %(default)s)")
