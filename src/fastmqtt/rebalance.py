"""Rebalance and evacuate: move long-lived clients between the servers of a backend, a few a
second, by asking each to leave and letting it reconnect to where it should be now.

- **Rebalance**: every usable server's fair share is the clients the usable servers hold,
  split by weight. Clients leave the servers above their share for the servers below it until
  every usable server is within ``tolerance`` of its share. A moved client must land where it
  is sent: with a stick table its entry is pointed at the under-loaded server before it is
  asked to leave; with ``balance = "consistent"`` only clients whose Maglev home is now an
  under-loaded server move; with ``leastconn`` the reconnect goes to the least loaded server.
  Other balancers cannot send a client anywhere in particular: rebalance refuses them.
- **Evacuate**: the server is drained (no new clients) and every client on it is asked to
  leave; done when it holds none.

Both ask at most ``rate`` clients a second, in evenly spaced slots of each wall-clock second
(no bursts: any one-second window holds at most ``rate``), and never ask a client twice in one
run. The planning here is pure logic over a `View` (this process, or the supervisor's view of
its workers: rebalance_view.py), so it is tested without sockets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from fastmqtt.backend import first_endpoint
from fastmqtt.config import BackendConfig, Config, RebalanceConfig
from fastmqtt.config.model import MOVE_REASONS

log = logging.getLogger("fastmqtt.rebalance")

MAX_TICKS = 50  # slots per second at most: beyond, each slot asks several clients
AUTO_WAIT = 60.0  # seconds an added server has to come up for an automatic run
ARRIVAL_TIMEOUT = 15.0  # seconds a moved client has to come back before it is written off
SCAN_PER_RATE = 20  # candidates read per server and second, per client of the rate
MIN_SCAN = 1000


class ServerLoad(NamedTuple):
    name: str
    weight: int
    usable: bool  # takes new clients: up, ready, not a backup, weight above 0
    current: int  # clients connected now


class Candidate(NamedTuple):
    """A connected client as the planner sees it."""

    holder: int  # the worker that holds it (0 in a single process)
    conn_id: int  # unique within its holder
    client_id: str
    server: str
    persistent: bool  # its session outlives the connection (not a clean session)
    home: str | None  # balance = "consistent": the server its key maps to now
    stick_key: str | None  # its stick-table key (None: no table, or nothing to key on)


class Move(NamedTuple):
    candidate: Candidate
    target: str | None  # the server its stick entry is pointed at first (None: no entry)


class View(Protocol):
    """What a run needs of the process(es) that hold the connections."""

    async def loads(self, backend: str) -> list[ServerLoad]:
        """KeyError for an unknown backend."""

    async def ready(self, backend: str) -> set[str]:
        """The servers that take new clients in every process that takes clients (a moved
        client may reconnect to any of them). KeyError for an unknown backend."""

    async def candidates(self, backend: str, server: str, limit: int) -> list[Candidate]: ...

    async def locate(self, backend: str, client_ids: Sequence[str]) -> dict[str, str]:
        """Where each of ``client_ids`` that is connected now is (client id -> server)."""

    async def move(self, backend: str, moves: Sequence[Move], reason: int) -> int:
        """Point stick entries at the targets, then ask the clients to leave; how many were."""

    async def drain(self, backend: str, server: str, who: str) -> None: ...

    def config(self, backend: str) -> BackendConfig: ...


# -- pure planning -----------------------------------------------------------------------


def mode(config: BackendConfig) -> str | None:
    """How a moved client is sent to its new server, or None when it cannot be."""
    if config.stick is not None:
        return "stick"
    if config.balance in ("consistent", "leastconn"):
        return config.balance
    return None


def persistent(protocol_version: int, clean_start: bool | None, expiry: int | None) -> bool:
    """Does the client's broker session outlive its connection? MQTT 5: a session expiry above
    0 (a clean start with an expiry still leaves a session behind, and clients such as paho
    reconnect without clean start); older: clean session 0. Unknown counts as persistent."""
    if protocol_version == 5:
        return expiry is None or expiry > 0
    return clean_start is not True


def fair_shares(loads: Iterable[ServerLoad]) -> dict[str, int]:
    """Each usable server's share of the clients the usable servers hold, by weight, in whole
    clients that add up to that total (largest remainder)."""
    usable = [s for s in loads if s.usable]
    total, weights = sum(s.current for s in usable), sum(s.weight for s in usable)
    if not weights:
        return {}
    exact = {s.name: total * s.weight / weights for s in usable}
    shares = {name: math.floor(x) for name, x in exact.items()}
    left = total - sum(shares.values())
    for name in sorted(exact, key=lambda n: shares[n] - exact[n])[:left]:
        shares[name] += 1
    return shares


def balanced(counts: dict[str, float], shares: dict[str, int], tolerance: float) -> bool:
    """Is every usable server within ``tolerance`` of its share?"""
    return all(
        abs(counts.get(name, 0) - share) <= tolerance * share for name, share in shares.items()
    )


def slots(second: int, rate: int) -> list[tuple[float, int]]:
    """(when, how many) for one wall-clock second: ``rate`` clients in evenly spaced slots,
    each in the middle of its slice, so consecutive seconds continue the same spacing and any
    one-second window holds at most ``rate`` (a late slot never doubles up with the next)."""
    ticks = min(rate, MAX_TICKS)
    return [
        (second + (i + 0.5) / ticks, (i + 1) * rate // ticks - i * rate // ticks)
        for i in range(ticks)
    ]


class Window:
    """What may still be asked now so that no one-second window holds more than ``rate``
    (slots that run late never crowd the ones after them)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.recent: deque[tuple[float, int]] = deque()
        self.total = 0

    def allowance(self, now: float) -> int:
        while self.recent and self.recent[0][0] <= now - 1.0:
            self.total -= self.recent.popleft()[1]
        return self.rate - self.total

    def record(self, now: float, n: int) -> None:
        if n:
            self.recent.append((now, n))
            self.total += n


