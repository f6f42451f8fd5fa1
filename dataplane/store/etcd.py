"""A small etcd v3 client over etcd's JSON gateway (HTTP POST /v3/..., etcd 3.4 and later).

Why the gateway and not a client library: the gateway is part of every etcd since 3.3,
speaks plain JSON over HTTP (the standard library's http.client is enough), and has no
protobuf or gRPC version to keep in step; the PyPI clients either pin an old protobuf
(`etcd3`) or wrap this very gateway (`etcd3gw`). Keys and values are base64 on the
wire, 64-bit numbers arrive as strings, and fields with default values are left out.

Only what weavefast needs: range reads, put, delete, compare-and-swap transactions,
leases, and watch streams (one JSON object per line). Every call tries the endpoints in turn and raises `StoreUnavailable` when none
answers, so callers can tell "the store is away" from "the answer is no".

URLs: `etcd://HOST:PORT[,HOST:PORT...]` (plain HTTP) or `etcds://...` (TLS); user and
password as `etcd://USER:PASSWORD@HOST:2379`; the CA, client certificate and key for
TLS come from `ca=`, `cert=`, `key=` query parameters, e.g.
`etcds://10.0.0.5:2379?ca=/etc/etcd/ca.pem&cert=/etc/etcd/client.pem&key=/etc/etcd/client-key.pem`.
"""
import base64
import http.client
import json
import socket
import ssl
import threading
import urllib.parse

DEFAULT_TIMEOUT = 2.0  # seconds per endpoint: a store that is away must not stall allocations long


class StoreError(RuntimeError):
    """etcd answered, but with an error (bad credentials, a refused request)."""


class StoreUnavailable(StoreError):
    """No endpoint of the store answered."""


class AnswerTooLarge(StoreError):
    """etcd's answer (or one message of a watch) is larger than the caller accepts."""


def parse_store_url(url):
    """(endpoints [(host, port)], tls, user, password, {ca, cert, key}); ValueError names the fix."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("etcd", "etcds"):
        raise ValueError(f"store {url!r}: use etcd://HOST:2379[,HOST:2379...] "
                         "(or etcds:// for TLS)")
    userinfo, _, hosts = parsed.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    endpoints = []
    for item in hosts.split(","):
        if item.count(":") == 1 or "]:" in item:  # HOST:PORT or [V6]:PORT
            host, _, port = item.rpartition(":")
        else:
            host, port = item, ""
        host = host.strip("[]")
        try:
            port = int(port) if port else 2379
        except ValueError:
            raise ValueError(f"store {url!r}: {item!r} has a port that is not a number") from None
        if not host:
            raise ValueError(f"store {url!r}: give at least one HOST:PORT")
        endpoints.append((host, port))
    query = dict(urllib.parse.parse_qsl(parsed.query))
    unknown = set(query) - {"ca", "cert", "key"}
    if unknown:
        raise ValueError(f"store {url!r}: unknown parameter(s) {', '.join(sorted(unknown))} "
                         "(known: ca, cert, key)")
    return (endpoints, parsed.scheme == "etcds", urllib.parse.unquote(user) or None,
            urllib.parse.unquote(password) or None, query)


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _unb64(text):
    return base64.b64decode(text or "").decode()


def prefix_end(prefix):
    """The range end that selects every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw).decode()


