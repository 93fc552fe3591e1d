"""Worker processes that share the listeners (SO_REUSEPORT), and the supervisor that starts
them, restarts one that dies, and passes signals on.

Each worker is a full `fastmqtt serve` of the same config with `--worker N`: its own event loop,
relay engine, health checks and stick tables. Client-id routing agrees across workers when the
backend uses `balance = "consistent"` (the mapping is a deterministic hash); stick tables are
per worker (the kernel spreads connections by address and port, so a reconnect may land on
another worker, whose table has not seen that client).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from fastmqtt import notify
from fastmqtt.config import Config, load_config
from fastmqtt.errors import ConfigError

log = logging.getLogger("fastmqtt.workers")

READY_FD_ENV = "FASTMQTT_READY_FD"
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


class Worker:
    """One child process and the pipe on which it says it is ready."""

    def __init__(self, index: int, path: str) -> None:
        self.index = index
        read_fd, write_fd = os.pipe()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastmqtt", "serve", path, "--worker", str(index)],
            stdin=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            env={**os.environ, READY_FD_ENV: str(write_fd)},
        )
        os.close(write_fd)
        self.ready_fd = read_fd

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


class Supervisor:
    """Keeps ``workers`` copies of `fastmqtt serve` running until told to stop."""

    def __init__(self, path: str, config: Config) -> None:
        self.path = path
        self.config = config
        self.workers: list[Worker] = []
        self.stopping = False
        self.restarts = 0

    def run(self) -> int:
        import uvloop

        return uvloop.run(self._run())

    async def _run(self) -> int:
        count = self.config.global_.workers
        self.workers = [Worker(i, self.path) for i in range(count)]
        if not await self._wait_ready(self.workers):
            log.error("workers failed to start; stopping")
            await self._stop_all(signal.SIGINT)
            return 1
        log.info("%d workers serving %s", count, self.path)
        notify.ready(f"{count} workers")
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig, done)
        while not (self.stopping and all(w.proc.poll() is not None for w in self.workers)):
            if not self.stopping:
                self._respawn_dead()
            await asyncio.sleep(POLL_INTERVAL)
        for worker in self.workers:
            worker.close()
        log.info("all workers stopped")
        return 0

    async def _wait_ready(self, workers: list[Worker]) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(workers)
        while pending and time.monotonic() < deadline:
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
            self.workers[i] = Worker(i, self.path)
            self.restarts += 1

    def _reload(self) -> None:
        """Validate first, so a broken file never reaches the workers."""
        try:
            self.config = load_config(self.path)
        except (ConfigError, OSError) as exc:
            lines = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
            for line in lines:
                log.error("reload refused: %s", line)
            return
        for worker in self.workers:
            worker.signal(signal.SIGHUP)

    def _stop(self, signum: int, done: asyncio.Event) -> None:
        """First signal: workers drain; second: they exit at once."""
        if not self.stopping:
            notify.stopping()
        self.stopping = True
        for worker in self.workers:
            worker.signal(signum)
        done.set()

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
