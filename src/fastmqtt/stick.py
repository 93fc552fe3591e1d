"""The stick table: which server a client id was last routed to.

A client that reconnects within ``expire`` goes back to its server (where its
persistent session lives) while that server is usable; when it is not, the
balancer picks another and ``put`` moves the entry there, so the entry follows the
client. Keys are the FULL client id (HAProxy's recipe truncates to 32 characters,
which sticks unrelated long ids together).

Lifetime, and how it differs from HAProxy:

- An entry never expires while its client is connected (``connected`` /
  ``disconnected`` keep a count of live connections per key). ``expire`` counts
  from the last disconnect, or from ``put`` when no connection is live. HAProxy's
  ``expire`` counts from the last connect, so a device connected for longer than
  ``expire`` loses its entry while still online and may reconnect elsewhere.
- ``get`` neither refreshes the expiry nor the recency: an entry is "used" by
  ``put``, ``connected`` and ``disconnected``, which the proxy calls on every
  routed connection anyway. That keeps idle entries in expiry order, so both the
  size bound and ``purge`` work from the oldest end in O(1) per entry.
- ``size`` bounds the table; the least recently used entry without live connections
  goes first, and one with live connections only when every entry has some.
- Empty client ids (3.1.1 clean sessions, v5 ids assigned by the broker) must not be
  stuck together on one server: ``put("")`` raises ``ValueError`` (callers skip
  them); ``get("")`` is always ``None``.

Expiry is lazy on ``get`` plus ``purge``, which the proxy calls every few seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class _Entry:
    __slots__ = ("live", "server", "since")

    def __init__(self, server: str, since: float) -> None:
        self.server = server
        self.live = 0  # connections currently open for this key
        self.since = since  # when the entry last became idle (no live connection)


class StickTable:
    """Client id -> server name, bounded by ``size``, idle entries expire after ``expire`` s."""

    def __init__(
        self, size: int, expire: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if size < 1:
            raise ValueError(f"stick table size must be >= 1, got {size}")
        if expire < 0:
            raise ValueError(f"stick table expire must be >= 0, got {expire}")
        self.size = size
        self.expire = expire
        self._clock = clock
        # Two LRU orders: idle entries (expire, evicted first) and entries with live
        # connections (never expire, evicted only when no idle entry is left).
        self._idle: OrderedDict[str, _Entry] = OrderedDict()
        self._busy: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._idle) + len(self._busy)

    def get(self, key: str) -> str | None:
        """Server stuck to ``key``, or None when unknown or expired."""
        entry = self._busy.get(key) or self._live_idle(key)
        return entry.server if entry is not None else None

    def put(self, key: str, server: str) -> None:
        """Stick ``key`` to ``server`` (new entry, or the client moved)."""
        if not key:
            raise ValueError("empty client ids are never stuck")
        entry = self._busy.get(key)
        if entry is not None:
            entry.server = server
            self._busy.move_to_end(key)
            return
        self._idle.pop(key, None)
        self._idle[key] = _Entry(server, self._clock())
        self._evict()

    def connected(self, key: str) -> None:
        """A connection for ``key`` is live: its entry stops expiring (no-op if unknown)."""
        entry = self._busy.get(key)
        if entry is None:
            entry = self._live_idle(key)
            if entry is None:
                return
            del self._idle[key]
            self._busy[key] = entry
        else:
            self._busy.move_to_end(key)
        entry.live += 1

    def disconnected(self, key: str) -> None:
        """A connection for ``key`` ended; the last one starts the expiry clock."""
        entry = self._busy.get(key)
        if entry is None:
            return
        entry.live -= 1
        if entry.live == 0:
            del self._busy[key]
            entry.since = self._clock()
            self._idle[key] = entry

    def forget_server(self, server: str) -> int:
        """Drop every entry pointing at ``server`` (removed on reload); returns how many."""
        dropped = 0
        for table in (self._idle, self._busy):
            gone = [key for key, entry in table.items() if entry.server == server]
            for key in gone:
                del table[key]
            dropped += len(gone)
        return dropped

    def purge(self, now: float | None = None) -> int:
        """Drop expired entries (oldest first, stops at the first live one); returns how many."""
        now = self._clock() if now is None else now
        dropped = 0
        while self._idle:
            key, entry = next(iter(self._idle.items()))
            if not self._expired(entry, now):
                break
            del self._idle[key]
            dropped += 1
        return dropped

    def _live_idle(self, key: str) -> _Entry | None:
        entry = self._idle.get(key)
        if entry is not None and self._expired(entry, self._clock()):
            del self._idle[key]
            return None
        return entry

    def _expired(self, entry: _Entry, now: float) -> bool:
        return now - entry.since >= self.expire

    def _evict(self) -> None:
        while len(self) > self.size:
            (self._idle or self._busy).popitem(last=False)
