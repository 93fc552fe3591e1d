"""Relay on the event loop: two transports wired back to back.

Used for TLS and WebSocket connections (which the C engine cannot splice) and as the relay
when the compiled engine is not in use. Backpressure: when one side's write buffer passes the
high-water mark, reading from the other side pauses until it drains; a side that answers its
own messages (WebSocket pings) also stops being read while its buffer is full, so a client that
sends and never reads holds us to one buffer. Half-close: EOF from one side becomes write_eof()
towards the other; the pair ends when both directions are done.

Each side is an ``Endpoint``: a plain socket (wrapped here), a transport the listener already
opened (TLS: ``Adopted``, with the routing protocol that buffered what it received), or either
of those with a ``Codec`` in front (``Framed``: the WebSocket bridge) that turns what the side
sends into MQTT bytes for the peer, answers control messages itself, and frames what goes back.

The hand-over has one owner of the bytes: `LoopRelay.start` switches adopted transports to the
relay in the call that hands them over, so nothing they receive can land in a protocol nobody
reads; and the pair stays closed (what each side is owed is queued, in order, behind the bytes
routing read earlier) until every side is wired. An EOF or a close seen meanwhile takes effect
once those queued bytes are written.

Ending a pair: a side whose peer may still be sending is not closed at once, as a close with
unread bytes makes the kernel answer with a reset and drop what we sent but the peer has not
read yet (the goodbye DISCONNECT of a drain, say). Like HAProxy and NGINX, its writing is shut
down, what still arrives is read and dropped, and the socket is closed when the peer closes, or
after ``CLOSE_LINGER`` seconds or ``CLOSE_LINGER_BYTES`` bytes, whichever comes first.
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
CLOSE_LINGER = 2.0  # seconds an ended pair's socket keeps reading (and dropping) before close
CLOSE_LINGER_BYTES = 1 << 20  # bytes it drops before it closes anyway
BYE_IDLE = 10.0  # seconds a goodbye waits without progress for the packet boundaries

_PEER_FULL = 1  # why a side is not read: the peer's write buffer is full
_OWN_FULL = 2  # ... or its own (a side with a codec writes answers to what it reads)


class Codec(Protocol):
    def decode(self, data: bytes) -> tuple[bytes, bytes, str | None]:
        """(bytes for the peer, bytes to answer this side with, end reason or None)."""

    def encode(self, data: bytes) -> bytes:
        """The peer's bytes as this side expects them."""

    def closing(self, reason: str) -> bytes:
        """Last bytes for this side when the pair ends for ``reason`` (b"" if none)."""


class Buffered(Protocol):
    """The protocol a transport had before the relay, which holds what it received and did not
    hand on."""

    def hand_over(self, successor: asyncio.Protocol) -> None:
        """Give ``successor`` (now the transport's protocol) what is buffered and the EOF or
        the loss seen, and pass on callbacks that still reach this protocol later."""


@dataclass(slots=True)
class Adopted:
    """An open transport (TLS) and its routing protocol, whose unread bytes and EOF the relay
    takes over in the same step as the transport."""

    transport: asyncio.Transport
    reader: Buffered


@dataclass(slots=True)
class Framed:
    """An endpoint whose bytes pass through ``codec`` (WebSocket frames <-> MQTT bytes)."""

    inner: socket.socket | Adopted
    codec: Codec


Endpoint = socket.socket | Adopted | Framed


