"""Where established connections go: the C engine for plain TCP when it is compiled in, the
event-loop relay otherwise. Both are a ``Relay``; ``RelayHub.start`` picks one per connection.

`RelayHub` is also the one view over every established connection of the process, whichever
path holds it (the event-loop relay, the engine's handed-over pairs, the engine's fast path):
`find` lists them (`ConnInfo`), `ask_to_leave` ends them between two packets (``ctl client``,
``ctl kick``, rebalance and evacuation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from fastmqtt import packets
from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.relay_loop import CLOSE_LINGER, CLOSE_LINGER_BYTES, Endpoint, LoopEngine
from fastmqtt.session import Session

if TYPE_CHECKING:
    from fastmqtt.fastpath import FastPathHub


STATE_TRACK = 1 << 5  # Engine.export()'s state bit: both streams' packets are followed


class Relay(Protocol):
    """Moves the bytes of established client/server pairs, each known by a connection id,
    and reports each end once, with its byte counts, to the callback it was built with."""

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
        """Take both sides over, in this call; ``to_*`` go out first. ``track_packets``:
        follow packet boundaries, so that ``goodbye`` can be said."""

    def close(self, conn_id: int, reason: str = "killed") -> None:
        """End the pair now (the C engine reports it as "killed": RelayHub names it)."""

    def goodbye(self, conn_id: int, packet: bytes) -> bool:
        """End the pair between two packets, ``packet`` (a DISCONNECT, or b"") to the client
        first; False when it cannot (not tracked, or said already)."""

    def counters(self, conn_id: int) -> tuple[int, int] | None:
        """Bytes moved so far (client->server, server->client); None once ended."""

    async def stop(self) -> None:
        """End every pair now (the grace period is over) and release what the relay holds."""


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

FAST_IDS = 1 << 48  # fast-path connection ids start here (_fastpath.FAST_IDS)


@dataclasses.dataclass(frozen=True, slots=True)
class ConnInfo:
    """One established connection as ``find`` sees it now."""

    conn_id: int  # unique in its process (fast-path ids are >= FAST_IDS)
    client_id: str | None
    username: str | None
    protocol_version: int
    frontend: str
    backend: str
    server: str | None
    source: str  # "ip:port" of the client
    since: float  # wall clock (epoch seconds) of the accept
    bytes_in: int  # client -> server so far
    bytes_out: int  # server -> client so far
    path: str  # "fast" (the engine from accept), "engine" (handed over) or "loop"
    clean_start: bool | None
    session_expiry: int | None  # MQTT 5: seconds, when the CONNECT gave one
    tracked: bool  # packet boundaries followed: it can be asked to leave between two packets

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def leave_reason(reason_code: int) -> str:
    """How the connection log names the end of a connection asked to leave."""
    return packets.LEAVE_REASONS.get(reason_code, "asked-to-leave")


class EngineRelay:
    """The C engine (_splice) as a ``Relay``: plain sockets only (their fds are detached).
    Ended connections come back as records through its completions eventfd, taken in
    batches (DRAIN_BATCH); the fast path's records (fastpath.py) come the same way."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: Any,
        on_done: Callable[[int, int, int, str], None],
        fast: FastPathHub | None = None,
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.on_done = on_done  # (connection id, bytes client->server, server->client, reason)
        self.fast = fast
        self._batch: asyncio.TimerHandle | None = None
        loop.add_reader(engine.completions_fd(), self._completions)

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
        assert isinstance(client, socket.socket) and isinstance(server, socket.socket)
        self.engine.add(
            conn_id,
            client.detach(),
            server.detach(),
            client_idle,
            server_idle,
            to_server,
            to_client,
            track_packets=track_packets,
        )

    def adopt(self, conn_id: int, client_fd: int, server_fd: int, state: tuple) -> None:
        """A pair another process's engine relayed (takeover.py): ``state`` is the rest of its
        Engine.export() row; ValueError (fds closed) when the engine refuses it."""
        self.engine.adopt(conn_id, client_fd, server_fd, *state)

    def close(self, conn_id: int, reason: str = "killed") -> None:
        self.engine.close(conn_id)

    def goodbye(self, conn_id: int, packet: bytes) -> bool:
        return bool(self.engine.goodbye(conn_id, packet))

    def counters(self, conn_id: int) -> tuple[int, int] | None:
        return self.engine.counters(conn_id)

    async def stop(self) -> None:
        await self.loop.run_in_executor(None, self.engine.stop, 0.0)
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
        self.take_records()
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
        self.take_records()

    def take_records(self) -> int:
        """Report what the engine ended so far, now; returns how many connections."""
        records = self.engine.drain()
        for conn_id, c2s, s2c, _duration, reason, _errno in records:
            self.on_done(conn_id, c2s, s2c, reason)
        # after engine.drain(), which clears the eventfd
        return len(records) + (self.fast.drain() if self.fast is not None else 0)


