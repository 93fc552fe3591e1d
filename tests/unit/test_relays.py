"""One set of cases for both relays: the C engine (``Engine``) and the event-loop relay
(``LoopRelay``, which carries TLS, WebSocket and everything under FASTMQTT_NO_EXTENSIONS=1).
For the same bytes they must say goodbye at the same packet boundary, and end a pair the same
way: what was sent arrives, then EOF, not a reset, even when the client is still sending.

Layout of every relayed pair: ``client`` <-> [relay fd a ... relay fd b] <-> ``server``, over
real TCP on 127.0.0.1 (a close with unread bytes answers with a reset only on TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.sockets import close_kept, keep, recv_all, recv_exactly, tcp_pair

from fastmqtt import ws_spec as spec
from fastmqtt._splice import Engine
from fastmqtt.framing import PacketBoundary
from fastmqtt.packets import varint
from fastmqtt.relay_loop import HIGH_WATER, Framed, LoopRelay
from fastmqtt.websocket import BridgeCodec, encode_frame

BYE = b"\xe0\x02\x8b\x00"  # MQTT 5 DISCONNECT 0x8B "server shutting down"
CONNACK = b"\x20\x03\x00\x00\x00"
Record = tuple[int, int, int, str]  # (conn_id, bytes client->server, server->client, reason)


def publish(size: int, fill: bytes = b"p") -> bytes:
    """A PUBLISH of ``size`` bytes in all (header included), topic "t"."""
    body_len = size - 2
    while 1 + len(varint(body_len)) + body_len > size:
        body_len -= 1
    body = b"\x00\x01t" + fill * (body_len - 3)
    return b"\x30" + varint(len(body)) + body


class Relays:
    """What the cases need from a relay implementation."""

    linger = 0.5  # seconds; short, so the bound itself can be tested

    def add(self, conn_id: int, a: socket.socket, b: socket.socket, **kw: object) -> None:
        raise NotImplementedError

    def goodbye(self, conn_id: int, packet: bytes) -> None:
        raise NotImplementedError

    def close(self, conn_id: int) -> None:
        raise NotImplementedError

    def records(self, count: int, timeout: float = 5.0) -> list[Record]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class EngineRelays(Relays):
    def __init__(self, linger_bytes: int) -> None:
        self.engine = Engine(linger_seconds=self.linger, linger_bytes=linger_bytes)
        self.engine.start()

    def add(self, conn_id, a, b, idle=0.0, to_server=b"", to_client=b"", track=False) -> None:
        self.engine.add(conn_id, a.detach(), b.detach(), idle, 0.0, to_server, to_client,
                        track_packets=track)  # fmt: skip

    def goodbye(self, conn_id: int, packet: bytes) -> None:
        self.engine.goodbye(conn_id, packet)

    def close(self, conn_id: int) -> None:
        self.engine.close(conn_id)

    def records(self, count: int, timeout: float = 5.0) -> list[Record]:
        got: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            select.select([self.engine.completions_fd()], [], [], 0.05)
            got += [(r[0], r[1], r[2], r[4]) for r in self.engine.drain()]
        return got

    def stop(self) -> None:
        self.engine.stop()


class LoopRelays(Relays):
    """LoopRelay on a uvloop loop of its own thread; calls are run there and waited for."""

    def __init__(self, linger_bytes: int) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relays: dict[int, LoopRelay] = {}
        self.done: queue.Queue[Record] = queue.Queue()
        self.linger_bytes = linger_bytes

    def _run(self, fn: Callable[[], None]) -> None:
        async def call() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(call(), self.loop).result(5)

    def add(
        self, conn_id, a, b, idle=0.0, to_server=b"", to_client=b"", track=False, codec=None
    ) -> None:
        def make() -> None:
            def done(c2s: int, s2c: int, reason: str) -> None:
                self.done.put((conn_id, c2s, s2c, reason))

            relay = LoopRelay(self.loop, idle, 0.0, done, self.linger, self.linger_bytes)
            if track:
                relay.track_packets()
            self.relays[conn_id] = relay
            relay.start(Framed(a, codec) if codec else a, b, to_server, to_client)

        self._run(make)

    def goodbye(self, conn_id: int, packet: bytes) -> None:
        self._run(lambda: self.relays[conn_id].say_goodbye(packet))

    def close(self, conn_id: int) -> None:
        self._run(lambda: self.relays[conn_id].close())

    def records(self, count: int, timeout: float = 5.0) -> list[Record]:
        got: list[Record] = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Empty):
            while len(got) < count:
                got.append(self.done.get(timeout=max(0.0, deadline - time.monotonic())))
        return got

    def stop(self) -> None:
        def abort() -> None:  # lingering ones too: the loop closes with no socket left
            for relay in self.relays.values():
                relay.close()
                for side in (relay.client, relay.server):
                    if side.transport is not None:
                        side.transport.abort()

        self._run(abort)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


LINGER_BYTES = 512 * 1024


@pytest.fixture(params=["engine", "loop"])
def relays(request: pytest.FixtureRequest) -> Iterator[Relays]:
    impl = EngineRelays(LINGER_BYTES) if request.param == "engine" else LoopRelays(LINGER_BYTES)
    yield impl
    impl.stop()


SMALL = 16384  # socket buffers of the relayed path: what a flood can leave unread stays small


def pair(
    relays: Relays, listener: socket.socket, conn_id: int, client_rcvbuf: int = SMALL, **kw: object
) -> tuple[socket.socket, socket.socket]:
    """A client and a server end with ``relays`` between them."""
    client, a = tcp_pair(listener, SMALL, client_rcvbuf)
    b, server = tcp_pair(listener, SMALL)
    relays.add(conn_id, a, b, **kw)  # type: ignore[arg-type]
    for sock in (client, server):
        sock.settimeout(5)
        keep(sock)
    return client, server


def fill(sock: socket.socket, limit: int = 64 << 20) -> int:
    """Send until the send buffer and everything behind it is full; bytes sent."""
    sock.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while sent < limit:
            sent += sock.send(b"\x40\x02\x00\x01" * 4096)  # PUBACKs of a slow subscriber
    sock.settimeout(5)
    return sent


# ---------------------------------------------------------------- goodbye at a boundary


def test_goodbye_waits_for_the_end_of_a_publish_handed_over_in_part(relays, listener) -> None:
    """The CONNACK and the first 10 bytes of a 1003-byte PUBLISH were read during routing: the
    goodbye goes out after the PUBLISH (offset 1008), not inside it (offset 15)."""
    message = publish(1003)
    handed = CONNACK + message[:10]
    client, server = pair(relays, listener, 1, to_client=handed, track=True)
    assert recv_exactly(client, len(handed)) == handed
    relays.goodbye(1, BYE)
    server.sendall(message[10:] + publish(50))
    got = recv_all(client)
    assert handed + got == CONNACK + message + BYE
    assert [r[3] for r in relays.records(1)] == ["drained"]


def test_a_close_between_packets_lets_the_clients_publish_finish(relays, listener) -> None:
    """MQTT 3.1.1 (no goodbye packet): half of a client's QoS 1 PUBLISH has gone through when
    the goodbye comes: the broker gets all of it, then EOF; what the client sends after it is
    dropped; the client gets EOF."""
    packet = b""
    message = b"\x32" + publish(3000)[1:]  # QoS 1 (a packet id is part of the body)
    client, server = pair(relays, listener, 1, to_client=CONNACK, track=True)
    assert recv_exactly(client, len(CONNACK)) == CONNACK
    client.sendall(message[:1000])
    assert recv_exactly(server, 1000) == message[:1000]
    relays.goodbye(1, packet)
    time.sleep(0.2)  # the pair waits for the rest of the PUBLISH
    assert relays.records(1, timeout=0.1) == []
    client.sendall(message[1000:] + publish(40))
    assert recv_all(server) == message[1000:]
    assert recv_all(client) == packet
    assert [r[3] for r in relays.records(1)] == ["drained"]


def test_a_close_between_packets_waits_for_both_streams(relays, listener) -> None:
    """Without a goodbye packet each stream stops at its own next boundary: the server's
    PUBLISH completes, then the client's, then the close."""
    down, up = publish(500), publish(700)
    client, server = pair(relays, listener, 1, track=True)
    server.sendall(down[:100])
    client.sendall(up[:100])
    assert recv_exactly(client, 100) == down[:100]
    assert recv_exactly(server, 100) == up[:100]
    relays.goodbye(1, b"")
    server.sendall(down[100:] + publish(30))
    assert recv_exactly(client, len(down) - 100) == down[100:]
    assert relays.records(1, timeout=0.2) == []  # the client's PUBLISH is still half sent
    client.sendall(up[100:])
    assert recv_all(server) == up[100:]
    assert recv_all(client) == b""
    assert [r[3] for r in relays.records(1)] == ["drained"]


