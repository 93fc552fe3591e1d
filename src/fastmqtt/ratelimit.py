"""Admission limits of one frontend: connections per source (rate and concurrency), a global
CONNECT rate, and a per-client-id reconnect rate that delays instead of refusing.

A source is an IPv4 address, or an IPv6 prefix (``ipv6_prefix`` bits, a /64 by default: one
subscriber's LAN holds 2^64 addresses, so per-address limits would not limit it).

Memory stays bounded whatever the clients do: per-key buckets live in an LRU of at most
``RateLimitConfig.tracked`` keys (an evicted key starts again with a full bucket, which only
ever errs towards letting a client in), each key of a fixed size (a client id is kept as its
128-bit digest, however long the id), and concurrency counts exist only while a source has
live connections.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastmqtt.config.model import Rate, RateLimitConfig

# Memory one remembered key (source or client id) may take, measured with tracemalloc in
# tests/unit/test_access.py (a bucket, its fixed-size key and the LRU entry: about 300 bytes);
# docs/config.md states it, so that ``tracked`` is a memory bound an operator can size.
BYTES_PER_TRACKED_KEY = 400
_V4_MAPPED = bytes(10) + b"\xff\xff"

Key = str | int | bytes


class TokenBucket:
    """Tokens refill continuously at ``rate.per_second`` up to ``rate.burst``.

    ``reserve`` may take the bucket below zero: a negative level is a queue of clients
    already promised a later slot, and the wait it returns is their place in it.
    """

    __slots__ = ("_clock", "_rate", "level", "stamp")

    def __init__(self, rate: Rate, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._clock = clock
        self.level = float(rate.burst)
        self.stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self._rate.burst, self.level + (now - self.stamp) * self._rate.per_second)
        self.stamp = now

    def take(self) -> bool:
        """One token now, or False (nothing taken)."""
        self._refill()
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True

    def reserve(self, max_wait: float) -> float | None:
        """Seconds to wait for a token taken now, or None if that would exceed ``max_wait``."""
        self._refill()
        wait = max(0.0, (1.0 - self.level) / self._rate.per_second)
        if wait > max_wait:
            return None
        self.level -= 1.0
        return wait


class _BucketLRU:
    """One bucket per key, the least recently used forgotten beyond ``size`` keys."""

    def __init__(self, rate: Rate, size: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._size = size
        self._clock = clock
        self._buckets: OrderedDict[Key, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: Key) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._clock)
            if len(self._buckets) > self._size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket


class RateLimiter:
    """The limits of one frontend. Each check returns a reason word (refused) or None."""

    def __init__(
        self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._live: dict[Key, int] = {}  # source -> live connections (only while > 0)
        self._per_source = _bucket_lru(config.per_source, config.tracked, clock)
        self._per_client = _bucket_lru(config.per_client_id, config.tracked, clock)
        self._global = (
            None if config.connect_rate is None else TokenBucket(config.connect_rate, clock)
        )

    def tracked_keys(self) -> int:
        """Keys held in memory (for tests and the soak bench)."""
        sizes = (len(lru) for lru in (self._per_source, self._per_client) if lru is not None)
        return sum(sizes) + len(self._live)

    def open_source(self, address: str) -> str | None:
        """A new connection from ``address``: counted as live unless refused."""
        source = source_key(address, self.config.ipv6_prefix)
        limit = self.config.max_per_source
        if limit is not None and self._live.get(source, 0) >= limit:
            return "max-per-source"
        if self._per_source is not None and not self._per_source.get(source).take():
            return "rate-per-source"
        self._live[source] = self._live.get(source, 0) + 1
        return None

    def close_source(self, address: str) -> None:
        """A connection that ``open_source`` let in has ended."""
        source = source_key(address, self.config.ipv6_prefix)
        left = self._live.get(source, 0) - 1
        if left > 0:
            self._live[source] = left
        else:
            self._live.pop(source, None)

    def admit_connect(self) -> str | None:
        """The frontend-wide CONNECT admission rate."""
        if self._global is not None and not self._global.take():
            return "rate-global"
        return None

    def reconnect_delay(self, client_id: str) -> float | None:
        """Seconds to hold a CONNECT for ``client_id`` before routing it (0.0 = go now),
        or None: the client reconnects so fast that it should be refused."""
        if self._per_client is None or not client_id:
            return 0.0
        return self._per_client.get(client_key(client_id)).reserve(self.config.max_delay)


def client_key(client_id: str) -> bytes:
    """A fixed-size key for a client id of any length (up to 64 KiB): its 128-bit digest."""
    return hashlib.blake2b(client_id.encode(), digest_size=16).digest()


def source_key(address: str, ipv6_prefix: int) -> Key:
    """What per-source limits count under: an IPv4 address itself (also when a dual-stack
    listener shows it as ::ffff:a.b.c.d), the first ``ipv6_prefix`` bits of an IPv6 one."""
    if ":" not in address:
        return address
    packed = socket.inet_pton(socket.AF_INET6, address.partition("%")[0])  # no zone id
    if packed.startswith(_V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return int.from_bytes(packed, "big") >> (128 - ipv6_prefix)


def _bucket_lru(rate: Rate | None, size: int, clock: Callable[[], float]) -> _BucketLRU | None:
    return None if rate is None else _BucketLRU(rate, size, clock)
