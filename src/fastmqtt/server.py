"""The running balancer: frontends and backends from a config, limits, lifecycle and signals.
Also the `fastmqtt serve` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any, TextIO

from fastmqtt import IMPLEMENTATION, __version__
from fastmqtt.backends import Backend, Server
from fastmqtt.config import Config, load_config
from fastmqtt.errors import ConfigError
from fastmqtt.health import HealthChecker
from fastmqtt.listener import Frontend
from fastmqtt.relay import RelayHub, make_engine
from fastmqtt.session import ConnectionLog, Session
from fastmqtt.stats import StatsServer

log = logging.getLogger("fastmqtt")

STICK_PURGE_INTERVAL = 5.0


class Proxy:
    """Every frontend and backend of one process, and the connections between them."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        conn_log: TextIO | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.loop = loop
        self.reuse_port = reuse_port
        self.backends = {name: Backend(bc) for name, bc in config.backends.items()}
        self.frontends = [Frontend(fc, self.backends[fc.backend], self) for fc in config.frontends]
        self.engine = make_engine(config.global_.relay_threads)
        self.hub = RelayHub(loop, self._relay_finished, self.engine)
        self.conn_log = ConnectionLog(conn_log, config.global_.log_format) if conn_log else None
        self.current = 0
        self.started_at = loop.time()
        self._tasks: set[asyncio.Task] = set()
        self._purger: asyncio.TimerHandle | None = None
        self.health = {name: HealthChecker(b, self) for name, b in self.backends.items()}
        self.stats: StatsServer | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind every listener (all or nothing), then start accepting."""
        try:
            for fe in self.frontends:
                try:
                    fe.open(self.reuse_port)
                except OSError as exc:
                    where = f"{fe.config.bind_host}:{fe.config.bind_port}"
                    raise OSError(exc.errno, f"frontend {fe.name}: cannot bind {where}: {exc.strerror}") from None
            self.stats = StatsServer(self, self.config.stats) if self.config.stats else None
        except BaseException:
            for fe in self.frontends:
                fe.close()
            raise
        if self.engine is not None:
            self.engine.start()
        for fe in self.frontends:
            fe.resume()
        self._purger = self.loop.call_later(STICK_PURGE_INTERVAL, self._purge_sticks)
        for checker in self.health.values():
            checker.start()
        if self.stats is not None:
            self.stats.start()
        log.info(
            "fastmqtt %s (%s) listening: %s",
            __version__,
            IMPLEMENTATION,
            ", ".join(f"{fe.name}={fe.config.bind_host}:{fe.bound_port}" for fe in self.frontends),
        )

    def stop_accepting(self) -> None:
        for fe in self.frontends:
            fe.close()
        if self._purger is not None:
            self._purger.cancel()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let established connections finish for ``grace`` seconds, close."""
        self.stop_accepting()
        for checker in self.health.values():
            checker.stop()
        for task in list(self._tasks):
            task.cancel()  # clients still being inspected or connected
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hub.shutdown(grace)
        if self.stats is not None:
            self.stats.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- limits and accounting -------------------------------------------------------------

    def below_maxconn(self) -> bool:
        return self.current < self.config.global_.maxconn

    def session_opened(self) -> None:
        self.current += 1

    def session_established(self, session: Session, server: Server, stick_key: str | None) -> None:
        session.stick_key = stick_key
        server.counters.opened()
        stick = self.backends[session.backend].stick
        if stick is not None and stick_key:
            stick.connected(stick_key)

    def _relay_finished(self, session: Session, c2s: int, s2c: int, reason: str) -> None:
        session.bytes_in += c2s
        session.bytes_out += s2c
        session.end_reason = reason
        server = session.server
        if server is not None:
            server.counters.current -= 1
            server.counters.bytes_in += session.bytes_in
            server.counters.bytes_out += session.bytes_out
        fe = self._frontend(session.frontend)
        fe.counters.bytes_in += c2s
        fe.counters.bytes_out += session.bytes_out
        stick = self.backends[session.backend].stick
        if stick is not None and session.stick_key:
            stick.disconnected(session.stick_key)
        self.session_ended(session)

    def session_ended(self, session: Session) -> None:
        """Every accepted connection passes here exactly once, relayed or rejected."""
        session.ended_at = time.monotonic()
        self.current -= 1
        self._frontend(session.frontend).counters.current -= 1
        if self.conn_log is not None:
            self.conn_log.write(session)
        for fe in self.frontends:
            if not fe.accepting:
                fe.resume()

    def _frontend(self, name: str) -> Frontend:
        for fe in self.frontends:
            if fe.name == name:
                return fe
        raise KeyError(name)

    def _purge_sticks(self) -> None:
        for backend in self.backends.values():
            if backend.stick is not None:
                backend.stick.purge()
        self._purger = self.loop.call_later(STICK_PURGE_INTERVAL, self._purge_sticks)


# -- the `serve` command -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path of the TOML config (see examples/lb.toml)")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.config}: {exc.strerror}", file=sys.stderr)
        return 1
    setup_logging(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    return serve(config)


def setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.global_.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def raise_fd_limit() -> None:
    """Use every file descriptor the hard limit allows (the soft limit is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT: then drain for the configured grace; a second signal exits now."""
    import uvloop

    raise_fd_limit()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(config, loop))
    finally:
        loop.close()


async def _serve(config: Config, loop: asyncio.AbstractEventLoop) -> int:
    try:
        proxy = Proxy(config, loop, conn_log=sys.stdout)
        proxy.start()
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        return 1
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(0)  # noqa: TRY301 - leaves run_until_complete at once
        log.info(
            "%s: draining %d connections for up to %.0fs",
            signal.Signals(signum).name,
            len(proxy.hub),
            config.global_.grace,
        )
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stop.wait()
        await proxy.shutdown(config.global_.grace)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