class _Side(asyncio.Protocol):
    """One socket of the pair; ``role`` is "client" or "server" and names end reasons."""

    __slots__ = (
        "blocked",
        "boundary",
        "codec",
        "discarded",
        "eof",
        "last_read",
        "linger",
        "outbox",
        "outbox_full",
        "pair",
        "peer",
        "queued",
        "received",
        "role",
        "sock",
        "transport",
    )

    def __init__(self, pair: LoopRelay, role: str) -> None:
        self.pair = pair
        self.role = role
        self.peer: _Side
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # a plain socket until its transport exists
        self.codec: Codec | None = None
        self.boundary: PacketBoundary | None = None  # where its packets end (track_packets)
        self.received = 0
        self.outbox: list[bytes] = []  # wire bytes for this side until the pair opens
        self.queued = 0  # their length
        self.outbox_full = False
        self.blocked = 0  # _PEER_FULL | _OWN_FULL: why reading is paused
        self.eof = False
        self.last_read = time.monotonic()
        self.linger: asyncio.TimerHandle | None = None
        self.discarded = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        if self.blocked:
            transport.pause_reading()  # type: ignore[attr-defined]

    # -- bytes out ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """MQTT bytes from the peer, for this side (framed by this side's codec)."""
        if data:
            self.write(self.codec.encode(data) if self.codec else data)

    def write(self, wire: bytes) -> None:
        """Bytes as this side's socket carries them: queued until the pair opens."""
        if self.pair.opened:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(wire)
            return
        self.outbox.append(wire)
        self.queued += len(wire)
        if self.queued > HIGH_WATER and not self.outbox_full:
            self.outbox_full = True
            self.pause_writing()

    def flush_outbox(self) -> None:
        """The pair opens: what was queued goes out, in order, before anything else."""
        outbox, self.outbox, self.queued = self.outbox, [], 0
        transport = self.transport
        if outbox and transport is not None and not transport.is_closing():
            transport.write(b"".join(outbox))
        if self.outbox_full:
            self.outbox_full = False
            if transport is None or transport.get_write_buffer_size() <= HIGH_WATER:
                self.resume_writing()  # else the transport paused and will resume us itself

    # -- bytes in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.pair.ended:  # lingering: read and drop
            self.discarded += len(data)
            if self.discarded > self.pair.linger_bytes and self.transport is not None:
                self.transport.abort()
            return
        self.received += len(data)
        end = None
        if self.codec is not None:
            data, reply, end = self.codec.decode(data)
            if reply:
                self.write(reply)
            if data:  # control frames alone are not activity (a ping flood must time out)
                self.last_read = time.monotonic()
        else:
            self.last_read = time.monotonic()
        if data:
            self.pass_on(data)
        if end is not None:
            self.pair.finish(end)

    def pass_on(self, data: bytes) -> None:
        """MQTT bytes from this side for the peer; once a goodbye is under way, only what
        completes the packet in progress (the rest is dropped)."""
        boundary, pair = self.boundary, self.pair
        if boundary is not None:
            if pair.farewell is None:
                boundary.feed(data)
            else:
                data = data[: boundary.feed(data, stop_at_boundary=True)]
        if data:
            self.peer.send(data)
        if pair.farewell is not None:
            pair.goodbye_step()

    def eof_received(self) -> bool:
        self.eof = True
        if self.pair.ended:
            return False  # nothing left to pass on: let the transport close
        if not self.pair.opened:  # taken into account once the queued bytes are out
            return self.can_half_close()
        return self.pair.side_ended(self)

    def can_half_close(self) -> bool:
        """A plain TCP side without a codec (TLS and WebSocket have no half-close)."""
        return self.codec is None and self.transport is not None and self.transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.linger is not None:
            self.linger.cancel()
        self.pair.side_closed()
        if exc is None:
            self.pair.finish(f"{self.role}-closed")
        elif isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            self.pair.finish(f"{self.role}-reset")
        else:
            self.pair.finish("error")

    # -- backpressure ---------------------------------------------------------------------

    def pause_writing(self) -> None:
        """This side's write buffer is full: stop reading what fills it."""
        self.peer.block(_PEER_FULL)
        if self.codec is not None:
            self.block(_OWN_FULL)

    def resume_writing(self) -> None:
        self.peer.unblock(_PEER_FULL)
        self.unblock(_OWN_FULL)

    def block(self, why: int) -> None:
        if not self.blocked and self.transport is not None:
            self.transport.pause_reading()
        self.blocked |= why

    def unblock(self, why: int) -> None:
        was, self.blocked = self.blocked, self.blocked & ~why
        if was and not self.blocked and not self.eof and self._live():
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _live(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # -- the end --------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """The pair ended: last words (a close frame), then close, lingering if the other end
        may still be sending."""
        transport = self.transport
        if transport is None:
            if self.sock is not None:
                self.sock.close()  # wiring failed before its transport existed
            self.pair.side_closed()
            return
        if transport.is_closing():
            return
        if self.codec is not None:
            transport.write(self.codec.closing(reason))
        pair = self.pair
        if self.eof or not transport.can_write_eof() or pair.linger <= 0:
            transport.close()
            return
        transport.write_eof()  # after what is buffered; then read and drop until the peer closes
        self.unblock(_PEER_FULL | _OWN_FULL)
        self.linger = pair.loop.call_later(pair.linger, transport.abort)


class LoopRelay:
    """A client/server socket pair relayed on the event loop until either side ends it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_idle: float,
        server_idle: float,
        on_done: DoneCallback,
        linger: float = CLOSE_LINGER,
        linger_bytes: int = CLOSE_LINGER_BYTES,
    ) -> None:
        self.loop = loop
        self.linger = linger  # see CLOSE_LINGER
        self.linger_bytes = linger_bytes
        self.client = _Side(self, "client")
        self.server = _Side(self, "server")
        self.client.peer, self.server.peer = self.server, self.client
        self.client_idle = client_idle
        self.server_idle = server_idle
        self.on_done: DoneCallback | None = on_done
        self.opened = False  # every side wired and what was queued for it written
        self.ending: str | None = None  # an end asked for before the pair opened
        self._wiring: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.farewell: bytes | None = None
        self._farewell_sent = False
        self._open_sides = 2
        self.closed = loop.create_future()  # done when both sockets are closed (after lingering)

    @property
    def ended(self) -> bool:
        return self.opened and self.on_done is None

    def track_packets(self) -> None:
        """Follow both streams' packet boundaries so that `say_goodbye` can be used; call it
        before `start` (the bytes routing read count)."""
        self.server.boundary = PacketBoundary()
        self.client.boundary = PacketBoundary()

    def say_goodbye(self, packet: bytes) -> bool:
        """End the pair between two packets, as "drained": ``packet`` (a DISCONNECT) goes to the
        client between two of the broker's packets and the pair ends (the client was told to
        go); with b"" (MQTT 3.1.1) the pair ends once the client's stream is between two
        packets too. Each stream's bytes past its boundary are dropped. Waits at most BYE_IDLE
        seconds without progress (then the idle timeout ends it). False (ignored) unless
        `track_packets` was called, or once said."""
        if self.server.boundary is None or self.farewell is not None or self.on_done is None:
            return False
        self.farewell = packet
        now = time.monotonic()
        for side in (self.client, self.server):
            side.last_read = now
        self.client_idle = min(self.client_idle or BYE_IDLE, BYE_IDLE)
        self.server_idle = min(self.server_idle or BYE_IDLE, BYE_IDLE)
        if self.opened:  # else _open arms it
            if self._timer is not None:
                self._timer.cancel()
            self._arm_timer()
        self.goodbye_step()
        return True

    def goodbye_step(self) -> None:
        """The goodbye packet once the broker's stream is at a boundary, then the end (without
        a packet, once the client's stream is at a boundary too)."""
        assert self.farewell is not None and self.server.boundary and self.client.boundary
        if not self._farewell_sent and self.server.boundary.at_boundary:
            self._farewell_sent = True
            self.client.send(self.farewell)
        if self._farewell_sent and (self.farewell or self.client.boundary.at_boundary):
            self.finish("drained")

    def start(
        self,
        client: Endpoint,
        server: Endpoint,
        to_server: bytes = b"",
        to_client: bytes = b"",
    ) -> None:
        """Take both endpoints over; ``to_*`` are (unframed) bytes routing already read, which
        go out first. Adopted transports switch to the relay in this call."""
        sockets = []
        sides = ((self.client, client), (self.server, server))
        for side, endpoint in sides:
            if isinstance(endpoint, Framed):
                side.codec = endpoint.codec
        self.client.pass_on(to_server)  # each stream's boundary follows what routing read
        self.server.pass_on(to_client)
        # bytes handed over count as relayed, as in the C engine (Session.traffic)
        self.client.received += len(to_server)
        self.server.received += len(to_client)
        for side, endpoint in sides:
            inner = endpoint.inner if isinstance(endpoint, Framed) else endpoint
            if isinstance(inner, Adopted):
                self._adopt(side, inner)
            else:
                side.sock = inner
                sockets.append(side)
        if sockets:
            self._wiring = self.loop.create_task(self._wire(sockets))
        else:
            self._open()

    def _adopt(self, side: _Side, endpoint: Adopted) -> None:
        """Switch the transport to ``side`` and take what its old protocol still holds."""
        transport = endpoint.transport
        transport.set_protocol(side)
        side.connection_made(transport)
        endpoint.reader.hand_over(side)
        if not side.blocked:
            transport.resume_reading()  # the routing reader may have paused it

    async def _wire(self, sides: list[_Side]) -> None:
        """Wrap the plain sockets in transports (their bytes wait in the kernel meanwhile)."""
        try:
            for side in sides:
                assert side.sock is not None
                await self.loop.connect_accepted_socket(lambda side=side: side, side.sock)
                side.sock = None
        except OSError:
            self.ending = self.ending or "error"
        finally:
            self._wiring = None
        self._open()

    def _open(self) -> None:
        """Write what was queued for each side, then let bytes flow (or end, if asked to)."""
        self.opened = True
        for side in (self.client, self.server):
            side.flush_outbox()
        if self.ending is not None:
            self.finish(self.ending)
            return
        for side in (self.client, self.server):
            if side.eof and not self.side_ended(side):
                return
        self._arm_timer()

    def side_ended(self, side: _Side) -> bool:
        """``side`` sent EOF: pass it on (half-close) and return True, or end the pair."""
        peer = side.peer
        if peer.eof or not side.can_half_close() or not peer.can_half_close():
            first = peer if peer.eof else side  # the end is named after who began it
            self.finish(f"{first.role}-closed")  # a framed stream ends with a close frame
            return False
        assert peer.transport is not None
        peer.transport.write_eof()
        return True  # keep our transport open: the other direction may still flow

    def side_closed(self) -> None:
        self._open_sides -= 1
        if self._open_sides == 0 and not self.closed.done():
            self.closed.set_result(None)

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
        """End the pair once: say goodbye on framed sides, close both sides (flushing what they
        hold, lingering where the other end may still send) and report. Before the pair has
        opened, the end waits for the queued bytes to be written."""
        if not self.opened:
            self.ending = self.ending or reason
            return
        done, self.on_done = self.on_done, None
        if done is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        for side in (self.client, self.server):
            side.close(reason)
        done(self.client.received, self.server.received, reason)


