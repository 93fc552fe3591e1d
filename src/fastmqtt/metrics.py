"""Live counters of frontends, backends and servers, read by logs, stats and metrics."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# CONNECT received -> broker connected (or its CONNACK), in seconds: loopback brokers answer in
# well under a millisecond, remote ones in a few; a dead node costs a timeout or a retry.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(slots=True)
class Histogram:
    """Prometheus-style histogram; ``counts[i]`` holds values in (bounds[i-1], bounds[i]],
    the last slot those above every bound."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


@dataclass(slots=True)
class FrontendCounters:
    current: int = 0
    max_current: int = 0
    total: int = 0  # accepted connections
    denied: Counter[str] = field(default_factory=Counter)  # rejected before routing, by reason
    invalid_forwarded: Counter[str] = field(default_factory=Counter)  # reject_invalid = false
    connects_by_version: Counter[int] = field(default_factory=Counter)
    bytes_in: int = 0  # client -> fastmqtt
    bytes_out: int = 0  # fastmqtt -> client
    accept_errors: int = 0
    # Of current and total, those on the C engine's fast path (issue 13; none yet): the
    # fast path counts them here as well as above, the rest took the event loop.
    fast_path_current: int = 0
    fast_path_total: int = 0

    def opened(self) -> None:
        self.current += 1
        self.total += 1
        self.max_current = max(self.max_current, self.current)


@dataclass(slots=True)
class ServerCounters:
    current: int = 0
    max_current: int = 0
    total: int = 0  # connections relayed through this server
    connect_errors: int = 0
    response_errors: int = 0  # no or bad CONNACK
    retries: int = 0
    redispatches: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connack_codes: Counter[int] = field(default_factory=Counter)

    def opened(self) -> None:
        self.current += 1
        self.total += 1
        self.max_current = max(self.max_current, self.current)


@dataclass(slots=True)
class BackendCounters:
    no_server: int = 0  # clients closed because no server could take them
    sticky_hits: int = 0
    sticky_misses: int = 0
    learned_ids: int = 0  # v5 assigned client identifiers learned from CONNACKs
    connect_latency: Histogram = field(default_factory=Histogram)  # CONNECT -> broker connected
    connack_latency: Histogram = field(default_factory=Histogram)  # CONNECT -> broker's CONNACK


@dataclass(slots=True)
class ReloadCounters:
    """Reloads (SIGHUP, the admin API) of one process. As Prometheus counts its own config
    reloads, the config loaded at start counts as the last load, a successful one."""

    last_at: float  # time.time() of the last load: the start, until a reload
    ok: int = 0
    refused: int = 0
    last_ok: bool = True

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.ok += 1
        else:
            self.refused += 1
        self.last_at, self.last_ok = now, ok

    def fields(self) -> dict[str, float]:
        return {
            "reloads_ok": self.ok,
            "reloads_refused": self.refused,
            "last_reload_time": self.last_at,
            "last_reload_ok": int(self.last_ok),
        }