class Plan:
    """Which clients a rebalance asks to leave, and where each should land, against the loads
    projected from the live counts and the moves still under way."""

    def __init__(self, how: str, tolerance: float, only_clean: bool) -> None:
        self.how = how
        self.tolerance = tolerance
        self.only_clean = only_clean
        self.counts: dict[str, float] = {}
        self.shares: dict[str, int] = {}

    def update(
        self, loads: Sequence[ServerLoad], shifts: Iterable[tuple[str | None, str | None]]
    ) -> None:
        """Live loads, plus each move that has not shown in them yet: (the server it still
        is on, or None once it left; the server it should land on). The shares count the
        clients on their way too."""
        counts = {s.name: s.current for s in loads}
        for source, target in shifts:
            if source is not None:
                counts[source] = counts.get(source, 0) - 1
            if target is not None:
                counts[target] = counts.get(target, 0) + 1
        self.counts = {name: float(n) for name, n in counts.items()}
        self.shares = fair_shares([s._replace(current=counts[s.name]) for s in loads])

    def done(self) -> bool:
        return balanced(self.counts, self.shares, self.tolerance)

    def over(self) -> list[str]:
        """Servers above their share (the most loaded first): where clients leave from."""
        surplus = {n: self.counts.get(n, 0) - share for n, share in self.shares.items()}
        return sorted((n for n, x in surplus.items() if x >= 1), key=lambda n: -surplus[n])

    def wants(self, candidate: Candidate) -> bool:
        return bool(candidate.client_id) and not (self.only_clean and candidate.persistent)

    def target(self, candidate: Candidate) -> str | None:
        """The under-loaded server this client would land on, or None (leave it)."""
        deficit = {n: share - self.counts.get(n, 0) for n, share in self.shares.items()}
        if self.how == "consistent":
            home = candidate.home
            ok = home is not None and home != candidate.server and deficit.get(home, 0) >= 1
            return home if ok else None
        under = [n for n, x in deficit.items() if x >= 1 and n != candidate.server]
        return max(under, key=lambda n: deficit[n]) if under else None

    def pick(self, pools: dict[str, list[Candidate]], n: int) -> list[Move]:
        """Up to ``n`` moves, one at a time from the most loaded server, until balanced.
        ``pools`` (server -> candidates not asked yet) are consumed."""
        moves: list[Move] = []
        while len(moves) < n and not self.done():
            move = self._next(pools)
            if move is None:
                break
            moves.append(move)
            self.counts[move.candidate.server] -= 1
            self.counts[move.target] = self.counts.get(move.target, 0) + 1  # type: ignore[index]
        return moves

    def _next(self, pools: dict[str, list[Candidate]]) -> Move | None:
        for source in self.over():
            pool = pools.get(source, [])
            while pool:
                candidate = pool.pop()
                target = self.target(candidate) if self.wants(candidate) else None
                if target is not None:
                    return Move(candidate, target)
        return None