class EtcdStore:
    def __init__(self, url, timeout=DEFAULT_TIMEOUT):
        self.url = url
        self.endpoints, tls, self.user, self.password, files = parse_store_url(url)
        self.timeout = timeout
        self._ssl = None
        if tls:
            self._ssl = ssl.create_default_context(cafile=files.get("ca"))
            if files.get("cert"):
                self._ssl.load_cert_chain(files["cert"], files.get("key"))
        self._token = None
        self._lock = threading.Lock()
        self._preferred = 0  # the endpoint that answered last

    @property
    def display(self):
        """The URL without its password, for messages and status."""
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # -- transport --------------------------------------------------------------------

    def _connection(self, host, port, timeout):
        if self._ssl:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _post(self, host, port, path, body, token, max_bytes=None):
        conn = self._connection(host, port, self.timeout)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        try:
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            response = conn.getresponse()
            raw = response.read() if max_bytes is None else response.read(max_bytes + 1)
            if max_bytes is not None and len(raw) > max_bytes:
                raise AnswerTooLarge(f"etcd {host}:{port}: the answer to {path} is larger than "
                                     f"{max_bytes} bytes")
            return response.status, json.loads(raw or b"{}")
        finally:
            conn.close()

    def call(self, path, body, max_bytes=None):
        """POST /v3/`path` to the first endpoint that answers; returns the decoded answer.
        `max_bytes`: a longer answer raises AnswerTooLarge, unread (what the store holds is
        not trusted to be small)."""
        with self._lock:
            order = self.endpoints[self._preferred:] + self.endpoints[:self._preferred]
        errors = []
        for host, port in order:
            try:
                if self.user and self._token is None:
                    self._authenticate(host, port)
                status, answer = self._post(host, port, f"/v3/{path}", body, self._token,
                                            max_bytes)
                if status == 401 and self.user:  # token expired
                    self._authenticate(host, port)
                    status, answer = self._post(host, port, f"/v3/{path}", body, self._token,
                                                max_bytes)
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{host}:{port}: {e}")
                continue
            with self._lock:
                self._preferred = self.endpoints.index((host, port))
            if status != 200:
                raise StoreError(f"etcd {host}:{port} refused {path}: "
                                 f"{answer.get('message') or answer.get('error') or status}")
            return answer
        raise StoreUnavailable(f"etcd {self.display} unreachable ({'; '.join(errors)})")

    def _authenticate(self, host, port):
        status, answer = self._post(host, port, "/v3/auth/authenticate",
                                    {"name": self.user, "password": self.password or ""}, None)
        if status != 200 or "token" not in answer:
            raise StoreError(f"etcd {host}:{port}: user {self.user!r} cannot log in: "
                             f"{answer.get('message') or status}")
        self._token = answer["token"]

    # -- key-value ---------------------------------------------------------------------

    def get_prefix(self, prefix):
        """{key: (value, mod_revision)} of every key under `prefix`."""
        answer = self.call("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return {_unb64(kv["key"]): (_unb64(kv.get("value")), int(kv.get("mod_revision", 0)))
                for kv in answer.get("kvs", [])}

    def range_raw(self, prefix, limit=0, max_bytes=None, keys_only=False):
        """({key: (value, mod_revision)}, revision, more) under `prefix`, keys and values as
        bytes exactly as stored (nothing decoded: the caller validates them); at most `limit`
        keys (0: all), `more` when some were left out; `revision` is the store's, to watch
        from."""
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        answer = self.call("kv/range", body, max_bytes)
        found = {base64.b64decode(kv.get("key", "")): (base64.b64decode(kv.get("value", "")),
                                                         int(kv.get("mod_revision", 0)))
                 for kv in answer.get("kvs", [])}
        return found, int(answer.get("header", {}).get("revision", 0)), bool(answer.get("more"))

    def get_raw(self, key, max_bytes=None):
        """(value bytes, mod_revision) of `key` (bytes), or None when it is absent."""
        answer = self.call("kv/range", {"key": base64.b64encode(key).decode()}, max_bytes)
        kvs = answer.get("kvs", [])
        return ((base64.b64decode(kvs[0].get("value", "")), int(kvs[0].get("mod_revision", 0)))
                if kvs else None)

    def get(self, key):
        """(value, mod_revision), or None when the key is absent."""
        answer = self.call("kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return (_unb64(kvs[0].get("value")), int(kvs[0].get("mod_revision", 0))) if kvs else None

    def put(self, key, value, lease=None):
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("kv/put", body)

    def delete(self, key):
        self.call("kv/deleterange", {"key": _b64(key)})

    def delete_prefix(self, prefix):
        self.call("kv/deleterange", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})

    def create(self, key, value, lease=None):
        """Put `key` only if it does not exist (a compare-and-swap on its creation); True if done."""
        put = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return self._txn({"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                          "create_revision": "0"}, {"request_put": put})

    def delete_if(self, key, mod_revision):
        """Delete `key` only if nobody changed it since `mod_revision`; True if done."""
        return self._txn({"key": _b64(key), "target": "MOD", "result": "EQUAL",
                          "mod_revision": str(mod_revision)},
                         {"request_delete_range": {"key": _b64(key)}})

    def _txn(self, compare, request):
        return bool(self.call("kv/txn", {"compare": [compare], "success": [request]})
                    .get("succeeded"))

    # -- leases ------------------------------------------------------------------------

    def grant_lease(self, ttl):
        return int(self.call("lease/grant", {"TTL": str(ttl), "ID": "0"})["ID"])

    def keep_alive(self, lease):
        """Renews `lease`; False when it has expired (the keys under it are gone)."""
        answer = self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0)) > 0

    def revoke_lease(self, lease):
        """Ends `lease` now: the keys under it go at once (watchers see them deleted)."""
        self.call("lease/revoke", {"ID": str(lease)})

    # -- watches -----------------------------------------------------------------------

    def watch_prefix(self, prefix, start_revision, timeout, max_line):
        """A Watch of every change under `prefix` from `start_revision` on, on the first
        endpoint that takes it; StoreUnavailable when none does. `timeout`: how long the
        stream may stay quiet (Watch.next raises TimeoutError after it)."""
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision)}}
        with self._lock:
            order = self.endpoints[self._preferred:] + self.endpoints[:self._preferred]
        errors = []
        for host, port in order:
            conn = self._connection(host, port, self.timeout)  # to connect and be answered
            try:
                if self.user and self._token is None:
                    self._authenticate(host, port)
                headers = {"Content-Type": "application/json"}
                if self._token:
                    headers["Authorization"] = self._token
                conn.request("POST", "/v3/watch", body=json.dumps(body), headers=headers)
                response = conn.getresponse()
                if response.status == 401 and self.user:
                    self._token = None  # expired: the next attempt logs in again
                if response.status != 200:
                    raise StoreError(f"etcd {host}:{port} refused watch: {response.status}")
                conn.sock.settimeout(timeout)  # then as long as a quiet watch may be
            except (OSError, http.client.HTTPException, ValueError) as e:
                conn.close()
                errors.append(f"{host}:{port}: {e}")
                continue
            except BaseException:
                conn.close()
                raise
            return Watch(conn, response, f"{host}:{port}", max_line)
        raise StoreUnavailable(f"etcd {self.display} unreachable ({'; '.join(errors)})")


