"""Upgrade without a reconnect: a new fastmqtt process takes over from a running one.

The running process offers its sockets on ``[global] takeover_socket`` (a Unix socket, mode
0600); ``fastmqtt serve lb.toml --takeover PATH`` connects there and is given, over SCM_RIGHTS:

1. the listening sockets of the frontends and of ``[stats]`` (TCP and Unix). The old process
   stops accepting as it sends them and the new one accepts from the same sockets, so no
   client is refused meanwhile (new clients wait in the backlog for a moment);
2. once the new one listens, every connection the C engine relays: both fds, the bytes held
   either way, counters, half-close and packet-boundary state, idle clocks, and the session
   facts its log line and the stats need (frontend, backend, server, client id, user name,
   start time...). The old engine freezes (_splice.Engine.freeze), exports, sends them in
   batches and releases them; the new process adopts each batch as it arrives, as a session
   of its own whose log line is written when it ends, with the bytes of its whole life.

Connections on the old process's event loop (TLS, WebSocket, and every connection without the
compiled engine) stay there and drain as SIGTERM drains them; fast-path connections still in
setup, or waiting for a goodbye, are closed ("shutdown": their clients reconnect at once, to
the new process). Then the old process exits.

The stream is frames: kind (u8), payload length (u32), fd count (u16), fds attached to the
frame's first byte. It comes from another process: every length is checked against a bound
before anything is read or allocated, and a record's values are checked again by the engine.
``HELLO`` names the connection formats the new process reads; the old one picks its own if it
is among them, or none: then the listeners still move and its connections drain (a version
that cannot read the other's handover refuses it cleanly).

    new -> old  HELLO  {"magic", "formats": [..], "pid", "version"}
    old -> new  OFFER  {"format": n | null, "listeners": [{"kind", "name", "bind"}..]} + fds
    new -> old  READY  {}                                   (listening: send the connections)
    old -> new  CONNS  records, 2 fds each (client, server)
    old -> new  DONE   {"moved", "draining", "closed", "stopped_at"}
    new -> old  ACK    {"adopted"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastmqtt import __version__
from fastmqtt.config import StatsSocketConfig
from fastmqtt.metrics import FrontendCounters
from fastmqtt.session import Session
from fastmqtt.stats.unix_listener import UnixListener

if TYPE_CHECKING:
    from fastmqtt.runtime import Runtime
    from fastmqtt.stats.http import StatsServer

log = logging.getLogger("fastmqtt.takeover")

MAGIC = "fastmqtt-takeover"
FORMAT = 2  # the connection records below; bump on any change to them (2: both streams'
# packet-boundary state, facts as an array; 1 carried the server's state only)
FORMAT_ENV = "FASTMQTT_TAKEOVER_FORMAT"  # tests: pretend another format

HELLO, OFFER, READY, CONNS, DONE, ACK = range(1, 7)
HEAD = struct.Struct("!BIH")  # kind, payload length, fd count
# bytes_in, bytes_out, held for the server, held for the client, state bits, client idle,
# server idle, client quiet, server quiet, then for the client's stream and the server's:
# packet bytes left, length bytes read; age, facts length
RECORD = struct.Struct("!QQIIIddddIBIBdI")
MAX_HELD = (1 << 24) + 262144  # what one direction of the engine can hold (_splice MAX_HELD)
MAX_FACTS = 1 << 20  # two MQTT strings of 65535 characters, as JSON
MAX_CONTROL = 1 << 20  # HELLO, OFFER, READY, DONE, ACK
MAX_BATCH_BYTES = 4 << 20  # a CONNS frame holds records up to this ...
MAX_BATCH = 120  # ... and at most this many (2 fds each: SCM_RIGHTS takes 253)
MAX_PAYLOAD = 2 * MAX_HELD + MAX_FACTS + RECORD.size + MAX_BATCH_BYTES
MAX_FDS = 2 * MAX_BATCH + 16
STEP_TIMEOUT = 10.0  # seconds for any one frame
START_TIMEOUT = 60.0  # seconds the new process may take to start listening
SETUP_WAIT = 2.0  # seconds the old process waits for event-loop setups to reach the engine


class TakeoverError(Exception):
    """The other process broke the protocol or went away."""


def worker_path(path: str, index: int) -> str:
    """Where worker ``index`` of a supervisor offers its own listeners and connections."""
    return f"{path}.{index}"


# ---------------------------------------------------------------- frames


def send_frame(sock: socket.socket, kind: int, payload: bytes, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    head = HEAD.pack(kind, len(payload), len(fds))
    sent = socket.send_fds(sock, [head], list(fds)) if fds else 0
    sock.sendall(head[sent:] + payload)


def send_json(sock: socket.socket, kind: int, value: Any, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    send_frame(sock, kind, json.dumps(value).encode(), fds)


def recv_frame(
    sock: socket.socket, *kinds: int, limit: int = MAX_CONTROL
) -> tuple[int, bytes, list[int]]:
    """One frame of one of ``kinds``: (kind, payload, fds). The fds are ours to close."""
    head, fds, flags, _ = socket.recv_fds(sock, HEAD.size, MAX_FDS)
    try:
        if not head:
            raise TakeoverError("the other process closed the handover")
        if flags & socket.MSG_CTRUNC:
            raise TakeoverError("too many file descriptors in one frame")
        head += _recv_exactly(sock, HEAD.size - len(head))
        kind, length, nfds = HEAD.unpack(head)
        if kind not in kinds or length > limit or nfds != len(fds):
            raise TakeoverError(f"unexpected frame (kind {kind}, {length} bytes, {nfds} fds)")
        return kind, _recv_exactly(sock, length), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def recv_json(sock: socket.socket, want: int) -> dict[str, Any]:
    _, payload, fds = recv_frame(sock, want)
    for fd in fds:
        os.close(fd)
    return _json_object(payload)


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        raise TakeoverError("a control frame is not JSON") from None
    if not isinstance(value, dict):
        raise TakeoverError("a control frame is not a JSON object")
    return value


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise TakeoverError("the other process closed the handover")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def formats_read() -> list[int]:
    """The connection formats this process can adopt (none without the C engine)."""
    from fastmqtt._accel import NO_EXTENSIONS

    if NO_EXTENSIONS:
        return []
    return [int(os.environ.get(FORMAT_ENV, FORMAT))]


# ---------------------------------------------------------------- connection records


@dataclass(slots=True)
class Moved:
    """One connection of the handover, as the stream carries it."""

    state: tuple  # Engine.adopt()'s arguments after the fds
    facts: dict[str, Any]


def pack_record(row: tuple, facts: dict[str, Any]) -> bytes:
    """An Engine.export() row (without handle, id, kind and fds) and its session facts (a
    JSON array in _FACT_TYPES' order: no keys to write and read 9,000 times)."""
    c2s, s2c, to_server, to_client, *clocks_and_packets = row
    blob = _ENCODER.encode([facts[key] for key in _FACT_TYPES]).encode()
    head = RECORD.pack(c2s, s2c, len(to_server), len(to_client), *clocks_and_packets, len(blob))
    return head + to_server + to_client + blob


def unpack_records(payload: bytes, count: int) -> list[Moved]:
    """``count`` records filling ``payload`` exactly; TakeoverError on anything else."""
    out = []
    view = memoryview(payload)
    at = 0
    for _ in range(count):
        if len(view) - at < RECORD.size:
            raise TakeoverError("a connection record is cut short")
        c2s, s2c, n_server, n_client, *clocks_and_packets, n_facts = RECORD.unpack_from(view, at)
        at += RECORD.size
        if n_server > MAX_HELD or n_client > MAX_HELD or n_facts > MAX_FACTS:
            raise TakeoverError("a connection record is larger than any the engine makes")
        if len(view) - at < n_server + n_client + n_facts:
            raise TakeoverError("a connection record is cut short")
        to_server = bytes(view[at : at + n_server])
        at += n_server
        to_client = bytes(view[at : at + n_client])
        at += n_client
        facts = _facts(bytes(view[at : at + n_facts]))
        at += n_facts
        out.append(Moved((c2s, s2c, to_server, to_client, *clocks_and_packets), facts))
    if at != len(view):
        raise TakeoverError("bytes after the last connection record")
    return out


_FACT_TYPES: dict[str, tuple[type, ...]] = {
    "frontend": (str,),
    "backend": (str,),
    "server": (str, type(None)),
    "ip": (str,),
    "port": (int,),
    "client_id": (str, type(None)),
    "username": (str, type(None)),
    "version": (int,),
    "keepalive": (int,),
    "connack": (int, type(None)),
    "wall_start": (float, int),
    "wait_ms": (int,),
    "connect_ms": (int,),
    "routed_in": (int,),
    "stick_key": (str, type(None)),
}


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _facts(blob: bytes) -> dict[str, Any]:
    try:
        values = json.loads(blob)
    except ValueError:
        raise TakeoverError("session facts are not JSON") from None
    if not isinstance(values, list) or len(values) != len(_FACT_TYPES):
        raise TakeoverError("session facts are not as many as expected")
    for (key, types), value in zip(_FACT_TYPES.items(), values, strict=True):
        kind = type(value)  # exact types: JSON makes no subclasses, and a bool is no int here
        if kind not in types:
            raise TakeoverError(f"session fact {key!r} has the wrong type")
        if kind is int and not -1 <= value < 1 << 63:
            raise TakeoverError(f"session fact {key!r} is out of range")
    return dict(zip(_FACT_TYPES, values, strict=True))


def facts_of(session: Session) -> dict[str, Any]:
    """What the new process needs to log and count a session it adopts."""

    def ms(t: float | None) -> int:
        return -1 if t is None else max(0, int((t - session.accepted_at) * 1000))

    return {
        "frontend": session.frontend_name,
        "backend": session.backend.name if session.backend is not None else "",
        "server": session.server.name if session.server is not None else None,
        "ip": session.client_addr[0],
        "port": session.client_addr[1],
        "client_id": session.client_id,
        "username": session.username,
        "version": session.protocol_version,
        "keepalive": session.keepalive,
        "connack": session.connack_code,
        "wall_start": session.wall_start,
        "wait_ms": ms(session.inspected_at),
        "connect_ms": ms(session.connected_at),
        "routed_in": session.routed_in,
        "stick_key": session.stick_key,
    }


# ---------------------------------------------------------------- the old process


class _OfferSocket:
    """``takeover_socket``: a Unix socket that hands over to one asking process at a time
    (``_run`` does the handover on the accepted connection)."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.loop = loop
        self.listener: UnixListener | None = None
        self._task: asyncio.Task | None = None
        self.listen()

    def listen(self) -> None:
        self.listener = UnixListener(StatsSocketConfig(self.path))
        self.listener.sock.setblocking(False)
        self.loop.add_reader(self.listener.sock.fileno(), self._accept)

    def close(self) -> None:
        if self.listener is not None:
            self.loop.remove_reader(self.listener.sock.fileno())
            self.listener.sock.close()
            self.listener.remove()
            self.listener = None

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.sock.accept()
        except OSError:
            return
        if self._task is not None:  # one handover at a time
            conn.close()
            return
        self._task = self.loop.create_task(self._run(conn))

    async def _run(self, conn: socket.socket) -> None:
        raise NotImplementedError


def _stats_listeners(stats: StatsServer | None) -> tuple[list[dict[str, Any]], list[int]]:
    """The stats port and admin socket as OFFER lists them, and their fds."""
    listeners: list[dict[str, Any]] = []
    fds: list[int] = []
    if stats is not None and stats.sock is not None:
        listeners.append({"kind": "stats", "name": "stats", "bind": None})
        fds.append(stats.sock.fileno())
    if stats is not None and stats.unix is not None:
        listeners.append({"kind": "stats_unix", "name": stats.unix.path, "bind": None})
        fds.append(stats.unix.sock.fileno())
    return listeners, fds


class Offer(_OfferSocket):
    """The running process's side: listens on ``takeover_socket`` and hands everything over
    to the first process that asks, then calls ``done`` (which drains the rest and exits)."""

    def __init__(self, runtime: Runtime, path: str, done: Callable[[], None]) -> None:
        self.runtime = runtime
        self.done = done
        self._frozen = False  # this process's engine is frozen: what it relayed moves or ends
        self._unsent = 0  # frozen connections not handed over (yet)
        super().__init__(path, runtime.loop)

    async def _run(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(STEP_TIMEOUT)
            try:
                handed_over = await self._handover(conn)
            except (OSError, TakeoverError) as exc:
                log.error("takeover failed: %s", exc)
                handed_over = await self._failed()
        if not handed_over:  # keep serving, and offer again
            self._task = None
            return
        self._let_go()
        self.done()

    async def _failed(self) -> bool:
        """After a handover broke off (the new process died, or broke the protocol): True
        when this process must drain, False when it serves on as before."""
        runtime = self.runtime
        if self.listener is not None:
            return False  # nothing was given
        if not self._frozen:  # nothing moved yet: serve on (alongside it, if it lives)
            for fe in runtime.frontends:
                fe.resume()
            self.listen()
            log.warning("takeover: no connection was handed over: serving on")
            return False
        if runtime.engine is not None:
            # a frozen engine cannot relay again (its pipes were read out): what was not
            # sent ends now rather than waiting frozen for the grace; clients reconnect at once
            await self._call(runtime.engine.stop, 0.0)
            runtime.hub.take_records()  # their records may also have been taken meanwhile
            log.warning("takeover: %d connections not handed over were closed", self._unsent)
        return True

    def _let_go(self) -> None:
        """Handed over: the new process serves the listeners and the stats port."""
        runtime = self.runtime
        runtime.stop_accepting()
        if runtime.stats is not None:
            if runtime.stats.unix is not None:
                runtime.stats.unix.handed_over()
            runtime.stats.close()
            runtime.stats = None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.runtime.loop.run_in_executor(None, fn, *args)

    async def _handover(self, conn: socket.socket) -> bool:
        """Returns True once the listeners were given (this process then drains)."""
        runtime = self.runtime
        hello = await self._call(recv_json, conn, HELLO)
        if hello.get("magic") != MAGIC or not isinstance(hello.get("formats"), list):
            raise TakeoverError("not a fastmqtt takeover request")
        pid = hello.get("pid")
        ours = int(os.environ.get(FORMAT_ENV, FORMAT))
        fmt = ours if ours in hello["formats"] else None
        stopped_at = time.time()
        listeners, fds = self._listeners()
        log.info(
            "takeover by pid %s (fastmqtt %s): stopped accepting, handing over %d listeners",
            pid,
            hello.get("version"),
            len(fds),
        )
        await self._call(send_json, conn, OFFER, {"format": fmt, "listeners": listeners}, fds)
        self.close()  # the new process offers the next takeover
        if fmt is None:
            log.warning(
                "takeover: pid %s reads connection formats %s, this process writes %d: "
                "connections are not handed over, %d drain",
                pid,
                hello["formats"],
                ours,
                len(runtime.hub),
            )
            return True
        await self._call(_recv_ready, conn)
        moved, closed = await self._send_connections(conn)
        draining = len(runtime.hub)
        done = {"moved": moved, "draining": draining, "closed": closed, "stopped_at": stopped_at}
        await self._call(send_json, conn, DONE, done)
        ack = await self._call(recv_json, conn, ACK)
        log.info(
            "takeover: %d connections handed over to pid %s (%s adopted) in %.0f ms; "
            "%d on the event loop drain (TLS, WebSocket); %d closed in setup",
            moved,
            pid,
            ack.get("adopted"),
            (time.time() - stopped_at) * 1000,
            draining,
            closed,
            extra={"moved": moved, "draining": draining, "closed": closed},
        )
        return True

    def _listeners(self) -> tuple[list[dict[str, Any]], list[int]]:
        runtime = self.runtime
        listeners, fds = [], []
        for fe in runtime.frontends:
            if fe.sock is not None:
                fe.pause()
                bind = [fe.config.bind_host, fe.config.bind_port]
                listeners.append({"kind": "frontend", "name": fe.name, "bind": bind})
                fds.append(fe.sock.fileno())
        stats_listeners, stats_fds = _stats_listeners(runtime.stats)
        return listeners + stats_listeners, fds + stats_fds

    async def _send_connections(self, conn: socket.socket) -> tuple[int, int]:
        """Freeze the engine, send what it relays, release what was sent: (moved, closed)."""
        runtime, hub = self.runtime, self.runtime.hub
        deadline = runtime.loop.time() + SETUP_WAIT
        while runtime.setting_up() and runtime.loop.time() < deadline:
            await asyncio.sleep(0.01)  # event-loop setups about to hand a pair to the engine
        engine = runtime.engine
        if engine is None:
            return 0, 0
        engine.freeze()
        self._frozen = True
        rows = engine.export()
        self._unsent = len(rows)
        closed = hub.take_records()  # ended at the freeze (in setup, saying goodbye): logged
        moved = 0
        # each batch goes as soon as it is built: the new process adopts one while we build
        # the next (building and adopting a record cost about the same)
        for payload, fds, handles in self._batches(rows):
            await self._call(send_frame, conn, CONNS, payload, fds)
            for handle, session in handles:  # the other process holds them now
                engine.release(handle)
                if session is not None:
                    hub.forget(session.id)
                    runtime.session_moved(session)
            moved += len(handles)
            self._unsent -= len(handles)
        return moved, closed

    def _batches(
        self, rows: list[tuple]
    ) -> Iterator[tuple[bytes, list[int], list[tuple[int, Session | None]]]]:
        """Engine.export() rows as CONNS frames: (payload, fds, [(handle, event-loop session
        or None for a fast-path connection)])."""
        runtime, hub = self.runtime, self.runtime.hub
        payload, fds, handles = bytearray(), [], []
        for handle, conn_id, fast, cfd, sfd, *state in rows:
            if fast:
                assert runtime.fast is not None
                session = runtime.fast.session_of(runtime.fast.c.facts(handle))
                if session.backend is not None:
                    session.stick_key = session.backend.stick_key(session)
                owned = None
            else:
                session = owned = hub.sessions.get(conn_id)
                if session is None:
                    continue  # not ours to move (cannot happen): closed at stop()
            payload += pack_record(tuple(state), facts_of(session))
            fds += [cfd, sfd]
            handles.append((handle, owned))
            if len(handles) == MAX_BATCH or len(payload) >= MAX_BATCH_BYTES:
                yield bytes(payload), fds, handles
                payload, fds, handles = bytearray(), [], []
        if handles:
            yield bytes(payload), fds, handles


def _recv_ready(conn: socket.socket) -> None:
    conn.settimeout(START_TIMEOUT)
    recv_json(conn, READY)
    conn.settimeout(STEP_TIMEOUT)


# ---------------------------------------------------------------- the new process


class Incoming:
    """The new process's side, in two steps around Runtime.start(): ``listeners`` (before it:
    the sockets to serve on), ``connections`` (after it: adopt what the engine relayed)."""

    def __init__(self, path: str, workers: int | None = None) -> None:
        self.path = path
        self.workers = workers  # a supervisor asks for its workers' sake
        self.sock: socket.socket | None = None
        self.format: int | None = None
        self.sockets: list[tuple[dict[str, Any], socket.socket]] = []

    def listeners(self, runtime: Runtime) -> bool:
        """Ask the running process; give its listening sockets to ``runtime``'s frontends and
        stats server. False (logged) when there is no running process to take over from."""
        if not self.ask():
            return False
        self._place(runtime)
        return True

    def ask(self) -> bool:
        """Connect, say HELLO, take the OFFER's sockets into ``sockets``; False (logged) when
        nothing offers at ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(STEP_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            log.warning("takeover: nothing to take over at %s (%s): starting afresh",
                        self.path, exc.strerror)  # fmt: skip
            return False
        self.sock = sock
        hello = {"magic": MAGIC, "formats": formats_read(), "pid": os.getpid(),
                 "version": __version__, "workers": self.workers}  # fmt: skip
        send_json(sock, HELLO, hello)
        _, payload, fds = recv_frame(sock, OFFER)
        try:
            offer = json.loads(payload)
            listeners = offer["listeners"]
            if not isinstance(listeners, list) or len(listeners) != len(fds):
                raise TakeoverError("the listeners do not match their sockets")
            fmt = offer["format"]
            self.format = fmt if isinstance(fmt, int) and fmt in formats_read() else None
        except (ValueError, KeyError, TypeError, TakeoverError):
            for fd in fds:
                os.close(fd)
            raise TakeoverError("an unreadable offer") from None
        self.sockets = [
            (entry, socket.socket(fileno=fd)) for entry, fd in zip(listeners, fds, strict=True)
        ]
        return True

    def _place(self, runtime: Runtime) -> None:
        by_bind = {}
        for entry, sock in self.sockets:
            sock.setblocking(False)
            if isinstance(entry, dict) and entry.get("kind") == "frontend":
                bind = entry.get("bind")
                by_bind[tuple(bind) if isinstance(bind, list) else None] = sock
                by_bind.setdefault(entry.get("name"), sock)  # type: ignore[call-overload]
            elif isinstance(entry, dict) and entry.get("kind") in ("stats", "stats_unix"):
                runtime.inherited[entry["kind"]] = sock
        used = set()
        for fe in runtime.frontends:
            sock = by_bind.get((fe.config.bind_host, fe.config.bind_port))
            if sock is None or sock in used:
                sock = by_bind.get(fe.name)
            if sock is not None and sock not in used:
                fe.sock = sock
                used.add(sock)
        inherited = set(runtime.inherited.values())
        for entry, sock in self.sockets:
            if sock not in used and sock not in inherited:
                log.info("takeover: listener %s is not in this config: closed", entry)
                sock.close()
        log.info("takeover: took %d listening sockets", len(used) + len(inherited))

    def connections(self, runtime: Runtime) -> None:
        """Adopt every connection the old engine relayed (blocking: the handover is short,
        and this process's engine threads serve meanwhile)."""
        sock = self.sock
        if sock is None:
            return
        with sock:
            if self.format is None:
                log.warning(
                    "takeover: connection formats differ (this process reads %s): the old "
                    "process drains its connections",
                    formats_read(),
                )
                return
            send_json(sock, READY, {})
            adopted = 0
            started = time.time()
            while True:
                kind, payload, fds = recv_frame(sock, CONNS, DONE, limit=MAX_PAYLOAD)
                if kind == DONE:
                    for fd in fds:
                        os.close(fd)
                    done = _json_object(payload)
                    break
                adopted += self._adopt(runtime, payload, fds)
            send_json(sock, ACK, {"adopted": adopted})
        stopped_at = done.get("stopped_at")
        took = time.time() - stopped_at if isinstance(stopped_at, float) else float("nan")
        log.info(
            "takeover: adopted %d connections in %.0f ms (from the old process's last accept; "
            "receiving took %.0f ms); %s drain in the old process",
            adopted,
            took * 1000,
            (time.time() - started) * 1000,
            done.get("draining"),
            extra={"adopted": adopted, "takeover_ms": round(took * 1000, 1)},
        )

    def _adopt(self, runtime: Runtime, payload: bytes, fds: list[int]) -> int:
        try:
            if len(fds) % 2:
                raise TakeoverError("an odd number of sockets in a batch")
            records = unpack_records(payload, len(fds) // 2)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        adopted = 0
        for i, moved in enumerate(records):
            session = session_from(runtime, moved.facts, moved.state[-1])
            try:
                runtime.adopt(session, fds[2 * i], fds[2 * i + 1], moved.state)
            except ValueError as exc:  # the engine refused the state (and closed the fds)
                log.error("takeover: connection of %s:%s refused: %s", *session.client_addr, exc)
                continue
            adopted += 1
        return adopted


# ---------------------------------------------------------------- supervisors (workers > 1)


class SupervisorOffer(_OfferSocket):
    """A running supervisor's side: on ``takeover_socket`` it gives the stats listeners to a
    new supervisor, whose worker N then takes the listeners and connections of our worker N
    (each offers them on ``worker_path``). Once the new supervisor's workers are ready, ours
    that were not taken over drain (``leftover``), and ``done`` is called: this supervisor
    stops restarting workers and exits when the last one has."""

    def __init__(
        self,
        path: str,
        stats: StatsServer | None,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[bool], None],
        leftover: Callable[[int], None],
    ) -> None:
        self.stats = stats
        self.done = done  # True: handed over; False: it broke off, keep supervising
        self.leftover = leftover  # drain our workers from this index on (no new one took them)
        super().__init__(path, loop)

    @property
    def busy(self) -> bool:
        """A handover is under way (the supervisor waits for it before exiting)."""
        return self._task is not None and not self._task.done()

    async def _run(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(STEP_TIMEOUT)
            try:
                await self._handover(conn)
            except (OSError, TakeoverError) as exc:
                log.error("takeover of the workers failed: %s; supervising on", exc)
                self.done(False)
                if self.listener is None:
                    self.listen()
                self._task = None
                return
        self.done(True)

    async def _handover(self, conn: socket.socket) -> None:
        call = self.loop.run_in_executor
        hello = await call(None, recv_json, conn, HELLO)
        workers = hello.get("workers")
        if hello.get("magic") != MAGIC or not isinstance(workers, int) or workers < 1:
            raise TakeoverError("not a fastmqtt takeover request from a supervisor")
        stats = self.stats
        listeners, fds = _stats_listeners(stats)
        log.info("takeover by supervisor pid %s: its workers take over ours", hello.get("pid"))
        self.done(True)  # from now on, a worker of ours that exits has handed over
        await call(None, send_json, conn, OFFER, {"format": None, "listeners": listeners}, fds)
        self.close()
        if stats is not None and stats.unix is not None:
            stats.unix.handed_over()  # the new supervisor serves this path: never remove it
        await call(None, _recv_ready, conn)  # every new worker serves
        self.leftover(workers)
        if stats is not None:
            stats.close()
        log.info("takeover: handed over to supervisor pid %s", hello.get("pid"))


def take_stats(path: str, workers: int) -> tuple[Incoming | None, dict[str, socket.socket]]:
    """A new supervisor's first step: the running supervisor's stats listeners (for its
    StatsServer), and the handover to answer READY on once the workers serve; (None, {})
    (logged) when nothing offers at ``path`` or it failed."""
    incoming = Incoming(path, workers)
    try:
        if not incoming.ask():
            return None, {}
    except (OSError, TakeoverError) as exc:
        log.error("takeover from %s failed, starting afresh: %s", path, exc)
        return None, {}
    inherited = {}
    for entry, sock in incoming.sockets:
        if isinstance(entry, dict) and entry.get("kind") in ("stats", "stats_unix"):
            inherited[entry["kind"]] = sock
        else:
            sock.close()
    return incoming, inherited


def workers_serve(incoming: Incoming) -> None:
    """A new supervisor whose workers all serve: the old one lets go of the rest."""
    if incoming.sock is not None:
        with incoming.sock:
            send_json(incoming.sock, READY, {})


def session_from(runtime: Runtime, facts: dict[str, Any], age: float) -> Session:
    """The Session of an adopted connection, as if this process had accepted it ``age``
    seconds ago (the log line's times and the start are the old process's)."""
    fe = next((fe for fe in runtime.frontends if fe.name == facts["frontend"]), None)
    session = Session(fe or _Departed(facts["frontend"]), (facts["ip"], facts["port"]))
    session.accepted_at = time.monotonic() - max(0.0, age)
    session.wall_start = float(facts["wall_start"])
    for name, ms in (("inspected_at", facts["wait_ms"]), ("connected_at", facts["connect_ms"])):
        setattr(session, name, None if ms < 0 else session.accepted_at + ms / 1000)
    backend = session.backend = runtime.backends.get(facts["backend"])
    if backend is not None and facts["server"] is not None:
        session.server = next((s for s in backend.servers if s.name == facts["server"]), None)
    session.client_id = facts["client_id"]
    session.username = facts["username"]
    session.protocol_version = facts["version"]
    session.keepalive = facts["keepalive"]
    session.connack_code = facts["connack"]
    session.routed_in = facts["routed_in"]
    session.stick_key = facts["stick_key"]
    return session


class _Departed:
    """The frontend of an adopted session that this process's config does not have: its
    counters go nowhere, it holds no per-source limit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters = FrontendCounters()

    def release(self, session: Session) -> None:
        pass


def close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
