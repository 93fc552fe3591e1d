"""The routing streams (streams.py) over real sockets and real TLS (trustme): what the relay
gets at hand-over, what a passthrough client may make us hold before its CONNECT, and that a
TLS write waits for a peer that does not read."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from tests.support.certs import Certs, make_certs

from fastmqtt import packets
from fastmqtt import ws_spec as spec
from fastmqtt.relay_loop import LoopRelay
from fastmqtt.streams import (
    CONNECT_TOO_LARGE,
    WS_FRAMING_ALLOWANCE,
    SocketStream,
    StreamClosed,
    TransportStream,
    WsBridge,
    WsPassthrough,
)
from fastmqtt.websocket import FrameDecoder, encode_frame


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


def run(main: Callable[[], Awaitable[object]]) -> object:
    return uvloop.run(asyncio.wait_for(main(), 20))


def _send_until_closed(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def masked(opcode: int, payload: bytes) -> bytes:
    return encode_frame(opcode, payload, os.urandom(4))


# ---------------------------------------------------------------- WebSocket passthrough


def test_passthrough_closes_past_max_connect_size_plus_the_allowance() -> None:
    """Pings carry no MQTT byte: without a bound on the raw bytes, they would be held forever."""
    limit = 1024 + WS_FRAMING_ALLOWANCE

    async def main() -> int:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        stream = WsPassthrough(SocketStream(asyncio.get_running_loop(), ours), b"GET", b"", limit)
        pings = masked(spec.OP_PING, b"p" * 125) * 400  # 52 KB of pings, no CONNECT
        flood = threading.Thread(target=_send_until_closed, args=(theirs, pings * 10))
        flood.start()
        with pytest.raises(StreamClosed, match=CONNECT_TOO_LARGE):
            while True:
                await stream.read()
        held = len(stream.raw) - len(b"GET")
        ours.close()
        flood.join(5)
        theirs.close()
        return held

    held = run(main)
    assert limit < held <= limit + 65536  # the bound, plus at most the read that crossed it


def test_passthrough_reads_a_connect_in_small_frames_behind_pings() -> None:
    connect = packets.connect("fragmented")
    frames = [masked(spec.OP_PING, b"x" * 100) for _ in range(20)]
    for i in range(0, len(connect), 2):
        frame = bytearray(
            masked(spec.OP_BINARY if i == 0 else spec.OP_CONTINUATION, connect[i : i + 2])
        )
        if i + 2 < len(connect):
            frame[0] &= 0x7F  # more fragments follow
        frames.append(bytes(frame))
    wire = b"".join(frames)

    async def main() -> bytes:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        stream = WsPassthrough(SocketStream(loop, ours), b"", b"", 64 + WS_FRAMING_ALLOWANCE)
        theirs.sendall(wire)
        got = b""
        while len(got) < len(connect):
            got += await stream.read()
        assert stream.wire(got) == wire  # the frames go on untouched
        ours.close()
        theirs.close()
        return got

    assert run(main) == connect


# ---------------------------------------------------------------- TLS hand-over


async def _tls_pair(certs: Certs) -> tuple[TransportStream, ssl.SSLSocket]:
    """A TLS server stream (what the listener has during routing) and its client."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server)
    raw = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    accepted.setblocking(False)
    client_ready = loop.run_in_executor(
        None, lambda: certs.client_context().wrap_socket(raw, server_hostname="localhost")
    )
    stream = await TransportStream.accept(loop, accepted, context, 5.0)
    return stream, await client_ready


def test_bytes_and_eof_that_arrive_after_the_endpoint_is_taken_reach_the_relay(certs) -> None:
    """The routing reader keeps receiving after `endpoint()` until the relay switches the
    transport; the relay takes over what it holds then, EOF included, and ends the pair."""

    async def main() -> tuple[bytes, list[str]]:
        stream, client = await _tls_pair(certs)
        endpoint = stream.endpoint()  # routing is done with it ...
        client.sendall(b"CONNECT+PUBLISH")  # ... but bytes and the close still come
        await asyncio.get_running_loop().run_in_executor(None, client.unwrap)  # close_notify
        client.close()
        while not stream.reader.ended:
            await asyncio.sleep(0.01)
        ends: list[str] = []
        near, far = socket.socketpair()
        relay = LoopRelay(asyncio.get_running_loop(), 0, 0, lambda c, s, r: ends.append(r))
        relay.start(endpoint, near, to_server=b"first:")
        far.settimeout(5)
        got = b""
        while chunk := await asyncio.get_running_loop().run_in_executor(None, far.recv, 1024):
            got += chunk
        while not ends:
            await asyncio.sleep(0.01)
        far.close()
        return got, ends

    got, ends = run(main)  # type: ignore[misc]
    assert got == b"first:CONNECT+PUBLISH"
    assert ends == ["client-closed"]


def test_tls_write_waits_for_a_peer_that_does_not_read(certs) -> None:
    """What we answer a client that never reads (pongs) stays within the transport's
    high-water mark instead of growing with what it sends."""

    async def main() -> int:
        stream, client = await _tls_pair(certs)
        peak = 0

        async def answer() -> None:
            nonlocal peak
            for _ in range(1000):  # 64 MB if nothing waited
                await stream.write(b"a" * 65536)
                peak = max(peak, stream.transport.get_write_buffer_size())

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(answer(), 1.0)
        stream.close()
        client.close()
        return peak

    assert run(main) < 1 << 20  # type: ignore[operator]


# ---------------------------------------------------------------- WebSocket bridge


def test_bridge_unwraps_frames_answers_pings_and_ends_at_the_close_frame() -> None:
    """What routing reads from a bridged WebSocket client is MQTT (bytes read with the
    upgrade first), a ping is answered on the socket, what we write goes out as one binary
    frame, and the client's close frame ends the stream, echoed."""
    connect = packets.connect("ws-unit", version=4)

    async def main() -> tuple:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(5)
        bridge = WsBridge(
            SocketStream(asyncio.get_running_loop(), ours), masked(spec.OP_BINARY, connect[:5])
        )
        theirs.sendall(masked(spec.OP_PING, b"hb") + masked(spec.OP_BINARY, connect[5:]))
        got = [await bridge.read(), await bridge.read()]
        await bridge.write(packets.connack(0))
        theirs.sendall(masked(spec.OP_CLOSE, spec.CLOSE_NORMAL.to_bytes(2, "big")))
        with pytest.raises(StreamClosed) as closed:
            await bridge.read()
        decoder = FrameDecoder(masked=False)
        seen = b""
        while len(seen) < 2 + 4 + 2 + 4:  # pong "hb", binary CONNACK, close 1000
            seen += theirs.recv(1024)
        payload, controls = decoder.feed(seen)
        ours.close()
        theirs.close()
        return got, str(closed.value), payload, controls

    got, reason, payload, controls = run(main)  # type: ignore[misc]
    assert b"".join(got) == connect
    assert reason == "client-closed"
    assert payload == packets.connack(0)
    assert controls == [
        (spec.OP_PONG, b"hb"),
        (spec.OP_CLOSE, spec.CLOSE_NORMAL.to_bytes(2, "big")),
    ]
