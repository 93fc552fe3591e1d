"""Where established connections go: the C engine for plain TCP when it is compiled in, the
event-loop relay otherwise. One interface for both; the choice is `RelayHub.start`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.relay_loop import CLOSE_LINGER, CLOSE_LINGER_BYTES, Endpoint, LoopRelay
from fastmqtt.session import Session

if TYPE_CHECKING:
    from fastmqtt.fastpath import FastPathHub


STATE_TRACK = 1 << 5  # Engine.export()'s state bit: the server's packets are followed


def make_engine(threads: int) -> Any:
    """The C relay engine, or None where connections stay on the event loop."""
    if NO_EXTENSIONS:
        return None
    from fastmqtt._splice import Engine

    return Engine(threads=threads, linger_seconds=CLOSE_LINGER, linger_bytes=CLOSE_LINGER_BYTES)


# Records of ended connections are taken in batches at most this often: they only feed logs
# and counters (the engine frees its own slots), and one wake-up per connection would cost
# more than the connection itself under churn.
DRAIN_BATCH = 0.02

# (session, bytes client->server, bytes server->client, end reason)
FinishCallback = Callable[[Session, int, int, str], None]


class RelayHub:
    """Owns every established client/server pair of the process until it ends."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_finish: FinishCallback,
        engine: Any = None,
        fast: FastPathHub | None = None,
    ) -> None:
        self.loop = loop
        self.on_finish = on_finish
        self.engine = engine
        self.fast = fast  # its connections end through the same completion eventfd
        self.sessions: dict[int, Session] = {}
        self.drain_v5 = False  # follow MQTT 5 sessions' packets so a drain can say goodbye
        self._loop_relays: dict[int, LoopRelay] = {}
        # session id -> how to say goodbye to it, for the sessions that follow packets
        self._goodbyes: dict[int, Callable[[bytes], None]] = {}
        self._close_reasons: dict[int, str] = {}  # why we asked the engine (it says "killed")
        self._tasks: set[asyncio.Task] = set()
        self._batch: asyncio.TimerHandle | None = None
        self._lingering: set[asyncio.Future[None]] = set()
        if engine is not None:
            loop.add_reader(engine.completions_fd(), self._completions)

    def __len__(self) -> int:
        return len(self.sessions) + (self.fast.live if self.fast is not None else 0)

    def start(
        self,
        session: Session,
        client_sock: Endpoint,
        server_sock: Endpoint,
        client_idle: float,
        server_idle: float,
        to_server: bytes = b"",
        to_client: bytes = b"",
        spliceable: bool = True,
        packets: bool = True,
    ) -> None:
        """Hand both sides over, in this call (adopted transports switch to the relay before
        anything else can read them); ``to_*`` are bytes already read that go out first. Only
        ``spliceable`` pairs (plain sockets both) may go to the C engine. ``packets``: the
        broker's stream is MQTT packets (not WebSocket frames passed through), so a goodbye
        can be said between two of them."""
        self.sessions[session.id] = session
        goodbye = packets and self.drain_v5 and session.protocol_version == 5
        if self.engine is not None and spliceable:
            assert isinstance(client_sock, socket.socket) and isinstance(server_sock, socket.socket)
            self.engine.add(
                session.id,
                client_sock.detach(),
                server_sock.detach(),
                client_idle,
                server_idle,
                to_server,
                to_client,
                track_packets=goodbye,
            )
            if goodbye:
                self._goodbyes[session.id] = functools.partial(self.engine.goodbye, session.id)
            return
        relay = LoopRelay(
            self.loop,
            client_idle,
            server_idle,
            lambda c2s, s2c, reason: self._finished(session.id, c2s, s2c, reason),
        )
        self._loop_relays[session.id] = relay
        if goodbye:
            relay.track_packets()
            self._goodbyes[session.id] = relay.say_goodbye
        relay.start(client_sock, server_sock, to_server, to_client)

    def adopt(self, session: Session, client_fd: int, server_fd: int, state: tuple) -> None:
        """A connection another process's engine relayed (takeover.py): ``state`` is the rest
        of its Engine.export() row; ValueError (fds closed) when the engine refuses it."""
        self.engine.adopt(session.id, client_fd, server_fd, *state)
        self.sessions[session.id] = session
        if state[4] & STATE_TRACK and session.protocol_version == 5:
            self._goodbyes[session.id] = functools.partial(self.engine.goodbye, session.id)

    def forget(self, session_id: int) -> Session | None:
        """A session another process relays now: no record, no line here."""
        self._goodbyes.pop(session_id, None)
        self._close_reasons.pop(session_id, None)
        return self.sessions.pop(session_id, None)

    def counters(self, session: Session) -> tuple[int, int]:
        """Live bytes (client->server, server->client) of an established session."""
        relay = self._loop_relays.get(session.id)
        if relay is not None:
            return relay.counters()
        if self.engine is not None:
            live = self.engine.counters(session.id)
            if live is not None:
                return live
        return 0, 0

    def close(self, session_id: int, reason: str = "killed") -> None:
        relay = self._loop_relays.get(session_id)
        if relay is not None:
            relay.close(reason)
        elif self.engine is not None and session_id in self.sessions:
            self._close_reasons[session_id] = reason
            self.engine.close(session_id)

    async def say_goodbye(self, packet: bytes, rate: float) -> None:
        """Send ``packet`` to every session that can take one, ``rate`` sessions a second."""
        goodbyes = list(self._goodbyes.items())
        batch = max(1, int(rate // 10))
        for start in range(0, len(goodbyes), batch):
            for session_id, say in goodbyes[start : start + batch]:
                if session_id in self._goodbyes:  # not ended meanwhile
                    say(packet)
            await asyncio.sleep(batch / rate)
        if self.fast is not None:
            await self.fast.say_goodbye(packet, rate)

    async def shutdown(self, grace: float, goodbye: bytes | None = None, rate: float = 1) -> None:
        """Let connections end by themselves for up to ``grace`` seconds (saying ``goodbye``
        to those that can take one, ``rate`` a second), then close the rest. The goodbyes stop
        before the engine does: it takes no request once it is stopping."""
        saying = self.loop.create_task(self.say_goodbye(goodbye, rate)) if goodbye else None
        deadline = self.loop.time() + grace
        try:
            while len(self) and self.loop.time() < deadline:
                await asyncio.sleep(min(0.1, max(0.0, deadline - self.loop.time())))
        finally:
            if saying is not None:
                saying.cancel()
                await asyncio.gather(saying, return_exceptions=True)
        for relay in list(self._loop_relays.values()):
            relay.close("shutdown")
        if self._lingering:  # ended pairs whose sockets still read what their peers send
            await asyncio.wait(self._lingering, timeout=CLOSE_LINGER + 0.5)
        if self.engine is not None:
            await self.loop.run_in_executor(None, self.engine.stop, 0.0)
            if self._batch is not None:
                self._batch.cancel()
                self._batch = None
            self._drain_engine()
            self.loop.remove_reader(self.engine.completions_fd())

    def _completions(self) -> None:
        """The engine has records: take them a moment later, with the ones that follow. The
        eventfd is cleared now (the engine signals again only once its queues are empty);
        the reader stays registered (removing and adding it back each time upset uvloop)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.engine.completions_fd(), 8)
        if self._batch is None:
            self._batch = self.loop.call_later(DRAIN_BATCH, self._drain_batch)

    def _drain_batch(self) -> None:
        self._batch = None
        self._drain_engine()

    def take_records(self) -> int:
        """Account for what the engine ended so far, now (stats read the counters next);
        returns how many connections."""
        return self._drain_engine() if self.engine is not None else 0

    def _drain_engine(self) -> int:
        records = self.engine.drain()
        for conn_id, c2s, s2c, _duration, reason, _errno in records:
            asked = self._close_reasons.pop(conn_id, None)
            self._finished(conn_id, c2s, s2c, asked if reason == "killed" and asked else reason)
        # after engine.drain(), which clears the eventfd
        return len(records) + (self.fast.drain() if self.fast is not None else 0)

    def _finished(self, session_id: int, c2s: int, s2c: int, reason: str) -> None:
        relay = self._loop_relays.pop(session_id, None)
        if relay is not None and not relay.closed.done():
            self._lingering.add(relay.closed)
            relay.closed.add_done_callback(self._lingering.discard)
        self._goodbyes.pop(session_id, None)
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self.on_finish(session, c2s, s2c, reason)