@pytest.mark.parametrize(
    ("handed", "then", "expected"),
    [
        (CONNACK, b"", CONNACK + BYE),  # whole packets handed over: at a boundary already
        (CONNACK[:2], CONNACK[2:] + b"\xd0\x00", CONNACK + BYE),  # the CONNACK's rest, then cut
        (b"", b"", BYE),
    ],
    ids=["whole", "half-connack", "nothing"],
)
def test_goodbye_counts_the_bytes_handed_over(relays, listener, handed, then, expected) -> None:
    client, server = pair(relays, listener, 1, to_client=handed, track=True)
    relays.goodbye(1, BYE)
    if then:
        server.sendall(then)
    assert recv_all(client) == expected


def test_untracked_pairs_ignore_goodbye(relays, listener) -> None:
    client, server = pair(relays, listener, 1, to_client=CONNACK)
    relays.goodbye(1, BYE)
    server.sendall(b"\x30\x01")  # half a packet goes through, the pair lives on
    assert recv_exactly(client, 7) == CONNACK + b"\x30\x01"
    client.close()
    server.close()
    assert relays.records(1)[0][3] in ("client-closed", "server-closed")


_streams = st.lists(
    st.tuples(st.sampled_from([0x30, 0x32, 0x40, 0xD0, 0x90]), st.binary(max_size=300)).map(
        lambda p: bytes([p[0]]) + varint(len(p[1])) + p[1]
    ),
    max_size=6,
).map(b"".join)


