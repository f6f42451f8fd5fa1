"""Real Docker engines on simulated hosts, and a client for the plugin's socket.

`DockerEngine(testbed, host, workdir)` runs, inside `host`'s network namespace and
inside one private mount namespace of its own:

- a tmpfs over /run, so that what containerd, dockerd and the plugin put there
  (`/run/docker/plugins/weavefast.sock`, containerd's shim sockets, dockerd's exec
  root) is private to this simulated host: two hosts on one machine each get their
  own plugin of the same name, and nothing is left in the machine's /run;
- containerd with a private config (CRI plugin disabled, its root under `workdir`);
- dockerd with its own data root, exec root and API socket (`workdir/docker.sock`),
  its own cgroup parent, and `--iptables=false --ip6tables=false --bridge=none
  --ip-forward=false --ip-masq=false`: it touches nothing outside the namespace;
- the plugin: `weavefast plugin` on its own (`start_plugin()` / `stop_plugin()` to
  restart it), told the overlay MTU with --mtu, or asking the router for it
  (`mtu="router"`); or, with `plugin="router"`, `weavefast router --plugin` started as
  its systemd unit would be: before dockerd, which starts only once the router has
  said READY=1 on $NOTIFY_SOCKET (the host's router: the plugin, its DNS server and
  the ready-made network; `dns` goes into dockerd's "dns" setting). `reboot()` stops
  dockerd and the plugin's process and starts them again in that order. Either plugin
  reconciles with this dockerd.

The mount namespace is held by an "anchor" process (`sleep infinity`); the others
join it with `nsenter -t ANCHOR -m`. Every process is started through the testbed
(its own process group, log in the testbed's log directory). `close()` removes the
containers, stops the processes by pid, kills container processes whose shim
outlived containerd and removes the cgroups dockerd made; the caller removes
`workdir`.

The image is `busybox_rootfs_tar()` imported with `docker import`: no registry.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from pyroute2 import IPRoute

from dataplane import testbed
from dataplane.plugin.state import empty_state

BUSYBOX = "/bin/busybox"
IMAGE = "wfd-busybox:latest"
DEBIAN_PACKAGES = "docker.io busybox-static"
PLUGIN_SOCKET = "/run/docker/plugins/weavefast.sock"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def docker_unavailable():
    """Why a real Docker engine cannot run here, or None."""
    reason = testbed.netns_available()
    if reason:
        return reason
    for program in ("dockerd", "containerd", "docker", "unshare"):
        if shutil.which(program) is None:
            return f"needs {program} (apt-get install {DEBIAN_PACKAGES})"
    if not _is_static_elf(BUSYBOX):
        return f"needs a static {BUSYBOX} for the container image (apt-get install busybox-static)"
    return None


def _is_static_elf(path):
    """Whether `path` is an ELF executable without a program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only
                return False
            phoff, = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def busybox_rootfs_tar(path):
    """A root filesystem with the static busybox and a link per applet, as a tarball."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tarfile.open(path, "w") as tar:
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("proc", 0o755), ("sys", 0o755),
                           ("dev", 0o755), ("tmp", 0o1777)):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                entry = tarfile.TarInfo(f"bin/{applet}")
                entry.type, entry.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(entry)
    return path


# -- the plugin's protocol, as dockerd speaks it ------------------------------------

class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def close_all(tb, engines, workdir):
    """Stop `engines` and the testbed, remove `workdir`; fails if anything was left behind."""
    for engine in engines:
        engine.close()
    tb.close()
    shutil.rmtree(workdir)
    left = tb.leftovers()
    assert not any(left.values()), left


def plugin_call(socket_path, method, body=None, raw=None, timeout=10.0):
    """POST /<method> like dockerd: no Content-Type, an empty body when there are no
    arguments. `raw` sends those bytes instead of JSON. Returns (status, decoded answer)."""
    data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("POST", f"/{method}", body=data, headers={"Content-Length": str(len(data))})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def wait_for_socket(path, process, timeout=15.0):
    """Wait until something accepts connections on `path`; fail early if `process` died."""
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.output()[-3000:]}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(path))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on {path} after {timeout}s:\n"
                                   f"{process.output()[-3000:]}")
            time.sleep(0.05)


# -- an engine per simulated host ---------------------------------------------------

class DockerEngine:
    def __init__(self, tb, host, workdir, bridge="weavefast", mtu=None, plugin="standalone",
                 plugin_args=(), peers=(), live_restore=False, dns=None):
        self.tb, self.host, self.workdir = tb, host, Path(workdir)
        self.dns = dns
        self.daemon_config = self.workdir / "daemon.json"
        self.bridge, self.mtu = bridge, mtu or tb.overlay_mtu
        self.plugin_mode, self.plugin_args, self.peers = plugin, list(plugin_args), peers
        self.live_restore = live_restore
        self.name = f"{tb.prefix}-{host.name}"
        self.api_socket = self.workdir / "docker.sock"
        self.cgroup_parent = self.name
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.api_socket}",
                        DOCKER_CONFIG=str(self.workdir / "client"))
        self.processes = []  # in start order
        self.anchor = self.dockerd = self.plugin = self.mount_ns = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _in_mount_ns(self, argv, name):
        return self._in_mount_ns_env(argv, name, None)

    def _start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        setup = ("mount -n -t tmpfs -o mode=0755 wfd-run /run && "
                 "mkdir -p /run/docker/plugins && touch /run/wfd-ready && exec sleep infinity")
        self.anchor = self.tb.start(self.host, ["unshare", "-m", "--propagation", "private",
                                                "--", "sh", "-c", setup],
                                    name=f"{self.name}-mountns")
        self.processes.append(self.anchor)
        # the plugin's socket, as seen from outside the mount namespace
        self.plugin_socket = Path(f"/proc/{self.anchor.pid}/root{PLUGIN_SOCKET}")
        ready = Path(f"/proc/{self.anchor.pid}/root/run/wfd-ready")
        self.tb.wait_for(lambda: ready.exists() or not self.anchor.alive(),
                         what="the private /run")
        if not self.anchor.alive():
            raise RuntimeError(f"mount namespace setup failed:\n{self.anchor.output()}")
        self.mount_ns = _mount_ns(self.anchor.pid)

        containerd_config = self.workdir / "containerd.toml"
        containerd_config.write_text(
            'version = 2\n'
            f'root = "{self.workdir / "containerd"}"\n'
            'state = "/run/containerd"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            '[grpc]\n  address = "/run/containerd/containerd.sock"\n')
        containerd = self._in_mount_ns(["containerd", "--config", str(containerd_config)],
                                       "containerd")
        wait_for_socket(Path(f"/proc/{self.anchor.pid}/root/run/containerd/containerd.sock"),
                        containerd)

        if self.plugin_mode == "router":
            self.start_router()
        self.start_dockerd()
        if self.plugin_mode == "standalone":
            self.start_plugin()

    def start_dockerd(self):
        # the trust key would otherwise go to /etc/docker/key.json
        config = {"deprecated-key-path": str(self.workdir / "key.json"),
                  "live-restore": self.live_restore}
        if self.dns:
            config["dns"] = [self.dns]
        self.daemon_config.write_text(json.dumps(config))
        self.dockerd = self._in_mount_ns([
            "dockerd", "--config-file", str(self.daemon_config),
            "--data-root", str(self.workdir / "docker"), "--exec-root", "/run/docker",
            "--pidfile", "/run/docker.pid", "-H", f"unix://{self.api_socket}",
            "--containerd", "/run/containerd/containerd.sock",
            "--cgroup-parent", self.cgroup_parent,
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
        ], "dockerd")
        wait_for_socket(self.api_socket, self.dockerd, timeout=60)

    def stop_dockerd(self):
        """SIGTERM, as systemd stops it; dockerd stops its containers unless live-restore."""
        code = self._stop(self.dockerd, grace=60)
        self.dockerd = None
        return code

    def reboot(self, live_restore=None):
        """Stop dockerd, then the plugin's process; start them again in the systemd
        units' order (weavefast first), with `live_restore` if given."""
        if live_restore is not None:
            self.live_restore = live_restore
        assert self.stop_dockerd() == 0
        if self.plugin_mode == "router":
            assert self.stop_router() == 0
            self.start_router()
        else:
            assert self.stop_plugin() == 0
            self.start_plugin()
        self.start_dockerd()

    def _stop(self, process, grace=10):
        code = process.stop(grace=grace)
        self.processes.remove(process)
        return code

    # -- the plugin -----------------------------------------------------------------

    def _reconcile_args(self, prefix=""):
        return [f"--{prefix}docker-host", f"unix://{self.api_socket}"]

    def start_plugin(self):
        mtu = [] if self.mtu == "router" else ["--mtu", str(self.mtu)]
        self.plugin = self._in_mount_ns([
            sys.executable, "-m", "dataplane", "plugin", "--bridge", self.bridge, *mtu,
            "--state-dir", str(self.workdir / "plugin-state"), "--log-level", "debug",
            *self._reconcile_args(), *self.plugin_args], "plugin")
        wait_for_socket(self.plugin_socket, self.plugin)

    def stop_plugin(self, sig=signal.SIGTERM):
        """Stop `weavefast plugin` (SIGKILL: as if it crashed); returns its exit code."""
        if sig == signal.SIGKILL:
            os.killpg(self.plugin.pid, signal.SIGKILL)
        code = self._stop(self.plugin)
        self.plugin = None
        return code

    def start_router(self):
        """`weavefast router --plugin` as weavefast.service runs it: returns once it has
        told $NOTIFY_SOCKET it is ready, and checks that the plugin answers by then."""
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(30)
            argv = [sys.executable, "-m", "dataplane", "router", "--name", self.host.netns,
                    "--bridge", self.bridge, "--plugin", "--plugin-state-dir",
                    str(self.workdir / "plugin-state"), *self._reconcile_args("plugin-"),
                    "--docker-config", str(self.daemon_config), "-v", *self.plugin_args]
            for peer in self.peers:
                argv += ["--peer", peer.underlay_ip]
            self.plugin = self.host.router = self._in_mount_ns_env(
                argv, "router", {"NOTIFY_SOCKET": str(notify_path)})
            try:
                message = notify.recv(100)
            except TimeoutError:
                raise TimeoutError(f"router said nothing on $NOTIFY_SOCKET:\n"
                                   f"{self.plugin.output()[-3000:]}") from None
        assert message == b"READY=1", message
        status, answer = plugin_call(self.plugin_socket, "Plugin.Activate", timeout=1)
        assert status == 200 and "NetworkDriver" in answer["Implements"], answer

    def stop_router(self):
        code = self._stop(self.plugin)
        self.plugin = self.host.router = None
        return code

    def _in_mount_ns_env(self, argv, name, env):
        process = self.tb.start(self.host, ["nsenter", "-t", str(self.anchor.pid), "-m", "--",
                                            *argv], name=f"{self.name}-{name}", env=env)
        self.processes.append(process)
        return process

    def run_in(self, argv):
        """Run a short command in this host's namespaces (network and mount)."""
        return self.tb.run(self.host, ["nsenter", "-t", str(self.anchor.pid), "-m", "--", *argv],
                           check=False, env=testbed._python_env())  # the cwd becomes /

    def plugin_state(self):
        """The plugin's state file; the empty state when it never had to write one."""
        path = self.workdir / "plugin-state" / "state.json"
        return json.loads(path.read_text()) if path.exists() else empty_state()

    # -- docker ---------------------------------------------------------------------

    def docker(self, *args, check=True, timeout=60):
        """Run the docker CLI against this engine; raises with dockerd's and the plugin's
        log tails when `check` and it fails."""
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            logs = "\n".join(f"--- {p.name}:\n{p.output()[-2000:]}"
                             for p in (self.dockerd, self.plugin) if p)
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr}\n{logs}")
        return result

    def links(self):
        """{ifname: master ifname or None} of the host's namespace."""
        with IPRoute(netns=self.host.netns) as ipr:
            links = ipr.get_links()
            names = {link["index"]: link.get("ifname") for link in links}
            return {link.get("ifname"): names.get(link.get("master")) for link in links}

    # -- teardown -------------------------------------------------------------------

    def close(self):
        if self.dockerd and self.dockerd.alive():
            containers = self.docker("ps", "-aq", check=False).stdout.split()
            if containers:
                self.docker("rm", "-f", *containers, check=False)
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        self._kill_orphaned_shims()
        self._remove_cgroups()

    def _kill_orphaned_shims(self):
        """Shims that outlived containerd, and their containers: containerd's shims
        daemonize (no process group of ours), but they stay in our mount namespace."""
        if not self.mount_ns:
            return
        shims = [pid for pid in _pids() if _mount_ns(pid) == self.mount_ns]
        for pid in _descendants(shims) + shims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _remove_cgroups(self):
        # cgroup v1: one directory per controller; v2: one directory
        found = [*CGROUP_ROOT.glob(f"*/{self.cgroup_parent}"), CGROUP_ROOT / self.cgroup_parent]
        for directory in (d for d in found if d.is_dir()):
            for child in sorted(directory.rglob("*"), reverse=True):
                if child.is_dir():
                    _rmdir_quietly(child)
            _rmdir_quietly(directory)


def _rmdir_quietly(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


def _pids():
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _mount_ns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _descendants(roots):
    children = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
