"""Worker processes that share the listeners (SO_REUSEPORT), and the supervisor that starts
them, restarts one that dies, and passes signals on.

Each worker is a full `fastmqtt serve` of the same config with `--worker N`: its own event loop,
relay engine and health checks. The stick tables are shared: the supervisor creates them (files
in `stick_dir`, or in a private directory under /dev/shm) before it starts the workers and on
reload, every worker maps them, and when a worker dies the supervisor takes back its live
counts before starting the next (stick.py, docs/stick-table.md). So a client sticks whichever
worker the kernel hands its reconnect to.

The supervisor serves ``[stats]`` itself (the workers bind no stats port). Each worker answers
on its own socketpair (JSON lines, one answer per request id): ``snapshot`` returns its
stats.rows.snapshot(), ``admin`` applies a drain/maint/ready/weight change through its health
checkers, ``find`` lists its connections (RelayHub.find), ``leave`` asks some of them to leave
(RelayHub.ask_to_leave) and ``stick`` reads or removes a client id's stick-table entries. A
page asks every live worker and shows the sum (stats.rows.merge_snapshots); an admin change
goes to every worker, and is replayed to a worker started later until a reload resets admin
states, as it does in a single process. A find goes to every worker (each connection says its
worker), a leave to the workers holding the connections, and a stick lookup to one worker (the
tables are shared). Each worker also looks server names up itself (discovery.py); the one
thing it tells the supervisor unasked, as a line without an id, is that servers got their
first address (``servers_joined``), for the supervisor's automatic rebalance.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastmqtt import notify, takeover
from fastmqtt.config import Config, load_config
from fastmqtt.errors import ConfigError
from fastmqtt.metrics import ReloadCounters
from fastmqtt.rebalance import Rebalancer, added_servers
from fastmqtt.rebalance_view import LocalView, WorkerView, answer
from fastmqtt.stats.http import HTTPError, StatsServer
from fastmqtt.stats.rows import merge_snapshots, process_row
from fastmqtt.stats.source import LocalSource
from fastmqtt.stick import STICK_DIR_ENV, StickStore

if TYPE_CHECKING:
    from fastmqtt.runtime import Runtime

log = logging.getLogger("fastmqtt.workers")

READY_FD_ENV = "FASTMQTT_READY_FD"
CHANNEL_FD_ENV = "FASTMQTT_CHANNEL_FD"
ADMIN_ENV = "FASTMQTT_ADMIN"  # admin changes a new worker applies before it says ready
CALL_TIMEOUT = 2.0  # seconds a worker has to answer; a hung one is left out of the page
MAX_REQUEST = 64 * 1024  # supervisor -> worker lines are small commands
START_TIMEOUT = 20.0  # seconds for every worker to bind its listeners
RESPAWN_DELAY = 1.0  # a worker that dies this soon after starting is restarted after a pause
POLL_INTERVAL = 0.2
PR_SET_PDEATHSIG = 1


def become_worker() -> None:
    """In a worker: die with the supervisor instead of lingering as an orphan."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def report_ready() -> None:
    """In a worker: tell the supervisor that every listener is bound."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        os.write(int(fd), b"R")
        os.close(int(fd))


def attach(runtime: Runtime) -> asyncio.Task | None:
    """In a worker whose listeners are bound: apply the admin changes made before it started
    (before the loop runs, so no client sees the configured state), say ready, then answer
    the supervisor. Returns the task answering it, to cancel when the worker stops."""
    source = LocalSource(runtime)
    for command in json.loads(os.environ.pop(ADMIN_ENV, "[]")):
        _apply(source, command)
    report_ready()
    fd = os.environ.pop(CHANNEL_FD_ENV, None)
    if fd is None:
        return None
    source.start()
    events = _Events()
    runtime.servers_joined = events.servers_joined  # the supervisor rebalances
    return runtime.loop.create_task(_answer(source, socket.socket(fileno=int(fd)), events))


class _Events:
    """What a worker tells its supervisor unasked, as lines without an ``id`` on the channel
    its answers use: servers that discovery gave their first address (a pod joined)."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.early: list[bytes] = []  # before the channel's writer exists

    def servers_joined(self, backend: str, names: set[str]) -> None:
        self._send({"event": "servers_joined", "backend": backend, "servers": sorted(names)})

    def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message).encode() + b"\n"
        if self.writer is None:
            self.early.append(line)
        else:
            self.writer.write(line)

    def connected(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        for line in self.early:
            writer.write(line)
        self.early.clear()


async def _answer(source: LocalSource, sock: socket.socket, events: _Events | None = None) -> None:
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_REQUEST)
    if events is not None:
        events.connected(writer)
    try:
        while line := await reader.readline():
            writer.write(json.dumps(await _handle_line(source, line)).encode() + b"\n")
            await writer.drain()
    finally:
        source.close()
        writer.close()


