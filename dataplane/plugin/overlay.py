"""The overlay MTU the plugin gives containers: always the running router's.

Inside `weavefast router --plugin` the router hands its own MTU over. A plugin run on
its own (`weavefast plugin`) asks the router's status API (`GET /status`, field
`mtu`) on the same host, unless `--mtu` says it: a guessed default would black-hole
large frames whenever the underlay is not the guessed 1500 bytes, or when the
overlay's overhead changes. The answer is kept for a while (the router's MTU only
changes when it restarts), and the last one known is used while the router
restarts; the first question fails fast, with what to do, when no router answers.
"""
import json
import threading
import time
import urllib.request

from dataplane.plugin.protocol import PluginError

ROUTER_TIMEOUT = 2.0  # seconds: dockerd waits on the call that asks
REFRESH_AFTER = 30.0  # seconds an answer is trusted without asking again


def fixed(mtu):
    """An MTU source that always answers `mtu` (the router's own, or `--mtu`)."""
    return lambda: mtu


class RouterMTU:
    """Callable: the overlay MTU of the router whose status API is at `status_url`."""

    def __init__(self, status_url):
        self.status_url = status_url
        self._lock = threading.Lock()
        self._mtu = None
        self._asked_at = 0.0

    def __call__(self):
        with self._lock:
            if self._mtu is None or time.monotonic() - self._asked_at > REFRESH_AFTER:
                try:
                    self._mtu = self._ask()
                    self._asked_at = time.monotonic()
                except (OSError, ValueError, KeyError) as e:
                    if self._mtu is None:
                        raise PluginError(
                            f"cannot learn the overlay MTU: no router answers at "
                            f"{self.status_url} ({getattr(e, 'reason', e)}); start "
                            "`weavefast router` on this host, or give the plugin --mtu") from None
            return self._mtu

    def _ask(self):
        with urllib.request.urlopen(self.status_url, timeout=ROUTER_TIMEOUT) as reply:
            mtu = json.load(reply)["mtu"]
        if not isinstance(mtu, int):
            raise ValueError(f"the router's status has mtu {mtu!r}")
        return mtu
