"""Frontends: accept, wait for the MQTT CONNECT, reject what is not one, pick a server,
connect, forward the buffered bytes, read the broker's CONNACK, and hand both sockets over."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastmqtt.access import Guard
from fastmqtt.backend import Backend, NoServerAvailable
from fastmqtt.config import FrontendConfig
from fastmqtt.deadline import Deadline
from fastmqtt.errors import MalformedPacket, Refused, Rejected
from fastmqtt.metrics import FrontendCounters
from fastmqtt.parse import Connect, inspect_connect
from fastmqtt.proxy_accept import ProxyRefused, read_header, refuse_header, trusted
from fastmqtt.session import Session
from fastmqtt.streams import (
    WS_FRAMING_ALLOWANCE,
    SocketStream,
    Stream,
    StreamClosed,
    TransportStream,
    WsBridge,
    WsPassthrough,
)
from fastmqtt.tls import ServerTLS, TLSMaterialError
from fastmqtt.upstream import HungUp
from fastmqtt.websocket import (
    HandshakeError,
    accept_response,
    check_upgrade,
    forwarded_request,
    head_end,
    parse_request,
)

if TYPE_CHECKING:
    from fastmqtt.runtime import Runtime

log = logging.getLogger("fastmqtt")

ACCEPT_BATCH = 64  # accepts per wakeup, so one busy listener cannot starve the loop
RESOURCE_BACKOFF = 0.1  # seconds accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(slots=True)
class _Link:
    """One connection while it is routed: where its bytes come from now (a socket, then
    maybe TLS, then maybe WebSocket), the address it reached, and what it is waiting for."""

    client: Stream
    dst: tuple[str, int]  # our address, or the one a trusted PROXY header reports
    phase: str = "inspect"  # names the timeout if inspect_delay runs out


def open_listener(host: str, port: int, reuse_port: bool, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Frontend:
    """One listening address and what happens to the connections it accepts."""

    def __init__(self, config: FrontendConfig, backend: Backend, runtime: Runtime) -> None:
        self.config = config
        self.name = config.name
        self.backend = backend
        self.runtime = runtime  # the loop, the process's limits, the hub, the fast path
        self.counters = FrontendCounters()
        self.sock: socket.socket | None = None
        self.accepting = False
        self._backoff: asyncio.TimerHandle | None = None
        self.guard = Guard(config, runtime.backend_named)  # access rules, rate limits
        self.tls = ServerTLS(config.tls, f"frontend.{config.name}.tls") if config.tls else None

    def release(self, session: Session) -> None:
        """``session`` (accepted here) ended: its per-source slot goes back (Session.ended)."""
        self.guard.release(session)

    def reloaded_tls(self, config: FrontendConfig) -> ServerTLS | None:
        """The TLS contexts of ``config``, built aside for a reload (certificates read again:
        new handshakes use them, established connections keep theirs). Unusable material keeps
        the current ones, logged, and the rest of the reload applies; TLSMaterialError only
        when there are none to keep (the frontend was plain: refusing beats serving plain)."""
        if config.tls is None:
            return None
        try:
            return ServerTLS(config.tls, f"frontend.{config.name}.tls")
        except TLSMaterialError as exc:
            if self.tls is None:
                raise
            log.error("frontend %s: keeping the previous certificates: %s", config.name, exc)
            return self.tls

    def reconfigure(self, config: FrontendConfig, backend: Backend, tls: ServerTLS | None) -> None:
        """A reload kept this frontend's bind: the listening socket stays, the rest is new
        (``tls`` from reloaded_tls)."""
        self.config = config
        self.name = config.name
        self.backend = backend
        self.tls = tls
        self.guard.reconfigure(config)

    # -- accepting ---------------------------------------------------------------------

    def open(self, reuse_port: bool = False, backlog: int = 4096) -> None:
        self.sock = open_listener(self.config.bind_host, self.config.bind_port, reuse_port, backlog)

    @property
    def bound_port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]

    def resume(self) -> None:
        """Watch the listening socket again if limits allow (idempotent)."""
        if self.accepting or self.sock is None or self._backoff is not None:
            return
        fast = self.runtime.fast
        if fast is not None and fast.serves(self):
            fast.listen(self, True)  # the engine's threads accept, and apply the limits
            self.accepting = True
            return
        if not self._below_limits():
            return
        self.accepting = True
        self.runtime.loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def pause(self) -> None:
        """Leave new connections in the kernel's accept backlog."""
        fast = self.runtime.fast
        if fast is not None and fast.serves(self):
            fast.listen(self, False)
        elif self.accepting and self.sock is not None:
            self.runtime.loop.remove_reader(self.sock.fileno())
        self.accepting = False

    def close(self) -> None:
        self.pause()
        if self.runtime.fast is not None:
            self.runtime.fast.remove(self)
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _below_limits(self) -> bool:
        return self.counters.current < self.config.maxconn and self.runtime.below_maxconn()

    def _on_acceptable(self) -> None:
        assert self.sock is not None
        for _ in range(ACCEPT_BATCH):
            if not self._below_limits():
                self.pause()  # resumed by Runtime.session_ended when a slot frees up
                return
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._back_off(exc)
                    return
                continue  # ECONNABORTED and friends: that client is gone, keep accepting
            conn.setblocking(False)
            try:  # a broker's small packets must not wait behind an unacknowledged one (Nagle)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # already reset: nothing to serve
                conn.close()
                continue
            self._spawn(conn, addr)

    def _back_off(self, exc: OSError) -> None:
        """Out of fds or memory: stop accepting for a moment instead of spinning."""
        self.counters.accept_errors += 1
        if self.counters.accept_errors == 1 or self.counters.accept_errors % 1000 == 0:
            log.warning("frontend %s: accept failed (%s), pausing", self.name, exc.strerror)
        self.pause()

        def retry() -> None:
            self._backoff = None
            self.resume()

        self._backoff = self.runtime.loop.call_later(RESOURCE_BACKOFF, retry)

    def _spawn(self, conn: socket.socket, addr: tuple) -> None:
        session = Session(self, (addr[0], addr[1]))
        session.accepted()
        self.runtime.session_opened()
        self.runtime.spawn(self._serve(session, conn))

    # -- one connection ----------------------------------------------------------------

    async def _serve(self, session: Session, conn: socket.socket) -> None:
        link = _Link(SocketStream(self.runtime.loop, conn), conn.getsockname()[:2])
        handed_over = False
        try:
            handed_over = await self._route(session, conn, link)
        except (Rejected, Refused, ProxyRefused) as exc:
            session.end_reason = exc.reason
            self.counters.denied[exc.reason] += 1
        except HungUp:
            session.end_reason = "server-closed"
        except OSError as exc:
            session.end_reason = f"error:{errno.errorcode.get(exc.errno or 0, 'EIO')}"
        finally:
            if not handed_over:
                link.client.close()
                session.ended(0, 0, session.end_reason)
                self.runtime.session_ended(session)

    async def _route(self, session: Session, conn: socket.socket, link: _Link) -> bool:
        data = bytearray()
        connect = await self._receive(session, conn, link, data)
        session.inspected_at = time.monotonic()
        backend = await self.guard.admit(link.client, session, connect) or self.backend  # type: ignore[arg-type]
        session.backend = backend
        try:
            server, upstream, to_client, stick_key = await backend.open(
                session, connect, bytes(data), link.client, link.dst
            )
        except NoServerAvailable:
            raise Rejected("no-server") from None
        session.established(server, stick_key, len(data))  # to_client: the relay counts it
        if self.runtime.fast is not None:
            self.runtime.fast.python_live_changed(server)  # the engine's limits count it
        self.runtime.hub.start(
            session,
            link.client.endpoint(),  # type: ignore[arg-type]
            upstream.endpoint(),  # type: ignore[arg-type]
            client_idle=self.config.timeout_client.for_keepalive(session.keepalive),
            server_idle=backend.config.timeout_server,
            to_client=to_client,
            spliceable=link.client.spliceable and upstream.spliceable,
            packets=connect is not None and upstream.packets,
        )
        return True

    async def _receive(
        self, session: Session, conn: socket.socket, link: _Link, data: bytearray
    ) -> Connect | None:
        """Everything before a server is chosen, within ``inspect_delay``: the PROXY header,
        the TLS handshake, the WebSocket upgrade, the CONNECT."""
        try:
            with Deadline(self.runtime.loop, self.config.inspect_delay):
                link.phase = "proxy-header"
                await self._accept_proxy(session, conn, link)
                self.guard.admit_source(session)
                await self._open_client(session, conn, link)
                link.phase = "inspect"
                if self.config.protocol == "tcp":
                    return None
                connect = await self._inspect(link.client, data)
        except TimeoutError:
            raise Rejected(f"{link.phase}-timeout") from None
        except StreamClosed as exc:
            raise Rejected(str(exc)) from None
        if connect is not None:
            self._note_connect(session, connect)
        return connect

    async def _accept_proxy(self, session: Session, conn: socket.socket, link: _Link) -> None:
        """``accept_proxy``: the client address is the one the trusted balancer reports."""
        if not self.config.accept_proxy:
            return
        loop = self.runtime.loop
        if not trusted(session.client_addr[0], self.config.trusted_proxies):
            await refuse_header(loop, conn)
            return
        header = await read_header(loop, conn)
        if header.src is not None and header.dst is not None:  # LOCAL: the balancer's own
            session.client_addr, link.dst = header.src, header.dst

    async def _open_client(self, session: Session, conn: socket.socket, link: _Link) -> None:
        """TLS, then WebSocket, over the accepted socket, as the frontend says."""
        if self.tls is not None:
            link.phase = "tls-handshake"
            link.client = await self._handshake(conn)
        if self.config.protocol == "ws":
            link.phase = "ws-upgrade"
            link.client = await self._upgrade(session, link.client)

    async def _handshake(self, conn: socket.socket) -> Stream:
        assert self.tls is not None
        loop, timeout = self.runtime.loop, self.config.inspect_delay
        try:
            return await TransportStream.accept(loop, conn, self.tls.context, timeout)
        except ssl.SSLError as exc:  # counted by OpenSSL's reason: no-shared-cipher, ...
            raise Rejected("tls-" + (exc.reason or "error").lower().replace("_", "-")) from None
        except ConnectionAbortedError:  # uvloop's own handshake timeout
            raise Rejected("tls-handshake-timeout") from None
        except ConnectionError:
            raise Rejected("tls-client-closed") from None

    async def _upgrade(self, session: Session, client: Stream) -> Stream:
        """Answer the HTTP upgrade ourselves (both modes: the CONNECT comes only after it)."""
        head = bytearray()
        try:
            while (end := head_end(head)) < 0:
                chunk = await client.read()
                if not chunk:
                    raise Rejected("client-closed-early")
                head += chunk
            request = parse_request(bytes(head[:end]))
            subprotocol = check_upgrade(request, self.config.ws_path, self.config.ws_subprotocols)
        except HandshakeError as exc:
            with contextlib.suppress(OSError):
                await client.write(exc.response())
            raise Rejected(exc.reason) from None
        await client.write(accept_response(request, subprotocol))
        early = bytes(head[end:])
        if self.backend.config.ws_backend == "passthrough":
            forward = forwarded_request(request, session.client_addr[0])
            limit = self.config.max_connect_size + WS_FRAMING_ALLOWANCE
            return WsPassthrough(client, forward, early, limit)
        return WsBridge(client, early)

    async def _inspect(self, client: Stream, data: bytearray) -> Connect | None:
        """Read until a complete CONNECT arrives (None: invalid but forwarded as is)."""
        try:
            while True:
                chunk = await client.read()
                if not chunk:
                    raise Rejected("client-closed-early")
                data += chunk
                connect = inspect_connect(
                    data, self.config.max_connect_size, self.config.allow_bridge
                )
                if connect is not None:
                    return connect
        except MalformedPacket as exc:
            if self.config.reject_invalid:
                self.guard.refuse_malformed(client, exc)  # type: ignore[arg-type]
                raise Rejected(exc.reason) from None
            self.counters.invalid_forwarded[exc.reason] += 1
            return None

    def _note_connect(self, session: Session, connect: Connect) -> None:
        session.client_id = connect.client_id
        session.username = connect.username
        session.protocol_version = connect.protocol_version
        session.keepalive = connect.keepalive
        session.clean_start = connect.clean_start
        if connect.protocol_version == 5:
            session.session_expiry = connect.properties.get("session_expiry_interval")
        self.counters.connects_by_version[connect.protocol_version] += 1
