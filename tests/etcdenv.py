"""A real etcd (Debian's etcd-server) for the tests, in a simulated host's namespace.

`Etcd(tb, host, workdir, ip)` starts a one-member cluster listening on `ip`:2379 (the
host's loopback or its underlay address) with its data under `workdir`; `stop()` and
`start()` take it away and bring it back with its data, as an outage would. The
testbed stops it with everything else; the caller removes `workdir`.
"""
import shutil
import subprocess
import sys
import time

from dataplane import testbed

DEBIAN_PACKAGE = "etcd-server"
PORT = 2379


def etcd_unavailable():
    reason = testbed.netns_available()
    if reason:
        return reason
    for program, package in (("etcd", DEBIAN_PACKAGE), ("openssl", "openssl")):
        if shutil.which(program) is None:
            return f"needs {program} (apt-get install {package})"
    return None


def make_certificates(directory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=weavefast test CA")
    for name, extensions in (
            # etcd's gateway presents the server certificate as a client too
            ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
            ("client", "extendedKeyUsage=clientAuth")):
        (directory / f"{name}.ext").write_text(extensions + "\n")
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                "-extfile", f"{name}.ext")
    return directory


class Etcd:
    def __init__(self, tb, host, workdir, ip="127.0.0.1", tls=False):
        """`tls`: clients must connect over TLS with a certificate of `certificates`."""
        self.tb, self.host, self.ip = tb, host, ip
        self.data_dir = workdir / "etcd"
        self.certificates = make_certificates(workdir / "certs") if tls else None
        if tls:
            files = "&".join(f"{k}={self.certificates / f}" for k, f in (
                ("ca", "ca.pem"), ("cert", "client.pem"), ("key", "client.key")))
            self.url = f"etcds://{ip}:{PORT}?{files}"
        else:
            self.url = f"etcd://{ip}:{PORT}"
        self.process = None
        self.start()

    def start(self):
        client = f"{'https' if self.certificates else 'http'}://{self.ip}:{PORT}"
        peer = f"http://127.0.0.1:{PORT + 1}"
        tls = [] if not self.certificates else [
            "--cert-file", str(self.certificates / "server.pem"),
            "--key-file", str(self.certificates / "server.key"),
            "--trusted-ca-file", str(self.certificates / "ca.pem"), "--client-cert-auth"]
        self.process = self.tb.start(self.host, [
            "etcd", "--name", "wfetcd", "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"wfetcd={peer}", *tls], name=f"{self.host.netns}-etcd")
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
