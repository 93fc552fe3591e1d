"""One proxied connection from accept to close, and the log line it leaves behind."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import TYPE_CHECKING, Protocol, TextIO

from fastmqtt.logs import one_line

if TYPE_CHECKING:
    from fastmqtt.backend import Backend, Server
    from fastmqtt.metrics import FrontendCounters, ServerCounters

_ids = itertools.count(1)


class Origin(Protocol):
    """Where a session was accepted, as far as its accounting goes: a ``Frontend``, or for a
    connection taken over from another process, the frontend's name alone when this process
    has no frontend of that name (takeover.py)."""

    name: str
    counters: FrontendCounters

    def release(self, session: Session) -> None:
        """The session is over here: its per-source limit goes back."""


def credit(
    frontend_counters: FrontendCounters, server: Server | None, bytes_in: int, bytes_out: int
) -> None:
    """An ended connection's bytes, into its frontend's and its server's counters."""
    counted: list[FrontendCounters | ServerCounters] = [frontend_counters]
    if server is not None:
        counted.append(server.counters)
    for counters in counted:
        counters.bytes_in += bytes_in
        counters.bytes_out += bytes_out


class Session:
    """What fastmqtt knows about one client connection, and what it holds while it lives.

    It owns its accounting: ``accepted`` takes a slot of its frontend, ``established`` one
    of its server (and marks its stick entry live, Backend.connected), ``ended`` is the only
    byte formula (``traffic``: the log, the stats page and the metrics read it) and gives
    back exactly what this session took: its server's slot and stick entry, its frontend's
    slot and per-source limit. A session the engine's fast path made from a record
    (fastpath.py) took nothing in Python: ``ended`` only credits its bytes.
    Timestamps are time.monotonic()."""

    __slots__ = (
        "_holds_frontend",
        "_holds_server",
        "accepted_at",
        "backend",
        "bytes_in",
        "bytes_out",
        "clean_start",
        "client_addr",
        "client_id",
        "connack_code",
        "connected_at",
        "end_reason",
        "ended_at",
        "frontend",
        "frontend_name",
        "id",
        "inspected_at",
        "keepalive",
        "protocol_version",
        "routed_in",
        "server",
        "session_expiry",
        "stick_key",
        "username",
        "wall_start",
    )

    def __init__(self, frontend: Origin, client_addr: tuple[str, int]) -> None:
        self.id = next(_ids)
        self.frontend = frontend
        self.frontend_name = frontend.name  # as accepted: a reload may rename the frontend
        self.client_addr = client_addr
        self.accepted_at = time.monotonic()
        self.wall_start = time.time()
        self.inspected_at: float | None = None
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self.backend: Backend | None = None
        self.server: Server | None = None
        self.client_id: str | None = None
        self.username: str | None = None
        self.protocol_version = 0
        self.keepalive = 0
        self.clean_start: bool | None = None
        self.session_expiry: int | None = None  # MQTT 5, seconds, when the CONNECT said
        self.stick_key: str | None = None
        self.connack_code: int | None = None
        self.routed_in = 0  # client bytes routing wrote to the server itself (the CONNECT)
        self.bytes_in = 0  # client -> server, once ended
        self.bytes_out = 0  # server -> client, once ended
        self.end_reason = ""
        self._holds_frontend = False
        self._holds_server = False

    def accepted(self) -> None:
        """Accepted on the event loop: the session counts against its frontend until it ends."""
        self.frontend.counters.opened()
        self._holds_frontend = True

    def established(self, server: Server, stick_key: str | None, routed_in: int) -> None:
        """Its backend opened ``server`` for it; ``routed_in``: the client bytes routing wrote
        to it (the relay counts the rest)."""
        assert self.backend is not None
        self.server, self.stick_key, self.routed_in = server, stick_key, routed_in
        server.counters.opened()
        self.backend.connected(stick_key)
        self._holds_server = True

    def traffic(self, c2s: int, s2c: int) -> tuple[int, int]:
        """(bytes from the client, bytes to the client), given the relay's counts so far.
        The relay counts what it moved, the bytes it was handed to send first (the CONNACK)
        included; routing adds what it wrote itself. The one byte formula: the log, the stats
        page and the metrics all come from here."""
        return self.routed_in + c2s, s2c

    def ended(self, c2s: int, s2c: int, reason: str) -> None:
        """Relayed or refused, the session is over: final byte counts (0, 0 when it never
        reached the relay), credited to the frontend and the server; what it held goes back."""
        self.bytes_in, self.bytes_out = self.traffic(c2s, s2c)
        self.end_reason = reason
        credit(self.frontend.counters, self.server, self.bytes_in, self.bytes_out)
        if self._holds_frontend:
            self.ended_at = time.monotonic()
        self._give_back()

    def adopted(self) -> None:
        """Taken over from another process that relayed it (takeover.py): from now on it
        holds its slots here (not counted as accepted), and its stick entry follows it."""
        self.frontend.counters.current += 1
        self._holds_frontend = True
        if self.server is not None and self.backend is not None:
            self.backend.learn(self.stick_key, self.server)
            self.server.counters.current += 1
            self.backend.connected(self.stick_key)
            self._holds_server = True

    def moved(self) -> None:
        """Another process relays it now (takeover.py): what it held here goes back, with
        no bytes credited and no line (the other process logs it)."""
        self._give_back()

    def _give_back(self) -> None:
        if self._holds_server:
            self._holds_server = False
            assert self.server is not None and self.backend is not None
            self.server.counters.current -= 1
            self.backend.disconnected(self.stick_key)
        if self._holds_frontend:
            self._holds_frontend = False
            self.frontend.counters.current -= 1
            self.frontend.release(self)

    def _ms_since_accept(self, t: float | None) -> int:
        return -1 if t is None else int((t - self.accepted_at) * 1000)

    def log_fields(self) -> dict[str, object]:
        return {
            "client": f"{self.client_addr[0]}:{self.client_addr[1]}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.wall_start))
            + f".{int(self.wall_start * 1000) % 1000:03d}Z",
            "frontend": self.frontend_name,
            "backend": self.backend.name if self.backend is not None else "-",
            "server": self.server.name if self.server is not None else "-",
            "client_id": self.client_id,
            "username": self.username,
            "mqtt_version": self.protocol_version or None,
            "connack": self.connack_code,
            "wait_ms": self._ms_since_accept(self.inspected_at),
            "connect_ms": self._ms_since_accept(self.connected_at),
            "total_ms": self._ms_since_accept(self.ended_at),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "end": self.end_reason,
        }


