"""The event-loop relay as a ``relay.Relay`` (relay_loop.LoopEngine), over real socket pairs on
uvloop: bytes both ways with live counters, half-close, idle timeouts, closing with a reason,
and stop() with a pair that lingers. The C engine's side of the same contract is in
test_relays.py and test_splice.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import uvloop

from fastmqtt.relay import Relay
from fastmqtt.relay_loop import LoopEngine

Ends = list[tuple[int, int, int, str]]


def run(main: Callable[[], Awaitable[object]]) -> object:
    return uvloop.run(asyncio.wait_for(main(), 20))


class Pair:
    """A client and a server socket (the far ends the test drives) relayed by ``engine``."""

    def __init__(self, engine: Relay, conn_id: int, client_idle: float = 0.0) -> None:
        self.client, client_near = socket.socketpair()
        server_near, self.server = socket.socketpair()
        for sock in (self.client, self.server):
            sock.setblocking(False)
        engine.add(conn_id, client_near, server_near, client_idle, 0.0, b"hello", b"ack")

    def close(self) -> None:
        self.client.close()
        self.server.close()


async def read(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return predicate()


def engine_with(ends: Ends) -> LoopEngine:
    return LoopEngine(asyncio.get_running_loop(), lambda *end: ends.append(end))


def test_bytes_flow_both_ways_with_live_counters_then_close_says_why() -> None:
    async def main() -> tuple:
        ends: Ends = []
        engine = engine_with(ends)
        pair = Pair(engine, 7)
        got = (await read(pair.server, 5), await read(pair.client, 3))  # handed-over bytes first
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(pair.client, b"up" * 10)
        await loop.sock_sendall(pair.server, b"down")
        got += (await read(pair.server, 20), await read(pair.client, 4))
        live = engine.counters(7)
        engine.close(7, "server-down")
        await until(lambda: bool(ends))
        after = engine.counters(7)
        pair.close()
        await engine.stop()
        return got, live, ends, after

    got, live, ends, after = run(main)
    assert got == (b"hello", b"ack", b"up" * 10, b"down")
    assert live == (25, 7)  # what it moved, the bytes it was handed to send first included
    assert ends == [(7, 25, 7, "server-down")]
    assert after is None


def test_half_close_passes_on_and_the_pair_ends_when_both_directions_are_done() -> None:
    async def main() -> tuple:
        ends: Ends = []
        engine = engine_with(ends)
        pair = Pair(engine, 1)
        await read(pair.server, 5)
        await read(pair.client, 3)
        pair.client.shutdown(socket.SHUT_WR)
        eof = await read(pair.server, 1)  # the client's EOF reached the server
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(pair.server, b"late answer")
        answer = await read(pair.client, 11)  # the other direction still flows
        still_open = list(ends)
        pair.server.close()
        await until(lambda: bool(ends))
        pair.close()
        await engine.stop()
        return eof, answer, still_open, ends

    eof, answer, still_open, ends = run(main)
    assert (eof, answer, still_open) == (b"", b"late answer", [])
    # named after the side that began the end
    assert [(conn_id, reason) for conn_id, _, _, reason in ends] == [(1, "client-closed")]


def test_an_idle_client_times_out() -> None:
    async def main() -> Ends:
        ends: Ends = []
        engine = engine_with(ends)
        pair = Pair(engine, 3, client_idle=0.2)
        await until(lambda: bool(ends))
        pair.close()
        await engine.stop()
        return ends

    assert [reason for *_, reason in run(main)] == ["client-timeout"]


def test_stop_ends_every_pair_and_waits_for_the_lingering_ones() -> None:
    """An ended pair whose client is still sending keeps reading (and dropping) for a while
    rather than resetting: stop() waits for it to close, bounded by CLOSE_LINGER."""

    async def main() -> tuple:
        ends: Ends = []
        engine = engine_with(ends)
        pairs = [Pair(engine, i) for i in (1, 2)]
        for pair in pairs:
            await read(pair.client, 3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = loop.create_task(engine.stop())
        await until(lambda: len(ends) == 2)
        await asyncio.sleep(0.1)
        waiting = not stopping.done()  # the clients have not closed: their sides linger
        for pair in pairs:
            pair.close()
        await stopping
        return ends, waiting, loop.time() - started

    ends, waiting, took = run(main)
    assert sorted((conn_id, reason) for conn_id, _, _, reason in ends) == [
        (1, "shutdown"),
        (2, "shutdown"),
    ]
    assert waiting and took < 2.0
