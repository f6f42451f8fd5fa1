"""A real etcd (Debian's etcd-server) for the tests, in a simulated host's namespace.

`Etcd(tb, host, workdir, ip)` starts a one-member cluster listening on `ip`:2379 (the
host's loopback or its underlay address) with its data under `workdir`; `stop()` and
`start()` take it away and bring it back with its data, as an outage would. The
testbed stops it with everything else; the caller removes `workdir`.
"""
import shutil
import sys
import time

from dataplane import testbed

DEBIAN_PACKAGE = "etcd-server"
PORT = 2379


def etcd_unavailable():
    reason = testbed.netns_available()
    if reason:
        return reason
    if shutil.which("etcd") is None:
        return f"needs etcd (apt-get install {DEBIAN_PACKAGE})"
    return None


class Etcd:
    def __init__(self, tb, host, workdir, ip="127.0.0.1"):
        self.tb, self.host, self.ip = tb, host, ip
        self.data_dir = workdir / "etcd"
        self.url = f"etcd://{ip}:{PORT}"
        self.process = None
        self.start()

    def start(self):
        client = f"http://{self.ip}:{PORT}"
        peer = f"http://127.0.0.1:{PORT + 1}"
        self.process = self.tb.start(self.host, [
            "etcd", "--name", "wfetcd", "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"wfetcd={peer}"], name=f"{self.host.netns}-etcd")
        deadline = time.monotonic() + 20
        probe = [sys.executable, "-c",
                 f"from dataplane.store import EtcdStore; EtcdStore({self.url!r}).get('/')"]
        while self.tb.run(self.host, probe, check=False).returncode != 0:
            if not self.process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start:\n{self.process.output()[-3000:]}")
            time.sleep(0.2)

    def stop(self):
        self.process.stop()
        self.tb.processes.remove(self.process)
