"""What `weavefast router --plugin` runs beside the router: the Docker plugin with its
cluster store and mesh link, weavefast's DNS server on the bridge, and the
ready-made network.

- The DNS server listens on `--dns-address` (169.254.53.53) put on the overlay
  bridge; its socket is bound to the bridge, so replies to containers leave through
  it without a route on the host (the kernel takes the destination as on-link). An
  nftables rule keeps the address local: ARP and packets for it that arrive from the
  router's TAP (other hosts' containers) are dropped, so each container is answered
  by its own host.
- The ready-made network (`--network weavefast`, subnet `--subnet`) is created
  through the Docker API once dockerd answers, as Weave Net did, so `docker run
  --network weavefast` works on every host without a create step.
"""
import errno
import ipaddress
import json
import logging
import subprocess
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.dns import DnsServer
from dataplane.errors import RouterError
from dataplane.plugin import blocks
from dataplane.plugin.docker_api import DockerError, Refused
from dataplane.plugin.server import start_plugin
from dataplane.store import EtcdStore

log = logging.getLogger("weavefast.plugin")

NETWORK_RETRY = 2.0  # seconds between attempts to create the ready-made network


def _ipv4_network(option, text):
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        network = None
    if network is None or network.version != 4:
        raise RouterError(f"{option} {text!r}: give an IPv4 subnet in CIDR form, "
                          "e.g. 10.32.0.0/12")
    return network


class PluginServices:
    def __init__(self, args, bridge, tap, mtu, peer_name):
        self.args = args
        self.bridge, self.tap = bridge, tap
        self.dns = None
        self._address_added = self._nft_table = None
        try:
            store = EtcdStore(args.store) if args.store else None
        except (ValueError, OSError) as e:
            raise RouterError(f"--store: {e}") from None
        subnet = _ipv4_network("--subnet", args.subnet)
        if args.ip_range and not _ipv4_network("--ip-range", args.ip_range).subnet_of(subnet):
            raise RouterError(f"--ip-range {args.ip_range} is not inside --subnet {args.subnet}")
        if args.dns_address:
            try:
                if ipaddress.ip_address(args.dns_address).version != 4:
                    raise ValueError
            except ValueError:
                raise RouterError(f"--dns-address {args.dns_address!r}: give an IPv4 address, "
                                  "e.g. 169.254.53.53, or '' for no DNS server") from None
        if not 8 <= args.block_size <= 30:
            raise RouterError(f"--block-size {args.block_size}: use a prefix from 8 to 30")
        self.mesh = blocks.MeshLink()
        self.cluster = blocks.Cluster(peer_name, store, self.mesh, args.block_size,
                                      args.block_grace)
        self._closing = threading.Event()
        self.plugin = None
        try:
            if args.dns_address:
                self._start_dns(args.dns_address)
            # last: once its socket exists, dockerd (and a stop request) may come at any time
            self.plugin = start_plugin(bridge=bridge, mtu=mtu, socket_path=args.plugin_socket,
                                       state_dir=args.plugin_state_dir,
                                       docker_host=args.plugin_docker_host,
                                       reconcile_interval=args.plugin_reconcile_interval,
                                       cluster=self.cluster, dns_address=args.dns_address or None,
                                       default_subnet=args.subnet)
        except OSError as e:
            self.close()
            raise RouterError(f"Docker plugin on {args.plugin_socket}: {e.strerror or e} "
                              "(is `weavefast plugin` already running? stop it, or drop "
                              "--plugin)") from None
        except BaseException:
            self.close()
            raise
        if args.network and not self.plugin.docker:
            log.warning("no ready-made network %s: --plugin-docker-host '' leaves no dockerd "
                        "to create it with", args.network)
        self.network_state = "waiting for dockerd" if args.network and self.plugin.docker else None
        if self.network_state:
            threading.Thread(target=self._create_network, daemon=True,
                             name="weavefast-network").start()

    def attach(self, control):
        self.mesh.attach(control)

    # -- DNS on the bridge --------------------------------------------------------------

    def _start_dns(self, address):
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=self.bridge)[0]
            try:
                ipr.addr("add", index=index, address=address, prefixlen=32)
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # EEXIST: left by a router that was killed
                    raise RouterError(f"--dns-address {address}: {e}") from None
            self._address_added = (index, address)
        self._keep_dns_local(address)
        try:
            self.dns = DnsServer(address, self._lookup, self._reverse, device=self.bridge)
        except OSError as e:
            raise RouterError(f"DNS server on {address}:53: {e.strerror or e} "
                              "(choose another --dns-address, or '' for none)") from None

    def _lookup(self, name):
        return self.plugin.names.lookup(name) if self.plugin else []

    def _reverse(self, ip):
        return self.plugin.names.reverse(ip) if self.plugin else None

    def _keep_dns_local(self, address):
        table = f"weavefast_dns_{self.bridge}".replace("-", "_")
        rules = (f"table bridge {table} {{\n"
                 f"  chain input {{ type filter hook input priority 0;\n"
                 f"    iifname \"{self.tap}\" arp daddr ip {address} drop\n"
                 f"    iifname \"{self.tap}\" ip daddr {address} drop\n  }}\n}}\n")
        try:
            subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True,
                           capture_output=True)
            self._nft_table = table
        except (OSError, subprocess.CalledProcessError) as e:
            log.warning("cannot keep %s local to this host (nft: %s): other hosts may "
                        "answer ARP for it too", address, getattr(e, "stderr", e))

    # -- the ready-made network ---------------------------------------------------------

    def _create_network(self):
        name, subnet = self.args.network, self.args.subnet
        while not self._closing.is_set():
            try:
                if not self.plugin.docker.network_exists(name):
                    self.plugin.docker.create_network(name, "weavefast", {
                        "Subnet": subnet, **({"IPRange": self.args.ip_range}
                                             if self.args.ip_range else {})})
                    log.info("created Docker network %s (%s)", name, subnet)
                self.network_state = "ready"
                return
            except Refused as e:
                if self.network_state != f"not created: {e}":
                    log.warning("cannot create Docker network %s: %s", name, e)
                self.network_state = f"not created: {e}"
            except DockerError as e:
                log.debug("dockerd not answering yet: %s", e)
            self._closing.wait(NETWORK_RETRY)

    # -- status -------------------------------------------------------------------------

    def dns_setting(self):
        """Whether dockerd's daemon.json sends unknown names to our DNS server."""
        address = self.args.dns_address
        if not address:
            return None
        try:
            with open(self.args.docker_config) as f:
                servers = json.load(f).get("dns", [])
        except (OSError, ValueError):
            servers = []
        if address in servers:
            return {"in_place": True, "address": address}
        return {"in_place": False, "address": address,
                "fix": f"add \"dns\": [\"{address}\"] to {self.args.docker_config} and "
                       "restart dockerd"}

    def status(self):
        return {**self.plugin.status(),
                "network": self.network_state and {"name": self.args.network,
                                                   "state": self.network_state},
                "dns": {
            "address": self.args.dns_address or None,
            "setting": self.dns_setting(),
            "answered": self.dns.answered if self.dns else 0,
            "forwarded": self.dns.forwarded if self.dns else 0}}

    def close(self):
        self._closing.set()
        if self.dns:
            self.dns.close()
        if self._nft_table:
            subprocess.run(["nft", "delete", "table", "bridge", self._nft_table],
                           capture_output=True)
        if self._address_added:
            try:
                with IPRoute() as ipr:
                    index, address = self._address_added
                    ipr.addr("del", index=index, address=address, prefixlen=32)
            except NetlinkError:
                pass  # went with the bridge
        if self.plugin:
            self.plugin.close()