class LoopEngine:
    """The event-loop relay as a ``relay.Relay``: every LoopRelay pair of the process, by
    connection id. A pair that ended may still linger (reading and dropping what its peer
    sends, see CLOSE_LINGER); ``stop`` closes the rest and waits for those."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_done: Callable[[int, int, int, str], None]
    ) -> None:
        self.loop = loop
        self.on_done = on_done  # (connection id, bytes client->server, server->client, reason)
        self._pairs: dict[int, LoopRelay] = {}
        self._lingering: set[asyncio.Future[None]] = set()

    def add(
        self,
        conn_id: int,
        client: Endpoint,
        server: Endpoint,
        client_idle: float,
        server_idle: float,
        to_server: bytes = b"",
        to_client: bytes = b"",
        track_packets: bool = False,
    ) -> None:
        def done(c2s: int, s2c: int, reason: str) -> None:
            self._ended(conn_id)
            self.on_done(conn_id, c2s, s2c, reason)

        pair = LoopRelay(self.loop, client_idle, server_idle, done)
        self._pairs[conn_id] = pair
        if track_packets:
            pair.track_packets()
        pair.start(client, server, to_server, to_client)

    def _ended(self, conn_id: int) -> None:
        pair = self._pairs.pop(conn_id)
        if not pair.closed.done():
            self._lingering.add(pair.closed)
            pair.closed.add_done_callback(self._lingering.discard)

    def close(self, conn_id: int, reason: str = "killed") -> None:
        pair = self._pairs.get(conn_id)
        if pair is not None:
            pair.close(reason)

    def goodbye(self, conn_id: int, packet: bytes) -> bool:
        pair = self._pairs.get(conn_id)
        return pair is not None and pair.say_goodbye(packet)

    def counters(self, conn_id: int) -> tuple[int, int] | None:
        pair = self._pairs.get(conn_id)
        return pair.counters() if pair is not None else None

    async def stop(self) -> None:
        for pair in list(self._pairs.values()):
            pair.close("shutdown")
        if self._lingering:  # ended pairs whose sockets still read what their peers send
            await asyncio.wait(self._lingering, timeout=CLOSE_LINGER + 0.5)
