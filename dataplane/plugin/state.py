"""The plugin's state on disk: one JSON document, replaced atomically on every change.

dockerd never replays CreateNetwork, CreateEndpoint or RequestPool to a plugin that
restarted, so everything the handlers learn lives in `state.json` under the state
directory. A change is made on a copy and becomes current only once the new file is
on disk (write a temporary file, fsync, rename over the old one, fsync the
directory): a request that fails, or a crash half-way, leaves the previous state.
"""
import contextlib
import copy
import json
import os
import tempfile
import threading
from pathlib import Path

FORMAT_VERSION = 1
STATE_FILE = "state.json"


def empty_state():
    return {"version": FORMAT_VERSION, "networks": {}, "endpoints": {}, "pools": {},
            "subnets": {}}


def _upgrade(data):
    """State files written before address blocks: each pool held its own --ip-range and
    addresses; they become this host's range of the pool's subnet."""
    subnets = data.setdefault("subnets", {})
    for pool in data["pools"].values():
        if "allocated" in pool:
            entry = subnets.setdefault(pool["subnet"], {"blocks": {}, "allocated": [],
                                                        "last": None})
            entry["blocks"][pool["range"]] = {"empty_since": None, "since": 0, "trim": True}
            entry["allocated"] += pool.pop("allocated")
            entry["last"] = pool.pop("last")
    return data


class StateError(RuntimeError):
    pass


class StateStore:
    """The state document, a lock that serialises requests, and its file."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self.lock = threading.Lock()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data = self._load()

    def _load(self):
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return empty_state()
        try:
            data = json.loads(text)
        except ValueError as e:
            raise StateError(f"{self.path} is not valid JSON ({e}); move it away to start empty")
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise StateError(f"{self.path}: unsupported state format "
                             f"(want version {FORMAT_VERSION}); move it away to start empty")
        return _upgrade(data)

    @contextlib.contextmanager
    def transaction(self):
        """Yields a copy of the state to change; it is saved and made current on success."""
        with self.lock:
            draft = copy.deepcopy(self.data)
            yield draft
            if draft != self.data:
                self._write(draft)
                self.data = draft

    def _write(self, data):
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