async def _handle_line(source: LocalSource, line: bytes) -> dict[str, Any]:
    """The answer to one request; a bad line or a bug of ours must not end the channel."""
    try:
        request = json.loads(line)
    except ValueError:  # cut by a send the supervisor gave up on
        log.error("unreadable request from the supervisor")
        return {"id": None, "error": "unreadable request"}
    try:
        return await _handle(source, request)
    except Exception:
        log.exception("error answering the supervisor")
        return {"id": request["id"], "error": "internal error"}


async def _handle(source: LocalSource, request: dict[str, Any]) -> dict[str, Any]:
    op, ident = request["op"], request["id"]
    if op == "admin":
        if not _apply(source, request):
            return {"id": ident, "error": "no such server here"}
        return {"id": ident, "ok": True}
    if op == "find":
        query = {k: request[k] for k in ("client_id", "prefix", "backend", "server", "limit")}
        return {"id": ident, "conns": await source.find(**query)}
    if op == "leave":
        asked = await source.leave({None: request["conn_ids"]}, request["reason_code"])
        return {"id": ident, "asked": asked}
    if op == "stick":
        return {"id": ident, "stick": await source.stick(request["client_id"], request["remove"])}
    if op == "rebalance":  # the supervisor's rebalance asks this worker
        return {"id": ident, **await answer(LocalView(source.runtime), request)}
    return {"id": ident, "snapshot": source.snapshot_now()}


def _apply(source: LocalSource, command: dict[str, Any]) -> bool:
    try:
        source.apply(
            command["backend"],
            command["server"],
            command["state"],
            command["weight"],
            command["who"],
        )
    except KeyError:  # a reload removed it
        log.warning("admin change for unknown server %s/%s", command["backend"], command["server"])
        return False
    return True


class Channel:
    """The supervisor's end of a worker's socketpair: JSON-line requests, answers by id;
    lines without one are the worker's events, for ``on_event``."""

    def __init__(
        self, sock: socket.socket, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.sock = sock
        self.on_event = on_event
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self.ids = itertools.count()
        self.buffer = bytearray()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    async def call(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The worker's answer, or None if it does not answer in time (hung, dying, dead)."""
        ident = next(self.ids)
        self.pending[ident] = self.loop.create_future()
        line = json.dumps({**request, "id": ident}).encode() + b"\n"
        try:
            return await asyncio.wait_for(self._exchange(ident, line), CALL_TIMEOUT)
        except (asyncio.TimeoutError, OSError):
            return None
        finally:
            self.pending.pop(ident, None)

    async def _exchange(self, ident: int, line: bytes) -> dict[str, Any] | None:
        await self.loop.sock_sendall(self.sock, line)
        return await self.pending[ident]

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.buffer += data
        if b"\n" not in data:
            return  # a large snapshot arrives in pieces
        *lines, rest = self.buffer.split(b"\n")
        self.buffer = bytearray(rest)
        for line in lines:
            answer = json.loads(line)
            if "id" not in answer:
                if self.on_event is not None:
                    self.on_event(answer)
                continue
            future = self.pending.get(answer["id"])
            if future is not None and not future.done():
                future.set_result(answer)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        for future in self.pending.values():
            if not future.done():
                future.set_result(None)


class Worker:
    """One child process and the pipe on which it says it is ready."""

    def __init__(
        self,
        index: int,
        path: str,
        admin: list[dict[str, Any]],
        stick_dir: str | None,
        takeover_from: str | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.index = index
        read_fd, write_fd = os.pipe()
        ours, theirs = socket.socketpair()
        self.started_at = time.monotonic()
        env = {
            READY_FD_ENV: str(write_fd),
            CHANNEL_FD_ENV: str(theirs.fileno()),
            ADMIN_ENV: json.dumps(admin),
            **({STICK_DIR_ENV: stick_dir} if stick_dir else {}),
        }
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "fastmqtt", "serve", path, "--worker", str(index)),
                *(("--takeover", takeover_from) if takeover_from else ()),
            ],
            stdin=subprocess.DEVNULL,
            pass_fds=(write_fd, theirs.fileno()),
            env={**os.environ, **env},
        )
        os.close(write_fd)
        theirs.close()
        self.ready_fd = read_fd
        self.channel = Channel(ours, on_event)

    def ready(self) -> bool:
        """Non-blocking: has the worker reported? (EOF without a byte means it died first)."""
        os.set_blocking(self.ready_fd, False)
        try:
            return os.read(self.ready_fd, 1) == b"R"
        except BlockingIOError:
            return False

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def close(self) -> None:
        os.close(self.ready_fd)
        self.channel.close()


