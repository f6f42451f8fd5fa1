"""What the control port lets in before a peer has authenticated, and logs
that an attacker cannot inflate.

Every TCP connection starts unauthenticated: it costs a file descriptor and a
buffer until its handshake ends (at most MAX_HANDSHAKE_MESSAGE bytes per
message, within the handshake deadline). Admission caps how many such
connections exist at once, overall and per source address, and how fast one
source may open them (a token bucket, as WireGuard limits handshakes per
source); what is over a limit is closed at once and counted. Counted refusals
are logged once per source and reason per interval, with how many more there
were, never once per connection.
"""
import logging
import time
from collections import Counter, OrderedDict

MAX_PENDING = 64             # unauthenticated connections at once, all sources
MAX_PENDING_PER_SOURCE = 8
ACCEPT_RATE = 10.0           # new connections per second and source, sustained
ACCEPT_BURST = 20
MAX_TRACKED_SOURCES = 4096   # token buckets and log entries kept (the oldest go first)
LOG_INTERVAL = 60.0


class _Bounded(OrderedDict):
    """A dict that forgets its least recently set keys beyond `limit`."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Admission:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.pending = Counter()        # source -> unauthenticated connections open
        self._buckets = _Bounded(MAX_TRACKED_SOURCES)   # source -> (tokens, last refill)

    def admit(self, source):
        """None when a new connection from `source` may go on, else why not."""
        now = self.clock()
        tokens, last = self._buckets.get(source, (ACCEPT_BURST, now))
        tokens = min(ACCEPT_BURST, tokens + (now - last) * ACCEPT_RATE)
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            return "connection_rate"
        self._buckets[source] = (tokens - 1, now)
        if sum(self.pending.values()) >= MAX_PENDING:
            return "unauthenticated_connections"
        if self.pending[source] >= MAX_PENDING_PER_SOURCE:
            return "unauthenticated_from_source"
        self.pending[source] += 1
        return None

    def done(self, source):
        """The connection from `source` authenticated, or closed."""
        self.pending[source] -= 1
        if self.pending[source] <= 0:
            del self.pending[source]


class QuietLog:
    """Logs a line per key at most once per interval, saying how many were held back."""

    def __init__(self, logger: logging.Logger, interval=LOG_INTERVAL, clock=time.monotonic):
        self.logger, self.interval, self.clock = logger, interval, clock
        self._seen = _Bounded(MAX_TRACKED_SOURCES)   # key -> (last logged, held back since)

    def __call__(self, key, level, message):
        now = self.clock()
        last, held = self._seen.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self._seen[key] = (last, held + 1)
            return
        if held:
            message += f" ({held} more like it in the last {self.interval:g} s)"
        self.logger.log(level, message)
        self._seen[key] = (now, 0)
