"""The few calls of Docker's Engine API the plugin makes, over dockerd's Unix socket.

The plugin API never tells a driver which container it serves, so names (DNS) and
"which container is starting" (stable addresses) come from here; the router also
creates the ready-made network with it.
"""
import http.client
import json
import socket
import urllib.parse

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


class DockerError(RuntimeError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class DockerClient:
    def __init__(self, docker_host=DEFAULT_DOCKER_HOST):
        if not docker_host.startswith("unix://"):
            raise ValueError(f"docker host {docker_host!r}: only unix:///PATH is supported")
        self.path = docker_host[len("unix://"):]

    def request(self, method, path, body=None, timeout=10.0):
        """(status, decoded answer); DockerError when dockerd does not answer."""
        conn = _UnixConnection(self.path, timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw.strip() else None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise DockerError(f"dockerd at {self.path}: {e}") from None
        finally:
            conn.close()

    def get(self, path, timeout=10.0):
        status, answer = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise DockerError(f"GET {path}: {status} {answer}")
        return answer

    def containers(self, filters=None, timeout=10.0):
        query = "all=1" + (f"&filters={urllib.parse.quote(json.dumps(filters))}" if filters else "")
        return self.get(f"/containers/json?{query}", timeout=timeout)

    def inspect(self, container_id):
        status, answer = self.request("GET", f"/containers/{container_id}/json")
        return answer if status == 200 else None

    def events(self, filters):
        """Subscribes to dockerd's events (at once: none is missed after this returns) and
        returns an iterator over them as dicts, which raises DockerError when the stream ends."""
        conn = _UnixConnection(self.path, None)
        try:
            conn.request("GET", f"/events?filters={urllib.parse.quote(json.dumps(filters))}")
            response = conn.getresponse()
            if response.status != 200:
                raise DockerError(f"GET /events: {response.status}")
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise DockerError(f"dockerd at {self.path}: {e}") from None
        except DockerError:
            conn.close()
            raise
        return self._read_events(conn, response)

    def _read_events(self, conn, response):
        try:
            buffer = b""
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    raise DockerError("dockerd closed the event stream")
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise DockerError(f"dockerd at {self.path}: {e}") from None
        finally:
            conn.close()
