"""Where the stats listener reads its numbers and sends admin changes: the `Source` protocol,
and `LocalSource`, this process's own runtime (the supervisor's view of every worker with
``workers > 1`` is in workers.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from fastmqtt.health import Admin
from fastmqtt.stats.rows import Rates, snapshot

if TYPE_CHECKING:
    from fastmqtt.runtime import Proxy

RATE_TICK = 1.0  # seconds between session-rate samples


class Source(Protocol):
    """Where the stats listener reads its numbers and sends admin changes."""

    def start(self) -> None: ...

    def close(self) -> None: ...

    async def snapshot(self) -> dict[str, Any]:
        """rows.snapshot() data; HTTPError when there is nothing to show."""

    async def change(
        self, backend: str, server: str, state: str | None, weight: int | None, who: str
    ) -> None:
        """Apply a validated admin change to a server the last snapshot listed."""

    def reload(self) -> list[str]:
        """Re-read the config file (as SIGHUP does); the errors, empty when applied."""


class LocalSource:
    """This process's own proxy; also what a worker reports to its supervisor."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.rates = Rates()
        self._ticker: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._ticker = self.proxy.loop.call_later(RATE_TICK, self._tick)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    def snapshot_now(self) -> dict[str, Any]:
        return snapshot(self.proxy, self.rates)

    async def snapshot(self) -> dict[str, Any]:
        return self.snapshot_now()

    async def change(
        self, backend: str, server: str, state: str | None, weight: int | None, who: str
    ) -> None:
        self.apply(backend, server, state, weight, who)

    def apply(
        self, backend: str, server: str, state: str | None, weight: int | None, who: str
    ) -> None:
        """KeyError for a server this process does not have."""
        checker = self.proxy.health[backend]
        if weight is not None:
            checker.set_weight(server, weight, who)
        if state is not None:
            checker.set_admin(server, Admin(state), who)

    def reload(self) -> list[str]:
        return self.proxy.reload_file()

    def _tick(self) -> None:
        for fe in self.proxy.frontends:
            self.rates.sample(("frontend", fe.name), fe.counters.total)
        for backend in self.proxy.backends.values():
            self.rates.sample(
                ("backend", backend.name), sum(s.counters.total for s in backend.servers)
            )
            for s in backend.servers:
                self.rates.sample(("server", backend.name, s.name), s.counters.total)
        self._ticker = self.proxy.loop.call_later(RATE_TICK, self._tick)