def format_text(f: dict[str, object]) -> str:
    """HAProxy tcplog-like: client [time] frontend backend/server id Tw/Tc/Tt in/out end."""
    cid = "-" if f["client_id"] is None else json.dumps(f["client_id"], ensure_ascii=False)
    return one_line(
        f"{f['client']} [{f['time']}] {f['frontend']} {f['backend']}/{f['server']} "
        f"cid={cid} v={f['mqtt_version'] or '-'} connack={_dash(f['connack'])} "
        f"{f['wait_ms']}/{f['connect_ms']}/{f['total_ms']} "
        f"in={f['bytes_in']} out={f['bytes_out']} {f['end']}"
    )


def _dash(value: object) -> object:
    return "-" if value is None else value


def format_json(f: dict[str, object]) -> str:
    return one_line(json.dumps(f, ensure_ascii=False, separators=(",", ":")))


class ConnectionLog:
    """Writes one line per ended connection, pre-formatted (no logging-module overhead) and
    flushed at most every FLUSH_EVERY seconds, so churn does not cost a write(2) per client."""

    FLUSH_EVERY = 0.2

    def __init__(self, stream: TextIO, fmt: str, loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self.format = format_json if fmt == "json" else format_text
        self.loop = loop
        self._flush: asyncio.TimerHandle | None = None

    def write(self, session: Session) -> None:
        self.stream.write(self.format(session.log_fields()) + "\n")
        if self._flush is None:
            self._flush = self.loop.call_later(self.FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self.stream.flush()
