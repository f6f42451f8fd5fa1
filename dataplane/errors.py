"""Errors the user can act on."""


class RouterError(Exception):
    """A problem the user can fix; the message names the fix."""


def require_root() -> None:
    import os

    if os.geteuid() != 0:
        raise RouterError("must run as root: it creates a TAP device and a bridge (try sudo)")
