"""weavefast's DNS server: containers' names on every host (see server.py)."""
from dataplane.dns.server import DEFAULT_DNS_ADDRESS, DnsServer

__all__ = ["DnsServer", "DEFAULT_DNS_ADDRESS"]
