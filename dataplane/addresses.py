"""Addresses as users type them: "host", "host:port", "[v6]:port" or a bare IPv6 address."""
from dataplane.errors import RouterError


def parse_hostport(text: str, default_port: int, what: str = "address") -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RouterError(f"{what} {text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
