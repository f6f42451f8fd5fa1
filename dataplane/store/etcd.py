"""A small etcd v3 client over etcd's JSON gateway (HTTP POST /v3/..., etcd 3.4 and later).

Why the gateway and not a client library: the gateway is part of every etcd since 3.3,
speaks plain JSON over HTTP (the standard library's http.client is enough), and has no
protobuf or gRPC version to keep in step; the PyPI clients either pin an old protobuf
(`etcd3`) or wrap this very gateway (`etcd3gw`). Keys and values are base64 on the
wire, 64-bit numbers arrive as strings, and fields with default values are left out.

Only what weavefast needs: range reads, put, delete, compare-and-swap transactions,
leases. Every call tries the endpoints in turn and raises `StoreUnavailable` when none
answers, so callers can tell "the store is away" from "the answer is no".

URLs: `etcd://HOST:PORT[,HOST:PORT...]` (plain HTTP) or `etcds://...` (TLS); user and
password as `etcd://USER:PASSWORD@HOST:2379`; the CA, client certificate and key for
TLS come from `ca=`, `cert=`, `key=` query parameters, e.g.
`etcds://10.0.0.5:2379?ca=/etc/etcd/ca.pem&cert=/etc/etcd/client.pem&key=/etc/etcd/client-key.pem`.
"""
import base64
import http.client
import json
import ssl
import threading
import urllib.parse

DEFAULT_TIMEOUT = 2.0  # seconds per endpoint: a store that is away must not stall allocations long


class StoreError(RuntimeError):
    """etcd answered, but with an error (bad credentials, a refused request)."""


class StoreUnavailable(StoreError):
    """No endpoint of the store answered."""


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

    def _post(self, host, port, path, body, token):
        if self._ssl:
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        try:
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def call(self, path, body):
        """POST /v3/`path` to the first endpoint that answers; returns the decoded answer."""
        with self._lock:
            order = self.endpoints[self._preferred:] + self.endpoints[:self._preferred]
        errors = []
        for host, port in order:
            try:
                if self.user and self._token is None:
                    self._authenticate(host, port)
                status, answer = self._post(host, port, f"/v3/{path}", body, self._token)
                if status == 401 and self.user:  # token expired
                    self._authenticate(host, port)
                    status, answer = self._post(host, port, f"/v3/{path}", body, self._token)
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