class WorkerStats:
    """The stats listener's Source under a supervisor: every live worker's numbers, added up."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def start(self) -> None:
        pass  # each worker samples its own rates

    def close(self) -> None:
        pass

    async def snapshot(self) -> dict[str, Any]:
        live = self.supervisor.live_workers()
        answers = await asyncio.gather(*(w.channel.call({"op": "snapshot"}) for w in live))
        snaps = [(a or {}).get("snapshot") for a in answers]
        if not any(snaps):
            raise HTTPError(503, "no worker answered")
        merged = merge_snapshots([snap for snap in snaps if snap])
        merged["pid"] = os.getpid()  # the process to signal
        merged["processes"].insert(0, process_row(self.supervisor.reloads, "supervisor"))
        merged["per_worker"] = [
            {"worker": w.index, "pid": w.proc.pid, "current": snap["current"] if snap else None}
            for w, snap in zip(live, snaps, strict=True)
        ]  # current is null for a worker that did not answer in time
        merged["moves"] = self.supervisor.rebalancer.snapshot()  # the supervisor runs them
        return merged

    async def change(
        self, backend: str, server: str, state: str | None, weight: int | None, who: str
    ) -> None:
        command = {
            "backend": backend,
            "server": server,
            "state": state,
            "weight": weight,
            "who": who,
        }
        self.supervisor.remember_admin(command)
        live = self.supervisor.live_workers()
        answers = await asyncio.gather(*(w.channel.call({"op": "admin", **command}) for w in live))
        failed = [w.index for w, a in zip(live, answers, strict=True) if not (a and a.get("ok"))]
        if failed:
            raise HTTPError(503, f"workers {failed} did not confirm the change")

    def reload(self) -> list[str]:
        return self.supervisor.reload()

    @property
    def rebalancer(self) -> Rebalancer:
        return self.supervisor.rebalancer

    async def find(
        self,
        client_id: str | None = None,
        prefix: str | None = None,
        backend: str | None = None,
        server: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        query = {"client_id": client_id, "prefix": prefix, "backend": backend, "server": server}
        answers = await self._ask_all({"op": "find", **query, "limit": limit})
        return [conn for answer in answers for conn in answer["conns"]][:limit]

    async def leave(self, conn_ids: dict[int | None, list[int]], reason_code: int) -> int:
        by_index = {w.index: w for w in self.supervisor.live_workers()}
        asking = [(by_index[i], ids) for i, ids in conn_ids.items() if i in by_index]
        answers = await asyncio.gather(
            *(
                w.channel.call({"op": "leave", "conn_ids": ids, "reason_code": reason_code})
                for w, ids in asking
            )
        )
        failed = [w.index for (w, _), a in zip(asking, answers, strict=True) if a is None]
        if failed:
            raise HTTPError(503, f"workers {failed} did not answer")
        return sum(answer["asked"] for answer in answers if answer is not None)

    async def stick(self, client_id: str, remove: bool) -> list[dict[str, Any]]:
        request = {"op": "stick", "client_id": client_id, "remove": remove}
        for worker in self.supervisor.live_workers():  # one answer is enough: shared tables
            answer = await worker.channel.call(request)
            if answer is not None and "stick" in answer:
                return answer["stick"]
        raise HTTPError(503, "no worker answered")

    async def _ask_all(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Every live worker's answer; HTTPError when one did not answer (a partial list
        would say a client is not connected when it is)."""
        live = self.supervisor.live_workers()
        answers = await asyncio.gather(*(w.channel.call(request) for w in live))
        failed = [w.index for w, a in zip(live, answers, strict=True) if a is None or "error" in a]
        if failed:
            raise HTTPError(503, f"workers {failed} did not answer")
        return [a for a in answers if a is not None]


