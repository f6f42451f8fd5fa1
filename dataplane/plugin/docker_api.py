"""The calls of Docker's Engine API the plugin makes, through the `docker` SDK.

The plugin API never tells a driver which container it serves, so names (DNS) and
"which container is starting" (stable addresses) come from here; reconciliation
(reconcile.py) asks it what is still in use, and the router creates the ready-made
network with it. Each call opens its own client (the callers are separate threads)
with a timeout: dockerd may be waiting on the plugin itself.
"""
DOCKER_TIMEOUT = 10.0  # seconds for one API call


class DockerError(RuntimeError):
    """dockerd did not answer, or refused."""


class NotFound(DockerError):
    """dockerd has no such object."""


class Refused(DockerError):
    """dockerd answered with an error: the message is its explanation."""


class DockerClient:
    def __init__(self, docker_host):
        self.docker_host = docker_host
        self._version = None  # the API version dockerd agreed to, once it answered

    def api(self, timeout=DOCKER_TIMEOUT):
        """A docker.APIClient (the caller closes it); DockerError when dockerd does not answer."""
        import docker  # only the plugin needs it; importing it costs a fraction of a second

        try:
            client = docker.APIClient(base_url=self.docker_host, version=self._version or "auto",
                                      timeout=timeout)
        except docker.errors.DockerException as e:
            raise DockerError(f"dockerd at {self.docker_host}: {e}") from None
        self._version = client.api_version
        return client

    def _call(self, method, *args, timeout=DOCKER_TIMEOUT, **kwargs):
        import docker

        client = self.api(timeout)
        try:
            return getattr(client, method)(*args, **kwargs)
        except docker.errors.NotFound as e:
            raise NotFound(f"dockerd at {self.docker_host}: {e}") from None
        except docker.errors.APIError as e:
            raise Refused(e.explanation or str(e)) from None
        except (docker.errors.DockerException, OSError) as e:  # requests' errors are OSErrors
            raise DockerError(f"dockerd at {self.docker_host}: {e}") from None
        finally:
            client.close()

    def containers(self, filters=None, timeout=DOCKER_TIMEOUT):
        return self._call("containers", all=True, filters=filters, timeout=timeout)

    def inspect(self, container_id):
        """The container's details, or None when dockerd has no such container."""
        try:
            return self._call("inspect_container", container_id)
        except NotFound:
            return None

    def network_exists(self, name):
        try:
            self._call("inspect_network", name)
            return True
        except NotFound:
            return False

    def create_network(self, name, driver, ipam_config):
        self._call("create_network", name, driver=driver, check_duplicate=True,
                   ipam={"Driver": driver, "Config": [ipam_config]})

    def events(self, filters):
        """Subscribes to dockerd's events (at once: none is missed after this returns) and
        returns an iterator over them as dicts, which raises DockerError when the stream ends."""
        import docker

        client = self.api()
        try:
            stream = client.events(filters=filters, decode=True)
        except (docker.errors.DockerException, OSError) as e:
            client.close()
            raise DockerError(f"dockerd at {self.docker_host}: {e}") from None
        return self._read_events(client, stream)

    def _read_events(self, client, stream):
        import docker

        try:
            yield from stream
            raise DockerError("dockerd closed the event stream")
        except (docker.errors.DockerException, OSError, ValueError) as e:
            raise DockerError(f"dockerd at {self.docker_host}: {e}") from None
        finally:
            stream.close()
            client.close()
