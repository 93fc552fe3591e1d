"""Where a connection's MQTT bytes come from while it is routed: a plain socket, a TLS
transport, or WebSocket framing over either; the same for the broker's side.

The listener reads the CONNECT, balances, sticks and reads the CONNACK through this one
interface, so all of that works the same on every transport. At hand-over each stream gives the
relay an ``Endpoint``; only a plain socket on both sides lets the C engine splice.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from fastmqtt.relay_loop import CLOSE_LINGER, Adopted, Endpoint, Framed
from fastmqtt.tls import TLSInfo, describe
from fastmqtt.websocket import (
    BridgeCodec,
    FrameDecoder,
    encode_frame,
    head_end,
    parse_response_status,
)
from fastmqtt.ws_spec import OP_BINARY

RECV_SIZE = 65536
READER_LIMIT = 256 * 1024  # bytes a TLS transport may buffer before it stops reading
# Raw bytes a passthrough client may send before its CONNECT is complete, beyond
# max_connect_size: frame headers (2 to 14 bytes each) and control frames (pings).
WS_FRAMING_ALLOWANCE = 4096
CONNECT_TOO_LARGE = "ws-connect-too-large"  # the end reason when it sends more


class StreamClosed(Exception):
    """The peer ended the stream in a way that is not plain EOF (e.g. a WebSocket close)."""


class Stream:
    """MQTT bytes in (``read``) and out (``write``) during routing."""

    spliceable = False
    packets = True  # what it relays is MQTT packets (not frames passed through untouched)
    tls: TLSInfo | None = None

    async def read(self) -> bytes:
        """The next MQTT bytes; b"" at end of stream."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    def wire(self, data: bytes) -> bytes:
        """The bytes to relay to the other side, given the MQTT bytes read so far: the same
        bytes, except where frames are forwarded untouched (WebSocket passthrough)."""
        return data

    def endpoint(self) -> Endpoint:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # socket-like last words (access.send_last: a refusal CONNACK, then FIN), without waiting
    def send(self, data: bytes) -> int:
        raise NotImplementedError

    def shutdown(self, how: int) -> None:
        raise NotImplementedError


class SocketStream(Stream):
    """A plain TCP socket, read with sock_recv so it can still be handed to the C engine."""

    spliceable = True

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock

    async def read(self) -> bytes:
        try:  # a client's CONNECT is usually here already: skip the wait for readiness
            return self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return await self.loop.sock_recv(self.sock, RECV_SIZE)

    async def write(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    def endpoint(self) -> Endpoint:
        return self.sock

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)


