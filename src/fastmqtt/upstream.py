"""Opening the broker's side of one connection, once a server is chosen and its socket
connected: TLS and WebSocket if the backend asks for them, the PROXY header, the client's
buffered bytes, and the broker's CONNACK read back. One attempt; the retry loop around it is
Backend.open's."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import TYPE_CHECKING

from fastmqtt.deadline import Deadline
from fastmqtt.errors import MalformedPacket, Rejected
from fastmqtt.parse import Connack, inspect_connack
from fastmqtt.proxy_protocol import PP2_TYPE_AUTHORITY, encode_v1, encode_v2
from fastmqtt.streams import SocketStream, Stream, StreamClosed, TransportStream, WsUpstream
from fastmqtt.tls import TLSInfo, client_context, ssl_tlv
from fastmqtt.websocket import HandshakeError

if TYPE_CHECKING:
    from fastmqtt.backend import Backend, Server
    from fastmqtt.config import BackendConfig
    from fastmqtt.session import Session


class HungUp(Exception):
    """The server closed before answering the CONNECT (dying, or not speaking MQTT)."""

    def __init__(self, server: Server) -> None:
        super().__init__(server.name)
        self.server = server


async def open_upstream(
    session: Session,
    sock: socket.socket,
    server: Server,
    backend: Backend,
    hello: bytes,
    client: Stream,
    dst: tuple[str, int],
    mqtt: bool,
) -> tuple[Stream, bytes]:
    """The broker's stream, and what it answered (its CONNACK and any bytes after it) for the
    relay to send the client first. ``hello`` is what the client sent so far (its CONNECT);
    ``dst`` the address it reached. HungUp when the broker closes without a word."""
    upstream = await _wrap(sock, server, backend)
    try:
        header = proxy_header(session, client.tls, dst, backend.config)
        await upstream.write(header + client.wire(hello))
        to_client = b""
        if mqtt:
            to_client = await _read_connack(upstream, server, session, backend)
    except (ConnectionResetError, BrokenPipeError):
        upstream.close()
        raise HungUp(server) from None
    except BaseException:
        upstream.close()
        raise
    if mqtt and not to_client:
        upstream.close()
        raise HungUp(server)
    return upstream, to_client


async def _wrap(sock: socket.socket, server: Server, backend: Backend) -> Stream:
    """TLS if the backend asks for it, WebSocket for passthrough."""
    loop = asyncio.get_running_loop()
    upstream: Stream = SocketStream(loop, sock)
    tls = backend.config.tls
    if tls is not None:
        try:
            upstream = await TransportStream.connect(
                loop,
                sock,
                client_context(tls),
                tls.sni or server.hostname,
                backend.config.timeout_connect,
            )
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            server.counters.connect_errors += 1
            reason = getattr(exc, "reason", None) or "handshake"
            raise Rejected("server-tls-" + str(reason).lower().replace("_", "-")) from None
    if backend.config.ws_backend == "passthrough":
        upstream = WsUpstream(upstream)
    return upstream


def proxy_header(
    session: Session, tls: TLSInfo | None, dst: tuple[str, int], config: BackendConfig
) -> bytes:
    version = config.send_proxy
    if version is None:
        return b""
    src = session.client_addr
    if version == "v1":
        return encode_v1(src, dst)
    return encode_v2(src, dst, _tlvs(session, tls, config))


def _tlvs(session: Session, tls: TLSInfo | None, config: BackendConfig) -> list[tuple[int, bytes]]:
    """PROXY v2 TLVs the backend asked for (``proxy_tlvs``), where there is a value."""
    wanted = config.proxy_tlvs
    tlvs = []
    if "ssl" in wanted and tls is not None:
        tlvs.append(ssl_tlv(tls))
    if "authority" in wanted and tls is not None and tls.sni:
        tlvs.append((PP2_TYPE_AUTHORITY, tls.sni.encode()))
    if "client_id" in wanted and session.client_id:
        tlvs.append((config.proxy_client_id_tlv, session.client_id.encode()))
    return tlvs


async def _read_connack(
    upstream: Stream, server: Server, session: Session, backend: Backend
) -> bytes:
    """Read the broker's first answer; bytes beyond the CONNACK travel on with it."""
    data = bytearray()
    try:
        with Deadline(asyncio.get_running_loop(), backend.config.timeout_server):
            while True:
                chunk = await upstream.read()
                if not chunk:
                    break  # broker closed: forward whatever it said, the relay sees the EOF
                data += chunk
                connack = inspect_connack(data, session.protocol_version)
                if connack is not None:
                    _note_connack(session, server, connack)
                    latency = time.monotonic() - session.inspected_at  # type: ignore[operator]
                    backend.counters.connack_latency.observe(latency)
                    return upstream.wire(bytes(data))
    except TimeoutError:
        server.counters.response_errors += 1
        raise Rejected("server-timeout") from None
    except (StreamClosed, HandshakeError) as exc:
        server.counters.response_errors += 1
        raise Rejected(getattr(exc, "reason", None) or str(exc)) from None
    except MalformedPacket:
        pass  # not ours to judge the broker: relay it, count it
    server.counters.response_errors += 1
    return upstream.wire(bytes(data))


def _note_connack(session: Session, server: Server, connack: Connack) -> None:
    session.connack_code = connack.reason_code
    server.counters.connack_codes[connack.reason_code] += 1
    if connack.assigned_client_identifier and not session.client_id:
        session.client_id = connack.assigned_client_identifier