class Supervisor:
    """Keeps ``workers`` copies of `fastmqtt serve` running until told to stop."""

    def __init__(self, path: str, config: Config, takeover_from: str | None = None) -> None:
        self.path = path
        self.config = config
        self.takeover_from = takeover_from  # a running supervisor's takeover_socket
        self.workers: list[Worker] = []
        self.stopping = False
        self.handed_over = False  # a new supervisor's workers took ours over: no restarts
        self.serving = False  # every worker said ready once
        self.reload_pending = False  # a SIGHUP came while they started
        self.restarts = 0
        self.admin: dict[tuple[str, str], dict[str, Any]] = {}  # since the last reload
        self.stats: StatsServer | None = None
        self.reloads = ReloadCounters(time.time())  # the files it validated for the workers
        self.sticks: StickStore | None = None
        self.rebalancer = Rebalancer(WorkerView(self, WorkerStats(self).change))

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def remember_admin(self, command: dict[str, Any]) -> None:
        """Keep the latest state and weight set on each server, for workers started later."""
        key = (command["backend"], command["server"])
        old = self.admin.get(key, {})
        self.admin[key] = {k: old.get(k) if v is None else v for k, v in command.items()}

    def _spawn(self, index: int, takeover_from: str | None = None) -> Worker:
        stick_dir = self.sticks.directory if self.sticks is not None else None
        admin = list(self.admin.values())
        return Worker(index, self.path, admin, stick_dir, takeover_from, self._event)

    def _event(self, event: dict[str, Any]) -> None:
        """A worker's event: discovery gave servers their first address (each worker tells
        it; the supervisor's rebalancer makes one run of them)."""
        if event.get("event") == "servers_joined":
            self.rebalancer.servers_joined(event["backend"], set(event["servers"]))

    def run(self) -> int:
        import uvloop

        return uvloop.run(self._run())

    async def _run(self) -> int:
        count = self.config.global_.workers
        loop = asyncio.get_running_loop()
        # from the start: a stop while the workers start (systemd's, an operator's) still
        # stops them and removes the stick tables; a SIGHUP does not kill the supervisor
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        incoming, inherited = None, {}
        if self.takeover_from is not None:  # its stats listeners now, its workers' below
            incoming, inherited = takeover.take_stats(self.takeover_from, count)
        try:
            self.sticks = StickStore.for_supervisor(self.config)
            self.sticks.sync(self.config)
            if self.config.stats is not None:
                self.stats = StatsServer(WorkerStats(self), self.config.stats, loop, inherited)
        except OSError as exc:
            log.error("%s", exc.strerror or exc)
            self._close_stats()
            return 1
        self.workers = [
            self._spawn(i, incoming and takeover.worker_path(incoming.path, i))
            for i in range(count)
        ]
        ready = await self._wait_ready(self.workers)
        if self.stopping:
            await self._stop_all(signal.SIGINT)
            log.info("stopped while the workers started")
            return 0
        if not ready:
            log.error("workers failed to start; stopping")
            await self._stop_all(signal.SIGINT)
            return 1
        if self.stats is not None:
            self.stats.start()
        if incoming is not None:
            takeover.workers_serve(incoming)
        log.info("%d workers serving %s", count, self.path, extra={"workers": count})
        # MAINPID: under systemd, a supervisor started to take over becomes the unit's main one
        notify.ready(f"{count} workers", main_pid=incoming is not None)
        offer = self._offer(loop)
        self.serving = True
        if self.reload_pending:
            self.reload()
        ending = False
        while not (
            ending
            and all(w.proc.poll() is not None for w in self.workers)
            and not (offer is not None and offer.busy)
        ):
            ending = self.stopping or self.handed_over
            if not ending:
                self._respawn_dead()
            await asyncio.sleep(POLL_INTERVAL)
        if offer is not None:
            offer.close()
        for worker in self.workers:
            worker.close()
        self._close_stats()
        log.info("all workers stopped")
        return 0

    def _offer(self, loop: asyncio.AbstractEventLoop) -> takeover.SupervisorOffer | None:
        """Offer our workers to a new supervisor on ``[global] takeover_socket``, if set."""
        path = self.config.global_.takeover_socket
        if path is None:
            return None

        def handing_over(yes: bool) -> None:
            self.handed_over = yes

        def drain_from(index: int) -> None:
            for worker in self.workers[index:]:
                worker.signal(signal.SIGTERM)

        try:
            return takeover.SupervisorOffer(path, self.stats, loop, handing_over, drain_from)
        except OSError as exc:
            log.error("takeover_socket: %s", exc.strerror or exc)
            return None

    async def _wait_ready(self, workers: list[Worker]) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(workers)
        while pending and not self.stopping and time.monotonic() < deadline:
            pending = [w for w in pending if not w.ready()]
            if any(w.proc.poll() is not None for w in pending):
                return False
            await asyncio.sleep(0.05)
        return not pending

    def _respawn_dead(self) -> None:
        for i, worker in enumerate(self.workers):
            code = worker.proc.poll()
            if code is None:
                continue
            if time.monotonic() - worker.started_at < RESPAWN_DELAY:
                continue  # crashed at once: wait a little instead of a restart storm
            log.warning("worker %d (pid %d) exited with %s; restarting", i, worker.proc.pid, code)
            worker.close()
            if self.sticks is not None:
                self.sticks.recover_worker(i, worker.proc.pid)
            self.workers[i] = self._spawn(i)
            self.restarts += 1

    def _hangup(self) -> None:
        """SIGHUP: reload; one sent while the workers start (once the port answers, say)
        waits until they all serve: a worker still starting would die of it."""
        if self.serving:
            self.reload()
        else:
            self.reload_pending = True

    def reload(self) -> list[str]:
        """Validate first, so a broken file never reaches the workers; returns the errors."""
        try:
            config = load_config(self.path)
            if self.sticks is not None:
                self.sticks.sync(config)  # the tables exist before the workers look
            old, self.config = self.config, config
        except (ConfigError, OSError) as exc:
            lines = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
            self.reloads.record(False, time.time())
            for line in lines:
                log.error("reload refused: %s", line, extra={"path": self.path, "error": line})
            return lines
        self.reloads.record(True, time.time())
        self.rebalancer.servers_added(added_servers(old, config))
        self.admin.clear()  # the workers reset admin states on reload
        for worker in self.workers:
            worker.signal(signal.SIGHUP)
        return []

    def _stop(self, signum: int) -> None:
        """First signal: workers drain; second: they exit at once."""
        if not self.stopping:
            notify.stopping()
        self.stopping = True
        for backend in list(self.rebalancer.runs):
            self.rebalancer.stop(backend)
        for worker in self.workers:
            worker.signal(signum)

    async def _stop_all(self, signum: int) -> None:
        self.stopping = True
        for worker in self.workers:
            worker.signal(signum)
            worker.signal(signum)
        for worker in self.workers:
            try:
                await asyncio.wait_for(asyncio.to_thread(worker.proc.wait), 10)
            except asyncio.TimeoutError:
                worker.proc.kill()
            worker.close()
        self._close_stats()

    def _close_stats(self) -> None:
        """Also the stick tables: the last thing a supervisor closes."""
        if self.stats is not None:
            self.stats.close()
        if self.sticks is not None:
            self.sticks.close()
            self.sticks = None
