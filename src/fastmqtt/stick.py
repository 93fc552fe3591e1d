"""The stick table: which server a client id was last routed to.

A client that reconnects within ``expire`` goes back to its server (where its
persistent session lives) while that server is usable; when it is not, the
balancer picks another and ``put`` moves the entry there, so the entry follows the
client. Keys are the FULL client id (HAProxy's recipe truncates to 32 characters,
which sticks unrelated long ids together), reduced to a 128-bit keyed digest, so an
entry takes the same few bytes whatever the id (docs/stick-table.md).

One table per sticky backend, in shared memory: every worker process and the relay
engine's threads use it (``_stick.pyx``), so a client sticks whichever worker the
kernel hands it to. ``StickStore`` says where each process finds its tables.

Lifetime, and how it differs from HAProxy:

- An entry never expires while its client is connected (``connected`` /
  ``disconnected`` keep a count of live connections per key and worker). ``expire``
  counts from the last disconnect, or from ``put`` when no connection is live.
  HAProxy's ``expire`` counts from the last connect, so a device connected for longer
  than ``expire`` loses its entry while still online and may reconnect elsewhere.
- ``get`` neither refreshes the expiry nor the recency: an entry is "used" by
  ``put``, ``connected`` and ``disconnected``, which the proxy calls on every
  routed connection anyway.
- ``size`` bounds the table; when a key's two buckets (8 entries each) are full, the
  least recently used entry without live connections goes, and if every one of them
  has live connections the new key is not kept.
- Empty client ids (3.1.1 clean sessions, v5 ids assigned by the broker) must not be
  stuck together on one server: ``put("")`` raises ``ValueError`` (callers skip
  them); ``get("")`` is always ``None``.

Expired entries are free space at once; ``purge`` (a slice of the table every few
seconds) empties them so that the entry count is right.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from fastmqtt import stick_file
from fastmqtt.balance import server_id

if TYPE_CHECKING:
    from fastmqtt._stick import Table
    from fastmqtt.config import Config, StickConfig

log = logging.getLogger("fastmqtt.stick")

STICK_DIR_ENV = "FASTMQTT_STICK_DIR"  # the supervisor's table directory, for its workers
PRIVATE_PREFIX = "fastmqtt-stick-"
PURGE_SLICES = 12  # purge_step covers the table in this many calls (a minute at 5 s)


@dataclass(frozen=True, slots=True)
class StickEntry:
    """What the table holds for one key (``ctl client``)."""

    server: str | None  # None: a server this process does not know (yet)
    live: int  # connections open now, in every worker
    expires_in: float | None  # seconds; None while connected


class StickTable:
    """Client id -> server name, bounded by ``size``, idle entries expire after ``expire`` s.

    Without ``file``, a private table (a memfd) of this process alone."""

    def __init__(
        self,
        size: int,
        expire: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        file: stick_file.TableFile | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"stick table size must be >= 1, got {size}")
        if expire < 0:
            raise ValueError(f"stick table expire must be >= 0, got {expire}")
        self.size = size
        self.expire = expire
        self._clock = clock
        self.file = file or stick_file.create(None, size, _ms(expire), workers=1, worker=0)
        self._names: dict[int, str] = {}
        self._purged = 0  # next bucket for purge_step

    @property
    def _table(self) -> Table:
        return self.file.table  # no reference of its own: closing the file unmaps it

    @property
    def bytes(self) -> int:
        """Memory the table takes: fixed at creation, whatever the keys."""
        return self.file.length

    def __len__(self) -> int:
        return self._table.count(self._now_ms())

    def register(self, names: Iterable[str]) -> None:
        """Server names the entries may point at (learned from ``put`` too)."""
        for name in names:
            self._names[server_id(name)] = name

    def names(self) -> list[str]:
        """The server names this table knows."""
        return list(self._names.values())

    def get(self, key: str) -> str | None:
        """Server stuck to ``key``, or None when unknown or expired."""
        if not key:
            return None
        return self._names.get(self._table.get(self._digest(key), self._now_ms()))

    def put(self, key: str, server: str) -> None:
        """Stick ``key`` to ``server`` (new entry, or the client moved)."""
        if not key:
            raise ValueError("empty client ids are never stuck")
        ident = server_id(server)
        self._names[ident] = server
        self._table.put(self._digest(key), ident, self._now_ms())

    def connected(self, key: str) -> None:
        """A connection for ``key`` is live: its entry stops expiring (no-op if unknown)."""
        if key:
            self._table.connected(self._digest(key), self._now_ms())

    def disconnected(self, key: str) -> None:
        """A connection for ``key`` ended; the last one starts the expiry clock."""
        if key:
            self._table.disconnected(self._digest(key), self._now_ms())

    def entry(self, key: str) -> StickEntry | None:
        """The entry of ``key`` as it is now, or None."""
        now = self._now_ms()
        found = self._table.peek(self._digest(key), now) if key else None
        if found is None:
            return None
        ident, live, stamp = found
        expires_in = None if live else max(0.0, (stamp + _ms(self.expire) - now) / 1000)
        return StickEntry(self._names.get(ident), live, expires_in)

    def remove(self, key: str) -> bool:
        """Forget ``key`` (``ctl unstick``); False when it had no entry."""
        return bool(key) and self._table.remove(self._digest(key))

    def forget_server(self, server: str) -> int:
        """Drop every entry pointing at ``server`` (removed on reload); returns how many."""
        return self._table.forget_server(server_id(server), self._now_ms())

    def purge(self, now: float | None = None) -> int:
        """Drop expired entries; returns how many."""
        return self._table.purge(self._now_ms() if now is None else _ms(now))

    def purge_step(self) -> int:
        """Purge the next 1/PURGE_SLICES of the buckets (the proxy calls this every few
        seconds: each call stays short, and the whole table is swept every few dozen)."""
        nbuckets = self._table.nbuckets
        count = -(-nbuckets // PURGE_SLICES)
        dropped = self._table.purge(self._now_ms(), self._purged, count)
        self._purged = (self._purged + count) % nbuckets
        return dropped

    def close(self) -> None:
        self.file.close()

    def _digest(self, key: str) -> bytes:
        return self._table.digest(key.encode())

    def _now_ms(self) -> int:
        return _now_ms(self._clock)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _now_ms(clock: Callable[[], float]) -> int:
    if clock is time.monotonic:  # the engine's clock (CLOCK_MONOTONIC), to the millisecond
        return time.monotonic_ns() // 1_000_000
    return _ms(clock())


def _copy_entries(old: stick_file.TableFile, new: stick_file.TableFile, now: int) -> None:
    """Every entry of ``old`` into ``new`` (same digest key), least recently used first, so
    that where the new table is too small the newest stay."""
    entries = sorted(old.table.entries(now), key=lambda e: e[2])
    for digest, server, stamp, live in entries:
        new.table.load(digest, server, stamp, live, now)


def _remove_stale_private_dirs() -> None:
    """Private table directories of supervisors that died without cleaning up (SIGKILL): no
    process of theirs is left, and no process maps their files."""
    base = "/dev/shm"
    try:
        names = [n for n in os.listdir(base) if n.startswith(PRIVATE_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        pid = name[len(PRIVATE_PREFIX) :].split("-", 1)[0]
        try:
            if os.stat(path).st_uid != os.geteuid() or not pid.isdigit() or _alive(int(pid)):
                continue
            files = [os.path.join(path, f) for f in os.listdir(path)]
        except OSError:
            continue
        if all(stick_file.unused(f) for f in files):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StickStore:
    """The stick tables of one process: one per sticky backend, found by backend name.

    - A single process (``workers = 1``) owns its tables: memfds, or with ``stick_dir``
      files ``<stick_dir>/<backend>.stick`` that it takes over at start (a restart keeps
      the entries).
    - A supervisor owns the tables of its workers: files in ``stick_dir`` or in a private
      directory under /dev/shm (removed when it stops). It creates them at start and on
      reload (``sync``), and clears a dead worker's live counts (``recover_worker``).
    - A worker attaches to its supervisor's files (``STICK_DIR_ENV``).

    A changed ``size`` (or worker count) makes a new table with the same digest key: the
    entries are copied over, least recently used first, so the newest fit.
    """

    def __init__(
        self,
        directory: str | None,
        workers: int,
        worker: int,
        owner: bool,
        private: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.workers = workers
        self.worker = worker
        self.owner = owner
        self.private = private  # a directory of ours alone, removed by close()
        self.clock = clock
        self._files: dict[str, stick_file.TableFile] = {}  # the owner's tables, by backend

    @classmethod
    def for_process(cls, config: Config, worker: int | None) -> StickStore:
        """The store of a `fastmqtt serve` process (``worker`` set under a supervisor)."""
        if worker is None:
            return cls(config.global_.stick_dir, 1, 0, owner=True)
        directory = os.environ.get(STICK_DIR_ENV)
        if directory is None:
            log.warning("worker %d: no shared stick tables; using private ones", worker)
        return cls(directory, config.global_.workers, worker, owner=directory is None)

    @classmethod
    def for_supervisor(cls, config: Config) -> StickStore:
        """The supervisor's store: ``stick_dir``, or a private directory in /dev/shm."""
        directory = config.global_.stick_dir
        if directory is not None:
            return cls(directory, config.global_.workers, 0, owner=True)
        _remove_stale_private_dirs()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        directory = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-", dir=base)
        return cls(directory, config.global_.workers, 0, owner=True, private=True)

    # -- tables for backends -------------------------------------------------------------

    def table(self, backend: str, config: StickConfig, current: StickTable | None) -> StickTable:
        """The table of a sticky backend: ``current`` when it still is, else the new one."""
        if self.owner:
            file = self._own(backend, config)
        else:
            file = self._attach(backend, config, current)
            if file is None:
                return current  # type: ignore[return-value]  # unchanged since the last look
        if current is not None and current.file is file:
            current.expire = config.expire
            return current
        table = StickTable(config.size, config.expire, self.clock, file=file)
        if current is not None:  # replaced: its names carry over, its mapping goes
            table.register(current.names())
            current.close()
        return table

    def sync(self, config: Config) -> None:
        """The supervisor, at start and on reload: a table for every sticky backend, before
        the workers look; the files of the others go."""
        sticky = {name: bc.stick for name, bc in config.backends.items() if bc.stick}
        for name, stick in sticky.items():
            self._own(name, stick)
        self.retain(sticky)

    def retain(self, backends: Iterable[str]) -> None:
        """Drop the owned tables (and files) of backends no longer sticky."""
        keep = set(backends)
        for name in [name for name in self._files if name not in keep]:
            file = self._files.pop(name)
            if file.path is not None:
                os.unlink(file.path)
            file.close()

    def recover_worker(self, worker: int, pid: int) -> None:
        """The supervisor saw worker ``worker`` (process ``pid``) die: its live counts go, and
        the bucket locks it held are freed."""
        now = _now_ms(self.clock)
        for name, file in self._files.items():
            dropped = file.table.recover_worker(worker, pid, now)
            if dropped:
                log.info(
                    "stick table %s: worker %d's %d live connections dropped", name, worker, dropped
                )

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()
        if self.private and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- owner and worker halves ---------------------------------------------------------

    def _path(self, backend: str) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, f"{backend}.stick")

    def _own(self, backend: str, config: StickConfig) -> stick_file.TableFile:
        path = self._path(backend)
        old = self._files.get(backend)
        if old is None and path is not None:
            old = self._take_over(path)
        if old is not None and (old.header.size, old.header.workers) == (config.size, self.workers):
            old.set_expire(_ms(config.expire))
            self._files[backend] = old
            return old
        new = stick_file.create(
            path,
            config.size,
            _ms(config.expire),
            self.workers,
            self.worker,
            key=None if old is None else old.header.key,
            fill=None if old is None else partial(_copy_entries, old, now=_now_ms(self.clock)),
        )
        if old is not None:
            log.info(
                "stick table %s: size %d -> %d, kept %d entries",
                backend,
                old.header.size,
                config.size,
                new.table.count(_now_ms(self.clock)),
            )
            old.close()
        self._files[backend] = new
        return new

    def _take_over(self, path: str) -> stick_file.TableFile | None:
        """The table a previous run left at ``path`` (None: there is none, or it is unusable
        and gets replaced). InUse propagates: two fastmqtt must not share a stick_dir."""
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            file = stick_file.take_over(path, self.worker)
        except stick_file.InUse:
            raise
        except stick_file.StickFileError as exc:
            log.warning("%s; starting an empty stick table there", exc)
            return None
        if file is not None:
            file.table.restart(_now_ms(self.clock), file.header.boot_id != stick_file.boot_id())
            file.mark_boot()
            kept = file.table.count(_now_ms(self.clock))
            log.info("stick table %s: %d entries kept from the last run", path, kept)
        return file

    def _attach(
        self, backend: str, config: StickConfig, current: StickTable | None
    ) -> stick_file.TableFile | None:
        """A worker: the supervisor's file for ``backend`` (None: ``current`` still is it)."""
        path = self._path(backend)
        assert path is not None
        try:
            inode = os.stat(path).st_ino
            if current is not None and current.file.path == path and current.file.inode == inode:
                return None
            return stick_file.attach(path, self.worker)
        except (OSError, stick_file.StickFileError) as exc:
            log.warning("stick table %s not shared (%s): this worker keeps its own", backend, exc)
            return stick_file.create(None, config.size, _ms(config.expire), 1, 0)