class _Reader(asyncio.Protocol):
    """Buffers what a transport receives until TransportStream.read takes it, or until the
    relay takes the transport over with what is still here (relay_loop.Buffered)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False
        self.lost: tuple[Exception | None] | None = None  # (exc,) once connection_lost came
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None  # set while the write buffer is full
        self.successor: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READER_LIMIT and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self.ended = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.successor is not None:  # uvloop's TLS transport bound this call before the
            self.successor.connection_lost(exc)  # relay took the transport over
            return
        self.ended = True
        self.lost = (exc,)
        self._wake()
        self.resume_writing()

    def hand_over(self, successor: asyncio.Protocol) -> None:
        """The relay took the transport over (relay_loop.Buffered)."""
        self.successor = successor
        data = self.take()
        if data:
            successor.data_received(data)
        if self.lost is not None:
            successor.connection_lost(self.lost[0])
        elif self.ended:
            successor.eof_received()

    def pause_writing(self) -> None:
        if self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def take(self) -> bytes:
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


class TransportStream(Stream):
    """A TLS connection (uvloop's SSL transport) during routing."""

    def __init__(self, transport: asyncio.Transport, reader: _Reader) -> None:
        self.transport = transport
        self.reader = reader
        self.tls = describe(transport.get_extra_info("ssl_object"))

    @classmethod
    async def accept(
        cls,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        context: ssl.SSLContext,
        timeout: float,
    ) -> TransportStream:
        """TLS server handshake on an accepted socket (which the transport then owns)."""
        reader = _Reader()
        transport, _ = await loop.connect_accepted_socket(
            lambda: reader, sock, ssl=context, ssl_handshake_timeout=timeout,
            ssl_shutdown_timeout=CLOSE_LINGER,
        )  # fmt: skip
        return cls(transport, reader)

    @classmethod
    async def connect(
        cls,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        context: ssl.SSLContext,
        server_hostname: str,
        timeout: float,
    ) -> TransportStream:
        """TLS client handshake on a connected socket (towards a broker)."""
        reader = _Reader()
        transport, _ = await loop.create_connection(
            lambda: reader, sock=sock, ssl=context, server_hostname=server_hostname,
            ssl_handshake_timeout=timeout, ssl_shutdown_timeout=CLOSE_LINGER,
        )  # fmt: skip
        return cls(transport, reader)

    async def read(self) -> bytes:
        reader = self.reader
        while not reader.buffer and not reader.ended:
            reader.waiter = asyncio.get_running_loop().create_future()
            try:
                await reader.waiter
            finally:
                reader.waiter = None
        self.transport.resume_reading()
        return reader.take()

    async def write(self, data: bytes) -> None:
        """Write, and wait while the transport's buffer is above its high-water mark (a peer
        that does not read holds us to one buffer, not to all we would answer it)."""
        self.transport.write(data)
        if self.reader.drained is not None:
            await asyncio.shield(self.reader.drained)

    def endpoint(self) -> Endpoint:
        return Adopted(self.transport, self.reader)

    def close(self) -> None:
        self.transport.close()

    def send(self, data: bytes) -> int:
        self.transport.write(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        pass  # TLS has no half-close; the close that follows sends close_notify


class Layered(Stream):
    """A stream over another one (WebSocket framing): closing and TLS facts pass through."""

    def __init__(self, inner: Stream) -> None:
        self.inner = inner
        self.tls = inner.tls

    def close(self) -> None:
        self.inner.close()

    def send(self, data: bytes) -> int:
        """MQTT bytes as one binary frame from the server side (both modes: the client
        got our 101, so it reads frames from us)."""
        return self.inner.send(encode_frame(OP_BINARY, data))

    def shutdown(self, how: int) -> None:
        self.inner.shutdown(how)


class WsBridge(Layered):
    """A WebSocket client whose frames are unwrapped here: the broker sees plain MQTT."""

    def __init__(self, inner: Stream, early: bytes) -> None:
        super().__init__(inner)
        self.codec = BridgeCodec()
        self.early = early  # bytes after the upgrade request, already read

    async def read(self) -> bytes:
        while True:
            raw, self.early = self.early or await self.inner.read(), b""
            if not raw:
                return b""
            payload, reply, end = self.codec.decode(raw)
            if reply:
                await self.inner.write(reply)
            if end is not None:
                raise StreamClosed(end)
            if payload:
                return payload

    async def write(self, data: bytes) -> None:
        await self.inner.write(self.codec.encode(data))

    def endpoint(self) -> Endpoint:
        inner = self.inner.endpoint()
        assert not isinstance(inner, Framed)
        return Framed(inner, self.codec)


class _Untouched(Layered):
    """Frames that travel unchanged (passthrough): decoded only to read the MQTT inside, while
    ``raw`` keeps the bytes as they came, to be forwarded as they are."""

    raw: bytearray
    packets = False

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    def wire(self, data: bytes) -> bytes:
        return bytes(self.raw)

    def endpoint(self) -> Endpoint:
        return self.inner.endpoint()


class WsPassthrough(_Untouched):
    """A WebSocket client whose frames go to the broker untouched; they are decoded here only
    to read the CONNECT. ``head`` is the upgrade to forward, ahead of the frames. Every raw
    byte is kept to be forwarded, control frames and empty frames too, which carry no MQTT
    byte: at most ``limit`` of them are held before the CONNECT is complete."""

    def __init__(self, inner: Stream, head: bytes, early: bytes, limit: int) -> None:
        super().__init__(inner)
        self.spliceable = inner.spliceable
        self.raw = bytearray(head)
        self.head_size = len(head)
        self.limit = limit
        self.decoder = FrameDecoder(masked=True)
        self.early = early

    async def read(self) -> bytes:
        while True:
            if len(self.raw) - self.head_size > self.limit:
                raise StreamClosed(CONNECT_TOO_LARGE)
            raw, self.early = self.early or await self.inner.read(), b""
            if not raw:
                return b""
            self.raw += raw
            payload, _ = self.decoder.feed(raw)  # pings are the broker's to answer
            if payload:
                return payload


class WsUpstream(_Untouched):
    """A passthrough broker's side: its 101 answer is consumed (the client had ours), then its
    frames are decoded only to read the CONNACK and relayed untouched."""

    def __init__(self, inner: Stream) -> None:
        super().__init__(inner)
        self.spliceable = inner.spliceable
        self.head = bytearray()
        self.head_done = False
        self.raw = bytearray()
        self.decoder = FrameDecoder(masked=False)

    async def read(self) -> bytes:
        while True:
            raw = await self.inner.read()
            if not raw:
                return b""
            if not self.head_done:
                raw = self._take_head(raw)
            self.raw += raw
            payload, _ = self.decoder.feed(raw)
            if payload:
                return payload

    def _take_head(self, raw: bytes) -> bytes:
        self.head += raw
        end = head_end(self.head)
        if end < 0:
            return b""
        if parse_response_status(bytes(self.head[:end])) != 101:
            raise StreamClosed("server-ws-refused")
        self.head_done = True
        rest, self.head = bytes(self.head[end:]), bytearray()
        return rest
