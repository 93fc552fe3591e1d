"""One proxied connection from accept to close, and the log line it leaves behind."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import TYPE_CHECKING, TextIO

from fastmqtt.logs import one_line

if TYPE_CHECKING:
    from fastmqtt.backend import Server
    from fastmqtt.metrics import FrontendCounters, ServerCounters

_ids = itertools.count(1)


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
    """What fastmqtt knows about one client connection; timestamps are time.monotonic()."""

    __slots__ = (
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
        "frontend_counters",
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

    def __init__(
        self, frontend: str, client_addr: tuple[str, int], frontend_counters: FrontendCounters
    ) -> None:
        self.id = next(_ids)
        self.frontend = frontend
        self.frontend_counters = frontend_counters  # survives a reload that renames its frontend
        self.client_addr = client_addr
        self.accepted_at = time.monotonic()
        self.wall_start = time.time()
        self.inspected_at: float | None = None
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self.backend = ""
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

    def traffic(self, c2s: int, s2c: int) -> tuple[int, int]:
        """(bytes from the client, bytes to the client), given the relay's counts so far.
        The relay counts what it moved, the bytes it was handed to send first (the CONNACK)
        included; routing adds what it wrote itself. The one byte formula: the log, the stats
        page and the metrics all come from here."""
        return self.routed_in + c2s, s2c

    def ended(self, c2s: int, s2c: int, reason: str) -> None:
        """The relay is done: final byte counts, credited to the frontend and the server."""
        self.bytes_in, self.bytes_out = self.traffic(c2s, s2c)
        self.end_reason = reason
        credit(self.frontend_counters, self.server, self.bytes_in, self.bytes_out)

    def _ms_since_accept(self, t: float | None) -> int:
        return -1 if t is None else int((t - self.accepted_at) * 1000)

    def log_fields(self) -> dict[str, object]:
        return {
            "client": f"{self.client_addr[0]}:{self.client_addr[1]}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.wall_start))
            + f".{int(self.wall_start * 1000) % 1000:03d}Z",
            "frontend": self.frontend,
            "backend": self.backend or "-",
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
