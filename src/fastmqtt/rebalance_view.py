"""What a rebalance sees of the connections and how it moves them (rebalance.View): this
process's own (`LocalView`, over RelayHub.find / ask_to_leave, MOVE.md), or, under a
supervisor, every worker's through its admin channel (`WorkerView`). A worker answers the
supervisor's ``rebalance`` requests with its own LocalView (`answer`)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from fastmqtt.backend import Backend, Server, ServerState
from fastmqtt.config import BackendConfig
from fastmqtt.health import Admin
from fastmqtt.rebalance import Candidate, Move, ServerLoad, mode, persistent

if TYPE_CHECKING:
    from fastmqtt.relay import ConnInfo
    from fastmqtt.runtime import Runtime
    from fastmqtt.workers import Supervisor

CALLS = ("loads", "candidates", "locate", "move")
LOCATE_PER_ID = 4  # connections locate() takes per client id (the old one and its successor)
LOCATE_REQUEST = 48 * 1024  # bytes of client ids (JSON) per locate request to a worker


def _json_batches(client_ids: Iterable[str], budget: int) -> Iterator[list[str]]:
    """The ids, each once, in lists whose JSON takes ``budget`` bytes at most (as
    workers.Channel sends it); an id longer than that alone is left out: no request carries
    it (a 65,535-byte client id)."""
    batch: list[str] = []
    size = 2  # []
    for client_id in dict.fromkeys(client_ids):
        cost = len(json.dumps(client_id)) + 2  # ", "
        if cost + 2 > budget:
            continue
        if size + cost > budget:
            yield batch
            batch, size = [], 2
        batch.append(client_id)
        size += cost
    if batch:
        yield batch


def _usable(server: Server) -> bool:
    """Takes a fair share: up (health and admin), addressed, a primary with weight."""
    return (
        server.state is ServerState.UP
        and server.sockaddr is not None
        and not server.backup
        and server.weight > 0
    )


class _Client(NamedTuple):
    """A connection as Backend's key functions read it (backend.Known)."""

    client_id: str | None
    username: str | None
    client_addr: tuple[str, int]


def _client(info: ConnInfo) -> _Client:
    host, _, port = info.source.rpartition(":")
    return _Client(info.client_id, info.username, (host.strip("[]"), int(port or 0)))


class LocalView:
    """This process's connections."""

    def __init__(self, runtime: Runtime, holder: int = 0) -> None:
        self.runtime = runtime
        self.holder = holder

    def config(self, backend: str) -> BackendConfig:
        return self.runtime.backends[backend].config

    def _backend(self, name: str) -> Backend:
        backend = self.runtime.backends[name]
        if self.runtime.fast is not None:  # what the engine's fast path did, into the counters
            self.runtime.hub.take_records()
            self.runtime.fast.sync()
        return backend

    async def loads(self, backend: str) -> list[ServerLoad]:
        return [
            ServerLoad(s.name, s.weight, _usable(s), s.counters.current)
            for s in self._backend(backend).servers
        ]

    async def ready(self, backend: str) -> set[str]:
        return {s.name for s in self.runtime.backends[backend].servers if _usable(s)}

    async def candidates(self, backend: str, server: str, limit: int) -> list[Candidate]:
        b = self._backend(backend)
        consistent = mode(b.config) == "consistent"
        found = []
        for info in await self.runtime.hub.find(backend=backend, server=server, limit=limit):
            client = _client(info)
            home = None
            if consistent:
                chosen = b.home(b.hash_key(client))
                home = chosen.name if chosen is not None else None
            found.append(
                Candidate(
                    self.holder,
                    info.conn_id,
                    info.client_id or "",
                    server,
                    persistent(info.protocol_version, info.clean_start, info.session_expiry),
                    home,
                    b.stick_key(client),
                )
            )
        return found

    async def locate(self, backend: str, client_ids: Sequence[str]) -> dict[str, str]:
        found = await self.runtime.hub.find(
            client_ids=client_ids, backend=backend, limit=LOCATE_PER_ID * len(set(client_ids))
        )
        return {i.client_id: i.server for i in found if i.client_id and i.server is not None}

    async def move(self, backend: str, moves: Sequence[Move], reason: int) -> int:
        stick = self.runtime.backends[backend].stick
        if stick is not None:  # before the client is asked: its reconnect must find the entry
            for move in moves:
                if move.target is not None and move.candidate.stick_key:
                    stick.put(move.candidate.stick_key, move.target)
        return await self.runtime.hub.ask_to_leave([m.candidate.conn_id for m in moves], reason)

    async def drain(self, backend: str, server: str, who: str) -> None:
        self.runtime.health[backend].set_admin(server, Admin.DRAIN, who)


