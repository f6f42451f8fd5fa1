"""Docker's remote network driver and IPAM driver for weavefast (`weavefast plugin`).

`start_plugin(bridge, mtu, socket_path, state_dir, docker_host, ...)` serves it from a thread of the
calling process (used by `weavefast router --plugin`); the handle's `close()` stops it.
"""
from dataplane.plugin.server import DEFAULT_BRIDGE, DEFAULT_DOCKER_HOST, DEFAULT_SOCKET, \
    DEFAULT_STATE_DIR, Plugin, start_plugin

__all__ = ["start_plugin", "Plugin", "DEFAULT_BRIDGE", "DEFAULT_DOCKER_HOST", "DEFAULT_SOCKET",
           "DEFAULT_STATE_DIR"]