class Watch:
    """One watch stream: `next()` returns the next message's "result" ({"events": [...],
    "header": {...}}, or {"created": true}, {"canceled": true, "compact_revision": ...});
    raises TimeoutError when nothing came within the timeout (the stream is then of no
    further use: close it), AnswerTooLarge for a message longer than `max_line`,
    StoreUnavailable when the stream ends or breaks. `interrupt()` may be called from
    another thread to wake the reader (it gets StoreUnavailable); `close()` only from
    the reader's."""

    def __init__(self, conn, response, endpoint, max_line):
        self.conn, self.response, self.endpoint, self.max_line = conn, response, endpoint, max_line
        self._sock = conn.sock

    def next(self):
        try:
            line = self.response.readline(self.max_line + 1)
        except TimeoutError:
            raise
        except Exception as e:  # http.client's state after a broken or interrupted stream
            raise StoreUnavailable(f"etcd {self.endpoint}: watch broken "
                                   f"({type(e).__name__}: {e})") from None
        if not line:
            raise StoreUnavailable(f"etcd {self.endpoint}: watch closed")
        if len(line) > self.max_line:
            raise AnswerTooLarge(f"etcd {self.endpoint}: a watch message is larger than "
                                 f"{self.max_line} bytes")
        try:
            message = json.loads(line)
        except ValueError:
            raise StoreError(f"etcd {self.endpoint}: a watch message is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
            error = message.get("error") if isinstance(message, dict) else None
            if isinstance(error, dict) and error.get("http_code") == 503:
                raise StoreUnavailable(f"etcd {self.endpoint}: watch ended: "
                                       f"{str(error.get('message'))[:200]}")
            raise StoreError(f"etcd {self.endpoint}: watch ended: {str(error)[:200]}")
        return message["result"]

    def interrupt(self):
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        self.interrupt()
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - whatever state an interrupted stream left
            pass