@settings(max_examples=30, deadline=None)
@given(_streams, st.data())
def test_both_relays_cut_where_the_python_twin_does(stream: bytes, data: st.DataObject) -> None:
    """Bytes handed over, then bytes relayed live, then a goodbye, then the rest: both relays
    cut the rest where framing.PacketBoundary does."""
    handed_n = data.draw(st.integers(0, len(stream)), "handed")
    live_n = data.draw(st.integers(handed_n, len(stream)), "live")
    handed, live, then = stream[:handed_n], stream[handed_n:live_n], stream[live_n:]
    twin = PacketBoundary()
    twin.feed(handed + live)
    cut = twin.feed(then, stop_at_boundary=True)
    drained = twin.at_boundary
    cuts = []
    for impl in (EngineRelays(LINGER_BYTES), LoopRelays(LINGER_BYTES)):
        server_sock = socket.create_server(("127.0.0.1", 0))
        try:
            client, server = pair(impl, server_sock, 1, to_client=handed, track=True)
            server.sendall(live)
            if handed + live:  # followed by the relay before the goodbye is asked for
                assert recv_exactly(client, len(handed + live)) == handed + live
            impl.goodbye(1, BYE)
            with contextlib.suppress(OSError):
                server.sendall(then)
                server.shutdown(socket.SHUT_WR)
            cuts.append(recv_all(client))
            if not drained:  # no boundary came: the server's FIN ends it as usual, half-closed
                client.close()
            assert [r[3] for r in impl.records(1)] == ["drained" if drained else "server-closed"]
        finally:
            impl.stop()
            server_sock.close()
            close_kept()
    assert cuts == [then[:cut] + BYE if drained else then] * 2


# ---------------------------------------------------------------- closing without a reset