# -- one run -----------------------------------------------------------------------------


class Clock(Protocol):
    def time(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class WallClock:
    def time(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.time()))


@dataclass
class _Pending:
    source: str
    target: str | None
    asked_at: float
    where: str | None  # the server it was last seen on (None: gone, not back yet)


@dataclass
class Run:
    """One rebalance of a backend (``server`` None) or evacuation of one of its servers."""

    view: View
    backend: str
    server: str | None
    rate: int
    tolerance: float
    only_clean: bool
    reason: int
    who: str
    clock: Clock = field(default_factory=WallClock)
    state: str = "running"  # then done, stopped, incomplete or failed
    why: str = ""
    asked: int = 0  # clients asked to leave
    arrived: int = 0  # of those, seen connected again (rebalance: on a server, any)
    lost: int = 0  # not back within ARRIVAL_TIMEOUT
    started: float = 0.0
    ended: float | None = None
    shares: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _asked_ids: set[tuple[int, int]] = field(default_factory=set)  # (holder, conn_id)
    _moved_clients: set[str] = field(default_factory=set)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _last_ask: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _joins: int = 0  # servers that came up while it ran (automatic rebalance)

    @property
    def kind(self) -> str:
        return "rebalance" if self.server is None else "evacuate"

    def stop(self) -> None:
        self._stop.set()

    def servers_joined(self) -> None:
        """Servers came up while this rebalance runs: it takes them into its shares when it
        next reads the loads (every second), and must not end on loads read before that."""
        self._joins += 1

    def progress(self) -> dict[str, Any]:
        now = self.ended if self.ended is not None else self.clock.time()
        return {
            "backend": self.backend,
            "kind": self.kind,
            **({"server": self.server} if self.server is not None else {}),
            "state": self.state,
            "why": self.why,
            "rate": self.rate,
            **({"tolerance": self.tolerance} if self.server is None else {}),
            "only_clean_sessions": self.only_clean,
            "reason": f"0x{self.reason:02X}",
            "asked": self.asked,
            "arrived": self.arrived,
            "lost": self.lost,
            "in_flight": len(self._pending),
            "started": round(self.started, 3),
            "seconds": round(now - self.started, 3),
            "servers": {
                name: {
                    "current": n,
                    **({"share": self.shares[name]} if name in self.shares else {}),
                }
                for name, n in self.counts.items()
            },
        }

    async def run(self) -> None:
        self.started = self._last_ask = self.clock.time()
        try:
            await self._run()
        except KeyError as exc:
            self._end("failed", f"{exc.args[0]} is gone (a reload removed it)")
        except Exception as exc:  # a bug of ours must end the run, not hang it
            log.exception("%s of %s failed", self.kind, self.backend)
            self._end("failed", f"internal error: {exc!r}")
        finally:
            if self.state == "running":
                self._end("stopped", "stopped")

    async def _run(self) -> None:
        how = mode(self.view.config(self.backend))
        if self.server is not None:
            await self.view.drain(self.backend, self.server, self.who)
        elif how is None:
            self._end("failed", "no way to send a client anywhere (see `fastmqtt ctl rebalance`)")
            return
        plan = Plan(how or "", self.tolerance, self.only_clean)
        second = math.floor(self.clock.time())
        window = Window(self.rate)
        while self.state == "running" and not self._stop.is_set():
            joins = self._joins
            # where the moved clients are, before the live counts: one that arrives between
            # the two is then counted twice (a move fewer), never missed (a move too many)
            await self._settle()
            loads = await self.view.loads(self.backend)
            self.counts = {s.name: s.current for s in loads}
            if self.server is None:
                shifts = ((p.where, p.target) for p in self._pending.values())
                plan.update(loads, shifts)
                self.shares = plan.shares
            if joins == self._joins and self._finished(plan):
                return
            await self._second(second, plan, window)
            second = max(second + 1, math.floor(self.clock.time()))

    def _finished(self, plan: Plan) -> bool:
        """Ends the run when there is nothing left to do (True)."""
        if self.server is not None:
            if self.counts.get(self.server, 0) == 0 and not self._leaving():
                self._end("done", f"{self.server} holds no client")
                return True
            return False
        if self._pending:
            return False  # wait for the moved clients before judging
        if balanced({n: float(c) for n, c in self.counts.items()}, plan.shares, self.tolerance):
            self._end("done", "every usable server is within its share")
            return True
        return False

    def _leaving(self) -> bool:
        return any(p.where == p.source for p in self._pending.values())

    async def _second(self, second: int, plan: Plan, window: Window) -> None:
        """Ask this second's quota in its slots, none beyond what ``window`` allows."""
        pools = await self._pools(plan)
        if not self._pending and self.clock.time() - self._last_ask > ARRIVAL_TIMEOUT:
            self._end("incomplete", "no client left that may move")
            return
        for when, n in slots(second, self.rate):
            await self._sleep_until(when)
            if self._stop.is_set():
                return
            now = self.clock.time()
            moves = self._choose(plan, pools, min(n, window.allowance(now)))
            if moves:
                window.record(now, len(moves))
                await self._ask(moves)

    async def _pools(self, plan: Plan) -> dict[str, list[Candidate]]:
        """Each source server's clients not asked yet (popped from the end: oldest last)."""
        sources = [self.server] if self.server is not None else plan.over()
        limit = max(MIN_SCAN, SCAN_PER_RATE * self.rate)
        pools = {}
        for name in sources:
            found = await self.view.candidates(self.backend, name, limit)
            pools[name] = [
                c
                for c in reversed(found)
                if (c.holder, c.conn_id) not in self._asked_ids
                and c.client_id not in self._moved_clients
            ]
        return pools

    def _choose(self, plan: Plan, pools: dict[str, list[Candidate]], n: int) -> list[Move]:
        if self.server is None:
            return plan.pick(pools, n)
        pool = pools.get(self.server, [])
        return [Move(pool.pop(), None) for _ in range(min(n, len(pool)))]

    async def _ask(self, moves: list[Move]) -> None:
        now = self._last_ask = self.clock.time()
        for move in moves:
            c = move.candidate
            self._asked_ids.add((c.holder, c.conn_id))
            if c.client_id:
                self._moved_clients.add(c.client_id)
                self._pending[c.client_id] = _Pending(c.server, move.target, now, c.server)
        self.asked += await self.view.move(self.backend, moves, self.reason)

    async def _settle(self) -> None:
        """Where are the clients asked to leave now? Those back on a server are done."""
        if not self._pending:
            return
        where = await self.view.locate(self.backend, list(self._pending))
        now = self.clock.time()
        for client_id, pending in list(self._pending.items()):
            seen = where.get(client_id)
            if seen is not None and seen != pending.source:
                self.arrived += 1
                del self._pending[client_id]
            elif now - pending.asked_at > ARRIVAL_TIMEOUT:
                self.lost += 1
                del self._pending[client_id]
            else:
                pending.where = seen

    async def _sleep_until(self, when: float) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait(
                [stop, asyncio.ensure_future(self.clock.sleep_until(when))],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()

    def _end(self, state: str, why: str) -> None:
        if self.state == "running":
            self.state, self.why, self.ended = state, why, self.clock.time()
            log.info(
                "%s of %s%s %s: %s (%d asked, %d back, %d lost)",
                self.kind,
                self.backend,
                f"/{self.server}" if self.server else "",
                state,
                why,
                self.asked,
                self.arrived,
                self.lost,
                extra={"backend": self.backend, "state": state},
            )


# -- the runs of a process ---------------------------------------------------------------


def added_servers(old: Config, new: Config) -> dict[str, set[str]]:
    """Per backend with ``automatic`` rebalance in ``new``: the servers ``old`` did not have
    that have an address from the config (an IP, or ``init_addr``). Servers found by name
    join when discovery gives them their first address (Rebalancer.servers_joined)."""
    added = {}
    for name, backend in new.backends.items():
        before = old.backends.get(name)
        if backend.rebalance.automatic and before is not None:
            known = {s.name for s in before.servers}
            names = {
                s.name
                for s in backend.servers
                if s.name not in known and first_endpoint(s) is not None
            }
            if names:
                added[name] = names
    return added


class RefusedError(Exception):
    """A run that cannot start; the text says why."""


class Rebalancer:
    """Every rebalance and evacuation of this process (the supervisor's, with workers): at
    most one run per backend at a time; the last one of each stays visible after it ended."""

    def __init__(self, view: View, clock_factory: Callable[[], Clock] = WallClock) -> None:
        self.view = view
        self.clock_factory = clock_factory
        self.runs: dict[str, Run] = {}
        self.totals: dict[tuple[str, str], int] = {}  # (backend, kind) -> clients asked, ever
        self._tasks: dict[str, asyncio.Task] = {}
        self._waiting: dict[str, set[str]] = {}  # backend -> added servers not up yet

    def start(
        self,
        backend: str,
        server: str | None,
        who: str,
        rate: int | None = None,
        tolerance: float | None = None,
    ) -> Run:
        """RefusedError when the backend or server is unknown, a run is under way, or the
        backend has no way to send a client to a given server (rebalance only)."""
        try:
            config = self.view.config(backend)
        except KeyError:
            raise RefusedError(f"no backend {backend}") from None
        if server is not None and server not in {s.name for s in config.servers}:
            raise RefusedError(f"no server {backend}/{server}")
        running = self.runs.get(backend)
        if running is not None and running.state == "running":
            where = f"/{running.server}" if running.server else ""
            raise RefusedError(f"a {running.kind} of {backend}{where} is under way (stop it first)")
        if server is None and mode(config) is None:
            raise RefusedError(
                f'{backend}: balance = "{config.balance}" without a stick table cannot send a '
                'client to a given server: use a stick table, balance = "consistent" or '
                '"leastconn" (evacuate works with any)'
            )
        settings: RebalanceConfig = config.rebalance
        run = Run(
            self.view,
            backend,
            server,
            rate or settings.rate,
            settings.tolerance if tolerance is None else tolerance,
            settings.only_clean_sessions and server is None,
            settings.reason,
            who,
            self.clock_factory(),
        )
        self.runs[backend] = run
        log.info(
            "%s of %s%s started by %s: %d/s (DISCONNECT 0x%02X, %s)",
            run.kind,
            backend,
            f"/{server}" if server else "",
            who,
            run.rate,
            run.reason,
            MOVE_REASONS[run.reason],
            extra={"backend": backend},
        )
        task = asyncio.get_running_loop().create_task(self._track(run))
        self._tasks[backend] = task
        return run

    async def _track(self, run: Run) -> None:
        try:
            await run.run()
        finally:
            key = (run.backend, run.kind)
            self.totals[key] = self.totals.get(key, 0) + run.asked
            self._tasks.pop(run.backend, None)

    def servers_joined(self, backend: str, names: set[str]) -> None:
        """Discovery gave servers of ``backend`` their first address while serving (a pod
        joined): with ``automatic`` rebalance, as if a reload had added them. Under workers
        every worker tells it, each when its own lookup finds them."""
        try:
            automatic = self.view.config(backend).rebalance.automatic
        except KeyError:  # a reload removed it
            return
        if automatic:
            self.servers_added({backend: names})

    def servers_added(self, added: dict[str, set[str]]) -> None:
        """Servers were added to backends with ``automatic`` rebalance: once the new servers
        take clients (health checks up), rebalance each such backend. Servers added while
        the backend waits for earlier ones join that wait: one run for all of them."""
        for backend, names in added.items():
            waiting = self._waiting.get(backend)
            if waiting is not None:
                waiting |= names
                continue
            self._waiting[backend] = set(names)
            task = asyncio.get_running_loop().create_task(self._automatic(backend))
            self._tasks[f"auto {backend}"] = task

    async def _automatic(self, backend: str) -> None:
        clock = self.clock_factory()
        try:
            try:
                names = await self._up(backend, clock)
            finally:  # from here, servers added later wait on their own
                del self._waiting[backend]
            if names:
                await self._begin(backend, names, clock)
        except (RefusedError, KeyError) as exc:
            log.warning("automatic rebalance of %s: %s", backend, exc)
        finally:
            self._tasks.pop(f"auto {backend}", None)

    async def _up(self, backend: str, clock: Clock) -> set[str]:
        """Wait until the servers added to ``backend`` take clients everywhere (more may be
        added meanwhile) and every server holding clients takes clients too: a run among the
        usable servers alone, while others flap down, would end at once with nothing moved.
        After AUTO_WAIT, the added servers that are up."""
        names = self._waiting[backend]
        deadline = clock.time() + AUTO_WAIT
        while True:
            up = await self.view.ready(backend)
            if names <= up and await self._steady(backend):
                return set(names)
            if clock.time() >= deadline:
                if late := sorted(names - up):
                    log.warning("automatic rebalance of %s: %s did not come up", backend, late)
                return names & up
            await clock.sleep_until(clock.time() + 0.5)

    async def _steady(self, backend: str) -> bool:
        return all(s.usable for s in await self.view.loads(backend) if s.current)

    async def _begin(self, backend: str, names: set[str], clock: Clock) -> None:
        """Start the automatic run. A rebalance under way takes the new servers into its
        shares instead; only if it ends incomplete (a client it moved does not move again in
        the same run) does a new run follow."""
        added = ", ".join(sorted(names))
        while (running := self.runs.get(backend)) is not None and running.state == "running":
            if running.server is not None:
                break  # an evacuation: start() says so
            running.servers_joined()
            log.info("rebalance of %s under way takes %s in", backend, added)
            while running.state == "running":
                await clock.sleep_until(clock.time() + 0.5)
            if running.state != "incomplete":
                return
        self.start(backend, None, f"automatic: {added} added")

    def stop(self, backend: str) -> Run | None:
        run = self.runs.get(backend)
        if run is not None:
            run.stop()
        return run

    def progress(self, backend: str | None = None) -> list[dict[str, Any]]:
        return [run.progress() for run in self.runs.values() if backend in (None, run.backend)]

    def snapshot(self) -> dict[str, Any]:
        """For the stats page and /metrics: each backend's last run, and the clients asked to
        leave per (backend, kind) since the process started, running runs included."""
        totals = dict(self.totals)
        for run in self.runs.values():
            if run.state == "running":
                key = (run.backend, run.kind)
                totals[key] = totals.get(key, 0) + run.asked
        asked = [{"backend": b, "kind": k, "asked": n} for (b, k), n in sorted(totals.items())]
        return {"runs": self.progress(), "asked": asked}

    async def close(self) -> None:
        for run in self.runs.values():
            run.stop()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
