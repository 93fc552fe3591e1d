"""The running balancer: frontends and backends from a config, limits, lifecycle, reload."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from fastmqtt import IMPLEMENTATION, __version__, notify, packets
from fastmqtt.backend import Backend, Server
from fastmqtt.config import Config, FrontendConfig, load_config
from fastmqtt.discovery import Discovery
from fastmqtt.errors import ConfigError
from fastmqtt.fastpath import FastPathHub, describe
from fastmqtt.frontend import Frontend
from fastmqtt.health import HealthChecker
from fastmqtt.metrics import ReloadCounters
from fastmqtt.rebalance import Rebalancer, added_servers
from fastmqtt.rebalance_view import LocalView
from fastmqtt.relay import RelayHub, make_engine
from fastmqtt.session import ConnectionLog, Session
from fastmqtt.stats.http import StatsServer
from fastmqtt.stats.source import LocalSource
from fastmqtt.stick import StickStore
from fastmqtt.tls import TLSMaterialError, client_context

log = logging.getLogger("fastmqtt")

STICK_PURGE_INTERVAL = 5.0


class Runtime:
    """Every frontend and backend of one process, and the connections between them.

    It builds the parts from a config and wires them, handing each only what it uses:
    a ``Frontend`` gets its backend and this runtime (the loop, the process's limits, the
    relay hub, the fast path); its ``Guard`` gets ``backend_named``, a ``HealthChecker`` its
    backend, the loop and ``close_sessions``; the stats listener reads a ``LocalSource``.
    It owns the process-wide count and limit (``maxconn``), the connection log, the
    lifecycle (start, shutdown) and reload: everything new is built first, then swapped in,
    and what a failed swap changed is put back."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        conn_log: TextIO | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.worker = worker
        self.reuse_port = worker is not None  # workers share the listeners
        self.sticks = StickStore.for_process(config, worker)  # the tables every worker shares
        self.backends = {name: Backend(bc, self.sticks) for name, bc in config.backends.items()}
        for backend in self.backends.values():
            self._watch(backend)
        self.discovery = Discovery()
        self.frontends = [Frontend(fc, self.backends[fc.backend], self) for fc in config.frontends]
        self.engine = make_engine(config.global_.relay_threads)
        # the frontends the engine serves from accept to close (attached before it starts)
        self.fast = FastPathHub(self, self.engine) if self.engine is not None else None
        self.hub = RelayHub(loop, self._relay_finished, self.engine, self.fast)
        self.hub.drain_v5 = config.global_.drain_disconnect
        self.hub.track_all = config.global_.track_packets
        self._conn_stream = conn_log
        self.conn_log = self._connection_log(config)
        self.current = 0
        self.started_at = loop.time()
        self.reloads = ReloadCounters(time.time())
        self._tasks: set[asyncio.Task] = set()
        self._purger: asyncio.TimerHandle | None = None
        self.health = {name: self._checker(b) for name, b in self.backends.items()}
        self.stats: StatsServer | None = None
        self.rebalancer = Rebalancer(LocalView(self))
        # who hears of servers discovery gave a first address (a pod joined) once serving:
        # this process's rebalancer, or a worker's supervisor (workers.attach)
        self.servers_joined: Callable[[str, set[str]], None] = self.rebalancer.servers_joined
        self.serving = False
        # listening sockets given by the process this one takes over from (takeover.py)
        self.inherited: dict[str, socket.socket] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def find_servers(self) -> None:
        """Look up the servers given by name before listening (bounded: a name that does not
        answer in time leaves its server DOWN, and is tried again)."""
        self.discovery.watch(self.config, self.backends)
        await self.discovery.settled()

    def backend_named(self, name: str) -> Backend:
        """The backend a route rule names (Guard): always one of the running config."""
        return self.backends[name]

    def _watch(self, backend: Backend) -> None:
        backend.subscribe(self._servers_changed)
        backend.watch(self.backend_changed)

    def _checker(self, backend: Backend, previous: HealthChecker | None = None) -> HealthChecker:
        return HealthChecker(backend, self.loop, self.close_sessions, previous)

    def close_sessions(self, server: Server, reason: str) -> int:
        """End every relayed connection to ``server`` (health's shutdown-sessions); their
        log lines say ``reason``. Returns how many there were."""
        doomed = [sid for sid, s in self.hub.sessions.items() if s.server is server]
        for sid in doomed:
            self.hub.close(sid, reason)
        fast = self.fast.close_server(server, reason) if self.fast is not None else 0
        return len(doomed) + fast

    def _servers_changed(
        self, backend: Backend, servers: Sequence[Server], joined: Sequence[Server]
    ) -> None:
        """Discovery moved servers (Backend.servers_changed): their health starts over, the
        engine's fast path sends new clients to the new addresses, and servers that got
        their first address may start an automatic rebalance (not those found by the
        lookups before listening: no client is there to move)."""
        checker = self.health.get(backend.name)
        if checker is not None and checker.backend is backend:
            checker.readdressed(servers)
        if self.fast is not None:
            self.fast.servers_moved(backend, servers)
        if joined and self.serving:
            self.servers_joined(backend.name, {s.name for s in joined})

    def start(self) -> None:
        """Bind every listener (all or nothing), then start accepting."""
        try:
            # stats first: once a client port answers, so does the stats port
            if self.config.stats is not None and self.worker is None:  # else the supervisor's
                self.stats = StatsServer(
                    LocalSource(self), self.config.stats, self.loop, self.inherited
                )
            for fe in self.frontends:
                if fe.sock is not None:  # taken over from the previous process
                    continue
                try:
                    fe.open(self.reuse_port)
                except OSError as exc:
                    where = f"{fe.config.bind_host}:{fe.config.bind_port}"
                    raise OSError(
                        exc.errno, f"frontend {fe.name}: cannot bind {where}: {exc.strerror}"
                    ) from None
        except BaseException:
            for fe in self.frontends:
                fe.close()
            if self.stats is not None:
                self.stats.close()
                self.stats = None
            raise
        if self.fast is not None:
            self.fast.configure()
        if self.engine is not None:
            self.engine.start()
        for fe in self.frontends:
            fe.resume()
        self._purger = self.loop.call_later(STICK_PURGE_INTERVAL, self._purge_sticks)
        for checker in self.health.values():
            checker.start()
        if self.stats is not None:
            self.stats.start()
        self.serving = True
        log.info(
            "fastmqtt %s (%s) listening: %s",
            __version__,
            IMPLEMENTATION,
            self._summary(),
            extra={"version": __version__, "implementation": IMPLEMENTATION},
        )

    def reload(self, config: Config) -> None:
        """Apply a new config without dropping a connection: binds that stay keep their
        sockets, servers that keep their name keep state (health and its history included),
        counters and sticky clients; servers given by name keep the address found for them and
        are looked up again at once. Everything new is built and bound first: if a new bind
        fails, new TLS material is unusable or a kept part cannot take its new config, it
        raises and nothing changed (the old config back in place, health checks running
        again, no new listener left open)."""
        plan = _Reload(self, config)
        added = added_servers(self.config, config)
        for checker in self.health.values():
            checker.stop()
        try:
            self._apply(plan)
        finally:  # whatever happened, the live objects probe and accept again
            for fe in plan.opened:
                if fe not in self.frontends:
                    fe.close()
            for checker in self.health.values():
                checker.start()
            self.discovery.watch(self.config, self.backends)
            for fe in self.frontends:
                fe.resume()
        log.info("reloaded %s: %s", config.path, self._summary(), extra={"path": config.path})
        if self.worker is None:  # under workers, the supervisor rebalances
            self.rebalancer.servers_added(added)

    def _apply(self, plan: _Reload) -> None:
        """Reconfigure what the new config keeps, then swap the prepared objects in. If
        reconfiguring fails (a stick table that cannot be resized), what it changed takes
        its old config back and it raises: nothing was swapped, nothing closed."""
        config = plan.config
        kept_backends = [b for name, b in plan.backends.items() if self.backends.get(name) is b]
        kept_frontends = {fe: (fe.config, fe.backend, fe.tls) for fe in plan.kept.values()}
        try:
            for backend in kept_backends:
                backend.reconfigure(config.backends[backend.name])
            frontends = []
            for fc in config.frontends:
                fe = plan.kept.pop(_bind(fc), None) or plan.new_by_bind[_bind(fc)]
                fe.reconfigure(fc, plan.backends[fc.backend], plan.tls.get(_bind(fc), fe.tls))
                frontends.append(fe)
            health = {
                name: self._checker(b, self.health.get(name)) for name, b in plan.backends.items()
            }
        except BaseException:
            for backend in kept_backends:
                backend.reconfigure(self.config.backends[backend.name])
            for fe, (fc, backend, tls) in kept_frontends.items():
                fe.reconfigure(fc, backend, tls)
            raise
        # from here on nothing fails on bad input
        for backend in plan.backends.values():
            self._watch(backend)
        client_context.cache_clear()  # backend TLS files are read again
        for fe in plan.kept.values():
            fe.close()  # removed: its established connections stay until they end
        for name in self.backends.keys() - plan.backends.keys():
            self.backends[name].retire()  # removed: its stick table's mapping and file go
        self.sticks.retain(name for name, bc in config.backends.items() if bc.stick)
        self.config, self.backends, self.frontends = config, plan.backends, frontends
        self.health = health
        if self.conn_log is not None:
            self.conn_log.flush()
        self.conn_log = self._connection_log(config)
        if config.global_.drain_disconnect != self.hub.drain_v5:  # decided as connections start
            log.warning("drain_disconnect: the change takes effect at the next restart")
        if config.global_.track_packets != self.hub.track_all:
            log.warning("track_packets: the change takes effect at the next restart")
        if self.fast is not None:
            self.fast.configure()

    def _connection_log(self, config: Config) -> ConnectionLog | None:
        if self._conn_stream is None or not config.global_.log_connections:
            return None
        return ConnectionLog(self._conn_stream, config.global_.log_format, self.loop)

    def reload_file(self) -> list[str]:
        """SIGHUP and the admin API: re-read the config file; if it has errors keep running on
        the old one. Returns the errors (empty when the new config is applied)."""
        notify.reloading()
        try:
            config = load_config(self.config.path)
            self.reload(config)
        except ConfigError as exc:
            errors = exc.errors
        except TLSMaterialError as exc:
            errors = [f"{self.config.path}: {problem}" for problem in exc.problems]
        except OSError as exc:
            errors = [str(exc.strerror or exc)]
        except Exception as exc:  # a bug of ours must not leave the signal handler
            log.exception("reload failed")
            errors = [f"internal error: {exc!r}"]
        else:
            errors = []
            for warning in config.warnings:
                log.warning("%s", warning)
        finally:
            notify.ready()
        self.reloads.record(not errors, time.time())
        for line in errors:
            log.error("reload refused: %s", line, extra={"path": self.config.path, "error": line})
        return errors

    def _summary(self) -> str:
        return ", ".join(
            f"{fe.name}={fe.config.bind_host}:{fe.bound_port} ({describe(self.path_reason(fe))})"
            for fe in self.frontends
        )

    def path_reason(self, fe: Frontend) -> str | None:
        """None when the engine serves this frontend from accept to close, else why not."""
        if self.fast is None:
            return "compiled extensions are off"
        return self.fast.reason(fe)

    def backend_changed(self, backend: Backend) -> None:
        """Server states or weights changed (health, admin, slow start)."""
        if self.fast is not None:
            self.fast.backend_changed(backend)

    def stop_accepting(self) -> None:
        for fe in self.frontends:
            fe.close()
        if self._purger is not None:
            self._purger.cancel()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let established connections finish for ``grace`` seconds, close."""
        self.stop_accepting()
        self.discovery.stop()
        await self.rebalancer.close()
        for checker in self.health.values():
            checker.stop()
        for task in list(self._tasks):
            task.cancel()  # clients still being inspected or connected
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        goodbye = None
        settings = self.config.global_
        if self.hub.drain_v5:  # as the process started: only then were MQTT 5 sessions tracked
            goodbye = packets.disconnect_v5(packets.SERVER_SHUTTING_DOWN)
        # drain_rate is the whole process's: every worker drains at once, each its share
        rate = settings.drain_rate / (settings.workers if self.worker is not None else 1)
        await self.hub.shutdown(grace, goodbye, rate)
        if self.fast is not None:
            self.fast.close()
        if self.stats is not None:
            self.stats.close()
        if self.conn_log is not None:
            self.conn_log.flush()

    def setting_up(self) -> bool:
        """Connections of the event loop still being inspected or connected."""
        return bool(self._tasks)

    def adopt(self, session: Session, client_fd: int, server_fd: int, state: tuple) -> None:
        """A connection taken over from another process (takeover.py): relayed, counted,
        stuck and logged as one of ours from now on (not counted as accepted here)."""
        self.hub.adopt(session, client_fd, server_fd, state)
        self.current += 1
        session.adopted()
        if self.fast is not None:
            self.fast.python_live_changed(session.server)

    def session_moved(self, session: Session) -> None:
        """A session another process relays now (takeover.py): no longer counted here."""
        self.current -= 1
        session.moved()
        if self.fast is not None:
            self.fast.python_live_changed(session.server)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- limits and accounting -------------------------------------------------------------

    def below_maxconn(self) -> bool:
        fast = self.fast.live if self.fast is not None else 0
        return self.current + fast < self.config.global_.maxconn

    def session_opened(self) -> None:
        self.current += 1
        if self.fast is not None:
            self.fast.python_live_changed()

    def _relay_finished(self, session: Session, c2s: int, s2c: int, reason: str) -> None:
        session.ended(c2s, s2c, reason)
        self.session_ended(session)

    def session_ended(self, session: Session) -> None:
        """Every accepted connection passes here exactly once, relayed or refused, once
        Session.ended gave back what it held: the process's count, the log line, and
        accepting again where a limit held it back."""
        self.current -= 1
        if self.fast is not None:
            self.fast.python_live_changed(session.server)
        if self.conn_log is not None:
            self.conn_log.write(session)
        for fe in self.frontends:
            if not fe.accepting:
                fe.resume()

    def _purge_sticks(self) -> None:
        for backend in self.backends.values():
            if backend.stick is not None:
                backend.stick.purge_step()
        self._purger = self.loop.call_later(STICK_PURGE_INTERVAL, self._purge_sticks)


def _bind(config: FrontendConfig) -> tuple[str, int]:
    return config.bind_host, config.bind_port


class _Reload:
    """Everything a reload needs that can fail, done before the live state is touched:
    new backends and frontends built (TLS loaded), new binds open (names are looked up later,
    without blocking: a name that does not resolve fails nothing).
    Raises (OSError, TLSMaterialError) having closed whatever it opened."""

    def __init__(self, runtime: Runtime, config: Config) -> None:
        self.config = config
        self.backends = {
            name: runtime.backends.get(name) or Backend(bc, runtime.sticks)
            for name, bc in config.backends.items()
        }
        self.kept = {_bind(fe.config): fe for fe in runtime.frontends}
        self.tls = {
            _bind(fc): self.kept[_bind(fc)].reloaded_tls(fc)
            for fc in config.frontends
            if _bind(fc) in self.kept
        }
        self.opened = [
            Frontend(fc, self.backends[fc.backend], runtime)
            for fc in config.frontends
            if _bind(fc) not in self.kept
        ]
        try:
            for fe in self.opened:
                fe.open(runtime.reuse_port)
        except OSError:
            for fe in self.opened:
                fe.close()
            raise
        self.new_by_bind = {_bind(fe.config): fe for fe in self.opened}
