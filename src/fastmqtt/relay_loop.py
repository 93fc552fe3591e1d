"""Relay on the event loop: two transports wired back to back.

Used for TLS and WebSocket connections (which the C engine cannot splice) and as the relay
when the compiled engine is not in use. Backpressure: when one side's write buffer passes the
high-water mark, reading from the other side pauses until it drains. Half-close: EOF from one
side becomes write_eof() towards the other; the pair ends when both directions are done.

Each side is an ``Endpoint``: a plain socket (wrapped here), a transport the listener already
opened (TLS: ``Adopted``, with bytes it had buffered but not consumed), or either of those with
a ``Codec`` in front (``Framed``: the WebSocket bridge) that turns what the side sends into
MQTT bytes for the peer, answers control messages itself, and frames what goes back.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastmqtt.framing import PacketBoundary

# (bytes client->server, bytes server->client, end reason)
DoneCallback = Callable[[int, int, str], None]

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Codec(Protocol):
    def decode(self, data: bytes) -> tuple[bytes, bytes, str | None]:
        """(bytes for the peer, bytes to answer this side with, end reason or None)."""

    def encode(self, data: bytes) -> bytes:
        """The peer's bytes as this side expects them."""

    def closing(self, reason: str) -> bytes:
        """Last bytes for this side when the pair ends for ``reason`` (b"" if none)."""


@dataclass(slots=True)
class Adopted:
    """An open transport (TLS) and the bytes its previous protocol received but did not use."""

    transport: asyncio.Transport
    pending: bytes = b""


@dataclass(slots=True)
class Framed:
    """An endpoint whose bytes pass through ``codec`` (WebSocket frames <-> MQTT bytes)."""

    inner: socket.socket | Adopted
    codec: Codec


Endpoint = socket.socket | Adopted | Framed


