"""`weavefast install-service [ROUTER OPTIONS]`: start before Docker, on every boot.

Installs the systemd units shipped in dataplane/systemd/:

- weavefast.service runs `weavefast router --plugin` with the given router options
  (kept in /etc/default/weavefast as WEAVEFAST_ARGS), ordered before docker.service
  and restarted on failure. It tells systemd it is ready (Type=notify) only once the
  router forwards and the plugin serves, so dockerd, which restores containers at
  start and fails those whose network plugin is missing, always finds it.
- docker.service.d/10-weavefast.conf makes dockerd want weavefast and wait for it,
  also when dockerd is started on its own (e.g. by docker.socket).

then reloads systemd, enables weavefast.service and (re)starts it. ExecStart gets the
Python that runs this command, so a virtual environment works as well.
`--root DIR` writes the files under DIR and touches no running system (packaging).
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

from dataplane import router

UNITS = Path(__file__).parent / "systemd"
SERVICE = "weavefast.service"
DROP_IN = Path("docker.service.d") / "10-weavefast.conf"
UNIT_DIR = Path("etc/systemd/system")
DEFAULTS = Path("etc/default/weavefast")
SHIPPED_COMMAND = "/usr/local/bin/weavefast"
SAFE_OPTION = re.compile(r"[^\s'\"\\$]+")


def add_arguments(parser):
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="install under DIR and leave systemd alone (default: this system)")
    group = parser.add_argument_group("router options, for the service (default: those "
                                      "installed before)")
    router.add_arguments(group)  # parsed here: a bad option is refused now, not at boot


def router_options(args):
    """The router options given on the command line (those not at their default)."""
    parser = argparse.ArgumentParser()
    router.add_arguments(parser)
    options = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            options.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                options += [flag, str(item)]
    return options


def run(args):
    root = Path(args.root)
    options = router_options(args)
    unsafe = [option for option in options if not SAFE_OPTION.fullmatch(option)]
    if unsafe:  # systemd splits $WEAVEFAST_ARGS at white space and keeps quotes
        print(f"weavefast install-service: {unsafe[0]!r}: options of the service cannot hold "
              "white space or quotes (use --key-file for a secret)", file=sys.stderr)
        return 2
    try:
        written = install(root, options)
    except OSError as e:
        print(f"weavefast install-service: {e.filename or ''}: {e.strerror} "
              "(run it as root: sudo weavefast install-service ...)", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if root != Path("/"):
        return 0
    for command in (["systemctl", "daemon-reload"], ["systemctl", "enable", SERVICE],
                    ["systemctl", "restart", SERVICE]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"weavefast install-service: `{' '.join(command)}` failed: "
                  f"{result.stderr.strip()}", file=sys.stderr)
            return 1
    print(f"{SERVICE} enabled and started; it starts before docker.service on every boot "
          f"(`systemctl status {SERVICE}`, `journalctl -u {SERVICE}`)")
    return 0


def install(root, router_options):
    """Write the units and the options file under `root`; returns the paths written."""
    unit_dir = root / UNIT_DIR
    (unit_dir / DROP_IN.parent).mkdir(parents=True, exist_ok=True)
    command = f"{sys.executable} -m dataplane"
    service = (UNITS / SERVICE).read_text().replace(SHIPPED_COMMAND, command)
    written = [_write(unit_dir / SERVICE, service),
               _write(unit_dir / DROP_IN, (UNITS / DROP_IN).read_text())]
    defaults = root / DEFAULTS
    if router_options or not defaults.exists():
        defaults.parent.mkdir(parents=True, exist_ok=True)
        written.append(_write(defaults, "# options of `weavefast router`, for weavefast.service\n"
                                        f'WEAVEFAST_ARGS="{" ".join(router_options)}"\n'))
    return written


def _write(path, text):
    path.write_text(text)
    return path