def test_goodbye_reaches_a_slow_client_that_is_still_sending(relays, listener) -> None:
    """The client reads slowly (small window) and keeps sending (PUBACKs) that the relay has not
    read when the pair ends: the goodbye and everything before it still arrive, then EOF."""
    stream = b"".join(publish(1003, bytes([65 + i % 26])) for i in range(200))
    client, server = pair(relays, listener, 1, client_rcvbuf=4096, to_client=CONNACK, track=True)
    writer = threading.Thread(target=lambda: server.sendall(stream), daemon=True)
    writer.start()
    time.sleep(0.2)  # the relay's send buffer towards the client fills
    assert fill(client) > 0  # ... and so does everything between client and the (idle) server
    relays.goodbye(1, BYE)
    time.sleep(0.2)
    got = recv_all(client)
    assert got.startswith(CONNACK) and got.endswith(BYE)
    forwarded = got[len(CONNACK) : -len(BYE)]
    assert forwarded == stream[: len(forwarded)] and len(forwarded) % 1003 == 0
    assert [r[3] for r in relays.records(1)] == ["drained"]
    writer.join(1)


@pytest.mark.parametrize("end", ["kill", "timeout"])
def test_an_ended_pair_is_closed_without_a_reset(relays, listener, end: str) -> None:
    """Killed or timed out while the client's bytes wait unread: the client reads what was sent
    (the engine drops what it still held itself), then EOF, not a reset."""
    client, server = pair(relays, listener, 1, idle=0.5 if end == "timeout" else 0.0)
    server.sendall(b"x" * 100_000)
    fill(client)
    if end == "kill":
        relays.close(1)
    [rec] = relays.records(1, timeout=3)
    assert rec[3] == ("killed" if end == "kill" else "client-timeout")
    got = recv_all(client)
    assert got == b"x" * len(got) and len(got) >= 2 * SMALL


def test_lingering_is_bounded_in_time(relays, listener) -> None:
    """A client that neither reads nor closes: its socket is closed after the linger time."""
    client, _server = pair(relays, listener, 1)
    relays.close(1)
    assert relays.records(1)[0][3] == "killed"
    assert recv_all(client) == b""  # our FIN: the relay has shut down its writing ...
    client.sendall(b"\x40\x02\x00\x01")  # ... and drops what still comes
    time.sleep(Relays.linger + 0.4)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # then closed: a reset
        for _ in range(3):
            client.sendall(b"\x40\x02\x00\x01")
            time.sleep(0.1)


def test_lingering_is_bounded_in_bytes(relays, listener) -> None:
    """A client that keeps sending after the end is cut off past the byte bound."""
    client, _server = pair(relays, listener, 1)
    relays.close(1)
    assert relays.records(1)[0][3] == "killed"
    started = time.monotonic()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        for _ in range(100):
            client.sendall(b"\x40\x02\x00\x01" * 16384)  # 64 KiB a write
    assert time.monotonic() - started < Relays.linger  # cut by bytes, not by time


# ---------------------------------------------------------------- the event-loop relay only


def test_a_websocket_client_that_reads_nothing_stops_being_read(listener) -> None:
    """Its pings are answered into its own write buffer; once that is past the high-water mark
    the relay stops reading it (a client that only sends cannot make us hold more)."""
    relays = LoopRelays(LINGER_BYTES)
    try:
        client, _server = pair(relays, listener, 1, codec=BridgeCodec())
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ping = encode_frame(spec.OP_PING, b"p" * 125, b"\x01\x02\x03\x04")
        relay = relays.relays[1]
        deadline = time.monotonic() + 20
        sent = 0
        client.settimeout(0.2)
        with contextlib.suppress(TimeoutError):  # our send blocks once we are not read
            while not relay.client.blocked and time.monotonic() < deadline:
                client.send(ping)  # one ping a read: each is answered
                sent += 1
                time.sleep(0.0003)
        assert relay.client.blocked, f"still read after {sent} pings"
        assert sent * 127 > HIGH_WATER  # it took pongs beyond the mark, not less
        read = relay.client.received
        with contextlib.suppress(TimeoutError):
            for _ in range(200):
                client.send(ping)
        time.sleep(0.2)
        assert relay.client.received == read  # left in the kernel, not taken in
    finally:
        relays.stop()