class _Side(asyncio.Protocol):
    """One socket of the pair; ``role`` is "client" or "server" and names end reasons."""

    __slots__ = (
        "boundary",
        "codec",
        "eof",
        "last_read",
        "outbox",
        "pair",
        "peer",
        "received",
        "role",
        "transport",
    )

    def __init__(self, pair: LoopRelay, role: str) -> None:
        self.pair = pair
        self.role = role
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.codec: Codec | None = None
        self.boundary: PacketBoundary | None = None  # the broker's side, when it may be drained
        self.received = 0
        self.outbox: list[bytes] = []  # for this side, before its transport is wired
        self.eof = False
        self.last_read = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def send(self, data: bytes) -> None:
        """Bytes from the peer, for this side (framed by this side's codec)."""
        if self.transport is None:  # uvloop reads before the other side is wired
            self.outbox.append(data)
        elif data:
            self.transport.write(self.codec.encode(data) if self.codec else data)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.last_read = time.monotonic()
        assert self.peer is not None
        end = None
        if self.codec is not None:
            data, reply, end = self.codec.decode(data)
            if reply and self.transport is not None:
                self.transport.write(reply)
        if self.boundary is not None and data:
            data = self._up_to_farewell(data)
        if data:
            self.peer.send(data)
        if end is not None:
            self.pair.finish(end)
        elif self.pair.farewell is not None and self.boundary and self.boundary.at_boundary:
            self.pair.send_farewell()

    def _up_to_farewell(self, data: bytes) -> bytes:
        """All of ``data``, or once a farewell waits, only what completes the current packet."""
        assert self.boundary is not None
        if self.pair.farewell is None:
            self.boundary.feed(data)
            return data
        return data[: self.boundary.feed(data, stop_at_boundary=True)]

    def eof_received(self) -> bool:
        self.eof = True
        assert self.peer is not None
        if self.peer.transport is None:
            return True  # LoopRelay.start forwards the EOF once the peer exists
        peer = self.peer.transport
        framed = self.codec is not None or self.peer.codec is not None
        if framed or self.peer.eof or not peer.can_write_eof():
            first = self.peer if self.peer.eof else self  # the end is named after who began it
            self.pair.finish(f"{first.role}-closed")  # a framed stream ends with a close frame
            return False
        peer.write_eof()
        return True  # keep our transport open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.pair.finish(f"{self.role}-closed")
        elif isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            self.pair.finish(f"{self.role}-reset")
        else:
            self.pair.finish("error")

    # the peer's write buffer is full: stop reading from this side until it drains
    def pause_writing(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        if not self.peer.eof:
            self.peer.transport.resume_reading()


class LoopRelay:
    """A client/server socket pair relayed on the event loop until either side ends it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_idle: float,
        server_idle: float,
        on_done: DoneCallback,
    ) -> None:
        self.loop = loop
        self.client = _Side(self, "client")
        self.server = _Side(self, "server")
        self.client.peer, self.server.peer = self.server, self.client
        self.client_idle = client_idle
        self.server_idle = server_idle
        self.on_done: DoneCallback | None = on_done
        self._timer: asyncio.TimerHandle | None = None
        self.farewell: bytes | None = None

    def track_packets(self) -> None:
        """Follow the broker's packet boundaries so that `say_goodbye` can be used."""
        self.server.boundary = PacketBoundary()

    def say_goodbye(self, packet: bytes) -> None:
        """Send ``packet`` (a DISCONNECT) to the client between two of the broker's packets,
        then end the pair as "drained". Needs `track_packets` from the start."""
        assert self.server.boundary is not None
        self.farewell = packet
        if self.server.boundary.at_boundary and self.client.transport is not None:
            self.send_farewell()

    def send_farewell(self) -> None:
        assert self.farewell is not None
        self.client.send(self.farewell)
        self.finish("drained")

    async def start(
        self,
        client: Endpoint,
        server: Endpoint,
        to_server: bytes = b"",
        to_client: bytes = b"",
    ) -> None:
        """Take both endpoints; ``to_*`` are (unframed) bytes already read that go out first."""
        try:
            await self._wire(self.client, client)
            await self._wire(self.server, server)
        except OSError:
            self.finish("error")
            return
        if self.on_done is None:  # a side was lost (or closed) while the other was being wired
            for side in (self.client, self.server):
                if side.transport is not None:
                    side.transport.close()  # the side wired after finish() is still open
            return
        assert self.client.transport and self.server.transport
        # bytes handed over count as relayed, as in the C engine (Session.traffic)
        self.client.received += len(to_server)
        self.server.received += len(to_client)
        for side, first in ((self.server, to_server), (self.client, to_client)):
            early, side.outbox = side.outbox, []
            side.send(first + b"".join(early))
        for side in (self.client, self.server):
            if side.eof and side.eof_received() is False:
                return
        self._arm_timer()
        if self.farewell is not None and self.server.boundary and self.server.boundary.at_boundary:
            self.send_farewell()  # asked for while the sides were being wired

    async def _wire(self, side: _Side, endpoint: Endpoint) -> None:
        """Attach ``side`` to the endpoint, replaying bytes it received before the relay."""
        if isinstance(endpoint, Framed):
            side.codec = endpoint.codec
            endpoint = endpoint.inner
        if isinstance(endpoint, Adopted):
            endpoint.transport.set_protocol(side)
            side.connection_made(endpoint.transport)
            if endpoint.pending:
                side.data_received(endpoint.pending)  # before anything the transport reads next
            endpoint.transport.resume_reading()  # the routing reader may have paused it
            return
        await self.loop.connect_accepted_socket(lambda: side, endpoint)

    def counters(self) -> tuple[int, int]:
        return self.client.received, self.server.received

    def close(self, reason: str = "killed") -> None:
        self.finish(reason)

    def _arm_timer(self) -> None:
        delays = [d for d in (self.client_idle, self.server_idle) if d > 0]
        if delays and self.on_done is not None:
            self._timer = self.loop.call_later(min(delays), self._check_idle)

    def _check_idle(self) -> None:
        now = time.monotonic()
        for side, limit in ((self.client, self.client_idle), (self.server, self.server_idle)):
            if limit > 0 and now - side.last_read >= limit:
                self.finish(f"{side.role}-timeout")
                return
        waits = [
            limit - (now - side.last_read)
            for side, limit in ((self.client, self.client_idle), (self.server, self.server_idle))
            if limit > 0
        ]
        self._timer = self.loop.call_later(max(min(waits), 0.01), self._check_idle)

    def finish(self, reason: str) -> None:
        """End the pair once: say goodbye on framed sides, close both transports (flushing
        what they hold) and report."""
        done, self.on_done = self.on_done, None
        if done is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        for side in (self.client, self.server):
            if side.transport is None:
                continue
            if side.codec is not None and not side.transport.is_closing():
                side.transport.write(side.codec.closing(reason))
            side.transport.close()
        done(self.client.received, self.server.received, reason)
