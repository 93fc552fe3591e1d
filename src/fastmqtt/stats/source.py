"""Where the stats listener reads its numbers and sends admin changes: the `Source` protocol,
and `LocalSource`, this process's own runtime (the supervisor's view of every worker with
``workers > 1`` is in workers.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from fastmqtt.health import Admin
from fastmqtt.stats.rows import Rates, snapshot

if TYPE_CHECKING:
    from fastmqtt.rebalance import Rebalancer
    from fastmqtt.runtime import Runtime

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

    @property
    def rebalancer(self) -> Rebalancer:
        """Where rebalances and evacuations run (the supervisor's, under workers)."""

    async def find(
        self,
        client_id: str | None = None,
        prefix: str | None = None,
        backend: str | None = None,
        server: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """RelayHub.find of every process, as dicts (ConnInfo.as_dict() and ``worker``: the
        worker's index, None in a single process)."""

    async def leave(self, conn_ids: dict[int | None, list[int]], reason_code: int) -> int:
        """RelayHub.ask_to_leave, ids by the ``worker`` their find() gave; how many."""

    async def stick(self, client_id: str, remove: bool) -> list[dict[str, Any]]:
        """The stick-table entries of ``client_id`` (tables sticking on client ids), removed
        with ``remove``."""


class LocalSource:
    """This process's own runtime; also what a worker reports to its supervisor."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.rates = Rates()
        self._ticker: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._ticker = self.runtime.loop.call_later(RATE_TICK, self._tick)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    @property
    def rebalancer(self) -> Rebalancer:
        return self.runtime.rebalancer

    def snapshot_now(self) -> dict[str, Any]:
        return snapshot(self.runtime, self.rates)

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
        checker = self.runtime.health[backend]
        if weight is not None:
            checker.set_weight(server, weight, who)
        if state is not None:
            checker.set_admin(server, Admin(state), who)

    def reload(self) -> list[str]:
        return self.runtime.reload_file()

    async def find(
        self,
        client_id: str | None = None,
        prefix: str | None = None,
        backend: str | None = None,
        server: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        found = await self.runtime.hub.find(client_id, prefix, backend, server, limit)
        return [{**conn.as_dict(), "worker": self.runtime.worker} for conn in found]

    async def leave(self, conn_ids: dict[int | None, list[int]], reason_code: int) -> int:
        ids = [conn_id for some in conn_ids.values() for conn_id in some]
        return await self.runtime.hub.ask_to_leave(ids, reason_code)

    async def stick(self, client_id: str, remove: bool) -> list[dict[str, Any]]:
        entries = []
        for backend in self.runtime.backends.values():
            table, config = backend.stick, backend.config.stick
            if table is None or config is None or config.on != "client_id":
                continue
            entry = table.entry(client_id)
            if entry is None:
                continue
            if remove:
                table.remove(client_id)
            entries.append(
                {
                    "backend": backend.name,
                    "server": entry.server,
                    "live": entry.live,
                    "expires_in": entry.expires_in,
                }
            )
        return entries

    def _tick(self) -> None:
        for fe in self.runtime.frontends:
            self.rates.sample(("frontend", fe.name), fe.counters.total)
        for backend in self.runtime.backends.values():
            self.rates.sample(
                ("backend", backend.name), sum(s.counters.total for s in backend.servers)
            )
            for s in backend.servers:
                self.rates.sample(("server", backend.name, s.name), s.counters.total)
        self._ticker = self.runtime.loop.call_later(RATE_TICK, self._tick)