# -- workers (candidates and moves travel as JSON lists) -------------------------------


async def answer(view: LocalView, request: dict[str, Any]) -> dict[str, Any]:
    """A worker's answer to the supervisor's ``{"op": "rebalance", "call": ..., ...}``."""
    call, backend = request["call"], request["backend"]
    if call not in CALLS:
        return {"error": f"unknown call {call!r}"}
    try:
        if call == "loads":
            result: Any = await view.loads(backend)
        elif call == "candidates":
            result = await view.candidates(backend, request["server"], request["limit"])
        elif call == "locate":
            result = await view.locate(backend, request["client_ids"])
        else:
            moves = [Move(Candidate(*m[0]), m[1]) for m in request["moves"]]
            result = await view.move(backend, moves, request["reason"])
    except KeyError:
        return {"error": f"no backend {backend} here"}
    return {"result": result}


class WorkerView:
    """The supervisor's view: every live worker's connections, merged; each move goes to the
    worker that holds the connection."""

    def __init__(self, supervisor: Supervisor, change: Callable[..., Awaitable[None]]) -> None:
        self.supervisor = supervisor
        self.change = change  # WorkerStats.change: every worker, and the ones started later

    def config(self, backend: str) -> BackendConfig:
        return self.supervisor.config.backends[backend]

    async def _ask(self, request: dict[str, Any], workers: Sequence[Any] | None = None) -> list:
        """Each worker's result (None for one that did not answer or lacks the backend)."""
        live = self.supervisor.live_workers() if workers is None else workers
        answers = await asyncio.gather(
            *(w.channel.call({"op": "rebalance", **request}) for w in live)
        )
        return [(w, (a or {}).get("result")) for w, a in zip(live, answers, strict=True)]

    async def loads(self, backend: str) -> list[ServerLoad]:
        config = self.config(backend)  # KeyError when a reload removed it
        merged: dict[str, ServerLoad] = {}
        for _, result in await self._ask({"call": "loads", "backend": backend}):
            for row in result or ():
                load = ServerLoad(*row)
                old = merged.get(load.name)
                merged[load.name] = (
                    load
                    if old is None
                    else old._replace(
                        usable=old.usable or load.usable, current=old.current + load.current
                    )
                )
        return [merged[s.name] for s in config.servers if s.name in merged]

    async def ready(self, backend: str) -> set[str]:
        """Usable in every worker that answered: each looks names up and checks health on
        its own, and a moved client may reconnect to any of them."""
        self.config(backend)  # KeyError when a reload removed it
        answered = [r for _, r in await self._ask({"call": "loads", "backend": backend}) if r]
        each = [{row[0] for row in rows if ServerLoad(*row).usable} for rows in answered]
        return set.intersection(*each) if each else set()

    async def candidates(self, backend: str, server: str, limit: int) -> list[Candidate]:
        """Every worker's, taken in turn (one of each, then the next of each): a second's
        quota is spread over the workers that hold candidates, not spent on the first."""
        request = {"call": "candidates", "backend": backend, "server": server, "limit": limit}
        per_worker = [
            [Candidate(*row)._replace(holder=w.index) for row in result or ()]
            for w, result in await self._ask(request)
        ]
        turns = itertools.zip_longest(*per_worker)
        return [c for turn in turns for c in turn if c is not None]

    async def locate(self, backend: str, client_ids: Sequence[str]) -> dict[str, str]:
        """One request per worker, or one per LOCATE_REQUEST bytes of ids: a worker reads
        lines of workers.MAX_REQUEST at most (a longer one would end its channel)."""
        where: dict[str, str] = {}
        for ids in _json_batches(client_ids, LOCATE_REQUEST):
            request = {"call": "locate", "backend": backend, "client_ids": ids}
            for _, result in await self._ask(request):
                where.update(result or {})
        return where

    async def move(self, backend: str, moves: Sequence[Move], reason: int) -> int:
        by_worker: dict[int, list[Move]] = {}
        for move in moves:
            by_worker.setdefault(move.candidate.holder, []).append(move)
        live = {w.index: w for w in self.supervisor.live_workers()}
        asked = 0
        for index, group in by_worker.items():
            worker = live.get(index)
            if worker is None:
                continue  # it died: its connections went with it
            request = {
                "call": "move",
                "backend": backend,
                "moves": [[list(m.candidate), m.target] for m in group],
                "reason": reason,
            }
            for _, result in await self._ask(request, [worker]):
                asked += result or 0
        return asked

    async def drain(self, backend: str, server: str, who: str) -> None:
        await self.change(backend, server, "drain", None, who)