class RelayHub:
    """Owns every established client/server pair of the process until it ends, each on the
    ``Relay`` picked for it: the C engine when both sides are plain sockets and the engine
    runs, else the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_finish: FinishCallback,
        engine: Any = None,
        fast: FastPathHub | None = None,
    ) -> None:
        self.loop = loop
        self.on_finish = on_finish
        self.fast = fast  # its connections end through the engine's completion eventfd
        self.sessions: dict[int, Session] = {}
        # both decided at start: whose packets are followed (a goodbye needs it)
        self.drain_v5 = False  # drain_disconnect: MQTT 5 sessions, so a drain can say goodbye
        self.track_all = False  # track_packets: every MQTT session
        self.on_loop = LoopEngine(loop, self._finished)
        self.on_engine = (
            EngineRelay(loop, engine, self._finished, fast) if engine is not None else None
        )
        self._relays: dict[int, Relay] = {}  # session id -> the relay that has it
        self._tracked: set[int] = set()  # the sessions that follow packets (a goodbye can come)
        # why we ended a session (the relays say "killed" or "drained"), until it ends
        self._close_reasons: dict[int, str] = {}

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
        track = self.tracks(session.protocol_version) and packets
        relay: Relay = self.on_engine if self.on_engine and spliceable else self.on_loop
        self._relays[session.id] = relay
        if track:
            self._tracked.add(session.id)
        relay.add(
            session.id,
            client_sock,
            server_sock,
            client_idle,
            server_idle,
            to_server,
            to_client,
            track_packets=track,
        )

    def tracks(self, protocol_version: int) -> bool:
        """Whether a session of that MQTT version follows packet boundaries."""
        v5 = protocol_version & 0x7F == 5
        return protocol_version != 0 and (self.track_all or (self.drain_v5 and v5))

    # -- where is device X? ----------------------------------------------------------------

    async def find(
        self,
        client_id: str | None = None,
        prefix: str | None = None,
        backend: str | None = None,
        server: str | None = None,
        limit: int = 1000,
        client_ids: Collection[str] | None = None,
    ) -> list[ConnInfo]:
        """Established connections whose client id is ``client_id``, or one of
        ``client_ids``, or starts with ``prefix`` (none of them: any), of ``backend`` and its
        ``server`` (names), ``limit`` at most. One pass over the event loop's sessions; the
        engine's fast-path connections are asked of its threads, one query for many ids (no
        Python object per connection)."""
        if server is not None and backend is None:
            raise ValueError("find: a server is named within its backend")
        if (client_id is not None) + (client_ids is not None) + (prefix is not None) > 1:
            raise ValueError("find: by a client id, by client ids or by a prefix, not two")
        wanted = (  # as a dict: a set that keeps the caller's order (the engine's batches)
            {client_id: None} if client_id is not None
            else dict.fromkeys(client_ids) if client_ids is not None
            else None
        )  # fmt: skip
        found = []
        for session in list(self.sessions.values()):
            if len(found) >= limit:
                return found
            if _matches(session, wanted, prefix, backend, server):
                found.append(self._info(session))
        if self.fast is not None and len(found) < limit:
            found += await self.fast.find(wanted, prefix, backend, server, limit - len(found))
        return found

    def _info(self, session: Session) -> ConnInfo:
        bytes_in, bytes_out = session.traffic(*self.counters(session))
        host, port = session.client_addr[:2]
        return ConnInfo(
            conn_id=session.id,
            client_id=session.client_id,
            username=session.username,
            protocol_version=session.protocol_version,
            frontend=session.frontend_name,
            backend=session.backend.name if session.backend is not None else "",
            server=session.server.name if session.server is not None else None,
            source=f"{host}:{port}",
            since=session.wall_start,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            path="loop" if self._relays.get(session.id) is self.on_loop else "engine",
            clean_start=session.clean_start,
            session_expiry=session.session_expiry,
            tracked=session.id in self._tracked,
        )

    async def ask_to_leave(self, conn_ids: Iterable[int], reason_code: int) -> int:
        """End these connections between two packets: MQTT 5 clients get DISCONNECT with
        ``reason_code`` first, older ones are closed between two packets; one that does not
        follow packets is closed at once. Returns how many were asked (ended ones are
        skipped); their log lines say `leave_reason`."""
        reason = leave_reason(reason_code)
        packet = packets.disconnect_v5(reason_code)
        asked = 0
        fast_ids = []
        for conn_id in conn_ids:
            if conn_id >= FAST_IDS:
                fast_ids.append(conn_id)
                continue
            session = self.sessions.get(conn_id)
            if session is None:
                continue
            asked += 1
            if conn_id in self._close_reasons:
                continue  # asked before: under way
            self._close_reasons[conn_id] = reason
            v5 = session.protocol_version & 0x7F == 5
            if not self._goodbye(conn_id, packet if v5 else b""):
                self.close(conn_id, reason)
        if fast_ids and self.fast is not None:
            asked += await self.fast.leave(fast_ids, packet, reason)
        return asked

    def adopt(self, session: Session, client_fd: int, server_fd: int, state: tuple) -> None:
        """A connection another process's engine relayed (takeover.py): ``state`` is the rest
        of its Engine.export() row; ValueError (fds closed) when the engine refuses it."""
        assert self.on_engine is not None
        self.on_engine.adopt(session.id, client_fd, server_fd, state)
        self.sessions[session.id] = session
        self._relays[session.id] = self.on_engine
        if state[4] & STATE_TRACK:  # whatever its version: followed where it came from
            self._tracked.add(session.id)

    def forget(self, session_id: int) -> Session | None:
        """A session another process relays now: no record, no line here."""
        self._relays.pop(session_id, None)
        self._tracked.discard(session_id)
        self._close_reasons.pop(session_id, None)
        return self.sessions.pop(session_id, None)

    def counters(self, session: Session) -> tuple[int, int]:
        """Live bytes (client->server, server->client) of an established session."""
        relay = self._relays.get(session.id)
        live = relay.counters(session.id) if relay is not None else None
        return live if live is not None else (0, 0)

    def close(self, session_id: int, reason: str = "killed") -> None:
        relay = self._relays.get(session_id)
        if relay is not None:
            self._close_reasons[session_id] = reason
            relay.close(session_id, reason)

    def _goodbye(self, session_id: int, packet: bytes) -> bool:
        relay = self._relays.get(session_id)
        if relay is None or session_id not in self._tracked:
            return False
        return relay.goodbye(session_id, packet)

    async def say_goodbye(self, packet: bytes, rate: float) -> None:
        """Send ``packet`` (an MQTT 5 DISCONNECT) to every MQTT 5 session that can take one,
        ``rate`` sessions a second."""
        goodbyes = [
            session_id
            for session_id in self._tracked
            if self.sessions[session_id].protocol_version & 0x7F == 5
        ]
        batch = max(1, int(rate // 10))
        for start in range(0, len(goodbyes), batch):
            for session_id in goodbyes[start : start + batch]:
                if session_id in self._tracked:  # not ended meanwhile
                    self._goodbye(session_id, packet)
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
        await self.on_loop.stop()
        if self.on_engine is not None:
            await self.on_engine.stop()

    def take_records(self) -> int:
        """Account for what the engine ended so far, now (stats read the counters next);
        returns how many connections."""
        return self.on_engine.take_records() if self.on_engine is not None else 0

    def _finished(self, session_id: int, c2s: int, s2c: int, reason: str) -> None:
        self._relays.pop(session_id, None)
        self._tracked.discard(session_id)
        asked = self._close_reasons.pop(session_id, None)
        if asked is not None and reason in ("killed", "drained"):
            reason = asked  # the relays' words for an end we asked for
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self.on_finish(session, c2s, s2c, reason)


def _matches(
    session: Session,
    client_ids: Collection[str] | None,
    prefix: str | None,
    backend: str | None,
    server: str | None,
) -> bool:
    cid = session.client_id
    if client_ids is not None and cid not in client_ids:
        return False
    if prefix is not None and (cid is None or not cid.startswith(prefix)):
        return False
    if backend is not None and (session.backend is None or session.backend.name != backend):
        return False
    return server is None or (session.server is not None and session.server.name == server)
