"""Micro-benchmarks of the C relay engine (_splice) over TCP on 127.0.0.1.

Each relayed pair is client <-> relay <-> server, all TCP; the benchmark drives client and
server from Python, so ping-pong figures include Python's own socket calls: compare rows,
"direct" (no relay at all) is the floor. Relays:
  direct       client and server connected to each other
  engine       the C engine, default settings (splice after a read fills the 64 KiB buffer)
  engine-copy  the C engine with splice disabled (recv/send only)
  engine-track the C engine following the server's MQTT packets (track_packets, what a drain's
               goodbye needs): its cost is this row against "engine"
  uvloop       a plain asyncio Protocol relay on uvloop in its own process (what the engine
               replaces)
  haproxy      Debian's HAProxy 2.6, mode tcp, one thread, no inspection (the reference)

Run: pytest bench/bench_splice.py --benchmark-only
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fastmqtt._splice import Engine
from fastmqtt.packets import varint
from fastmqtt.tools.brokers import free_port

# bench/ is not a package: make tests.support importable from the repository root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.support.haproxy import HAProxy

MiB = 1 << 20
Pair = tuple[socket.socket, socket.socket]
RELAYS = ["direct", "engine", "engine-copy", "engine-track", "uvloop", "haproxy"]

HAPROXY_CFG = """
global
    nbthread 1
defaults
    mode tcp
    timeout connect 10s
    timeout client 240s
    timeout server 240s
frontend relay
    bind 127.0.0.1:{port}
    default_backend target
backend target
    server target 127.0.0.1:{target}
"""

UVLOOP_RELAY = r"""
import asyncio, sys, uvloop

class Side(asyncio.Protocol):
    def __init__(self, peer=None):
        self.peer, self.transport, self.early = peer, None, []
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        if self.peer is None:  # the server connection is still being made
            self.early.append(data)
        else:
            self.peer.transport.write(data)
    def eof_received(self):
        self.peer.transport.write_eof()
        return True
    def connection_lost(self, exc):
        if self.peer is not None:
            self.peer.transport.close()
    def pause_writing(self):
        self.peer.transport.pause_reading()
    def resume_writing(self):
        self.peer.transport.resume_reading()

class Client(Side):
    def connection_made(self, transport):
        super().connection_made(transport)
        asyncio.ensure_future(self.dial())
    async def dial(self):
        loop = asyncio.get_running_loop()
        _, self.peer = await loop.create_connection(lambda: Side(self), "127.0.0.1", PORT)
        self.peer.transport.writelines(self.early)

async def main():
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()  # until the benchmark terminates us

PORT = int(sys.argv[1])
uvloop.run(main())
"""


def cpu_seconds(path: str) -> float:
    """CPU time of a process or thread in ns resolution (schedstat's first field)."""
    with open(path) as f:
        return int(f.read().split()[0]) / 1e9


class Relay:
    """Makes (client, server) TCP socket pairs that talk through one relay."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.engine: Engine | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.haproxy: HAProxy | None = None
        self.ids = 0
        self.stats: list[str] = []  # /proc schedstat files of the relay's own threads
        if kind.startswith("engine"):
            self.engine = Engine(splice_threshold=0 if kind == "engine-copy" else None)
            before = set(os.listdir("/proc/self/task"))
            self.engine.start()
            new = set(os.listdir("/proc/self/task")) - before
            self.stats = [f"/proc/self/task/{tid}/schedstat" for tid in new]
        elif kind == "haproxy":
            self.relay_port = free_port()
            cfg = HAPROXY_CFG.format(port=self.relay_port, target=self.listener.getsockname()[1])
            self.haproxy = HAProxy(cfg, self.relay_port).start()
            assert self.haproxy.proc is not None
            self.stats = [f"/proc/{self.haproxy.proc.pid}/schedstat"]
        elif kind == "uvloop":
            port = str(self.listener.getsockname()[1])
            self.proc = subprocess.Popen(
                [sys.executable, "-c", UVLOOP_RELAY, port],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self.proc.stdout is not None
            self.relay_port = int(self.proc.stdout.readline())
            self.stats = [f"/proc/{self.proc.pid}/schedstat"]

    def cpu(self) -> float:
        """CPU seconds the relay itself has used (0 for "direct")."""
        return sum(cpu_seconds(path) for path in self.stats)

    def _tcp(self) -> tuple[socket.socket, socket.socket]:
        near = socket.create_connection(self.listener.getsockname())
        far, _ = self.listener.accept()
        return near, far

    def pair(self) -> tuple[socket.socket, socket.socket]:
        if self.proc is not None or self.haproxy is not None:
            return self._through_proxy()
        client, a = self._tcp()
        if self.engine is None:
            return client, a
        b, server = self._tcp()
        self.ids += 1
        self.engine.add(
            self.ids, a.detach(), b.detach(), 0, 0, track_packets=self.kind == "engine-track"
        )
        return client, server

    def _through_proxy(self) -> tuple[socket.socket, socket.socket]:
        """The proxy's own start-up probe also lands on our listener: skip connections that
        do not carry the client's hello byte."""
        client = socket.create_connection(("127.0.0.1", self.relay_port))
        client.sendall(b"!")
        for _ in range(10):
            server, _ = self.listener.accept()
            if server.recv(1) == b"!":
                return client, server
            server.close()
        raise RuntimeError(f"{self.kind} did not relay a connection")

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.haproxy is not None:
            self.haproxy.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        self.listener.close()


@pytest.fixture(scope="module", params=RELAYS)
def relay(request: pytest.FixtureRequest) -> Iterator[Relay]:
    r = Relay(request.param)
    yield r
    r.close()


@pytest.fixture
def pair(relay: Relay) -> Iterator[Pair]:
    client, server = relay.pair()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield client, server
    client.close()
    server.close()


def measured(
    benchmark,
    pytestconfig: pytest.Config,
    relay: Relay,
    fn: Callable[[], None],
    unit: str,
    **pedantic: int,
) -> None:
    """Benchmark ``fn`` (one ``unit`` per call) and report the relay's own CPU per unit."""
    calls = 0

    def counted() -> None:
        nonlocal calls
        calls += 1
        fn()

    cpu = relay.cpu()
    if pedantic:
        benchmark.pedantic(counted, **pedantic)
    else:
        benchmark(counted)
    used_us = (relay.cpu() - cpu) / calls * 1e6
    benchmark.extra_info["relay_cpu_us_per_" + unit.replace(" ", "_")] = used_us
    # wall time on a shared 2-core box is noisy; the relay's CPU per unit is the robust figure
    plugins = pytestconfig.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        plugins.get_plugin("terminalreporter").write_line(
            f"  {relay.kind:12s} relay CPU {used_us:10.2f} us per {unit}"
        )


def recv_exactly(sock: socket.socket, buf: bytearray) -> None:
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = sock.recv_into(view[got:])
        assert n, "unexpected EOF"
        got += n


def mqtt_message(size: int) -> bytes:
    """A QoS 0 PUBLISH of ``size`` bytes in all (64, 4096, 65536): what a tracking relay
    follows."""
    body = size - 2 - (size > 129) - (size > 16385)
    message = b"\x30" + varint(body) + b"\x00\x01t" + b"m" * (body - 3)
    assert len(message) == size
    return message


def ping_pong(pair: Pair, size: int) -> Callable[[], None]:
    client, server = pair
    msg, buf = mqtt_message(size), bytearray(size)

    def round_trip() -> None:
        client.sendall(msg)
        recv_exactly(server, buf)
        server.sendall(msg)
        recv_exactly(client, buf)

    return round_trip


@pytest.mark.benchmark(group="relay 64 B ping-pong (bytes/s = 128 / time)")
def test_ping_pong_64(benchmark, pytestconfig: pytest.Config, relay: Relay, pair: Pair) -> None:
    measured(benchmark, pytestconfig, relay, ping_pong(pair, 64), "round trip")


@pytest.mark.benchmark(group="relay 4 KiB ping-pong (bytes/s = 8 KiB / time)")
def test_ping_pong_4k(benchmark, pytestconfig: pytest.Config, relay: Relay, pair: Pair) -> None:
    measured(benchmark, pytestconfig, relay, ping_pong(pair, 4096), "round trip")


class Sink(threading.Thread):
    """Reads the server end forever and lets the benchmark wait for a byte count."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.count, self.cond = sock, 0, threading.Condition()

    def run(self) -> None:
        buf = bytearray(MiB)
        while n := self.sock.recv_into(buf):
            with self.cond:
                self.count += n
                self.cond.notify()

    def wait_for(self, total: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.count >= total, timeout=30)


@pytest.mark.benchmark(group="relay bulk: 16 x 1 MiB writes one way (bytes/s = 16 MiB / time)")
def test_bulk_1mib(benchmark, pytestconfig: pytest.Config, relay: Relay, pair: Pair) -> None:
    client, server = pair
    sink = Sink(server)
    sink.start()
    chunk, sent = b"b" * MiB, 0

    def burst() -> None:
        nonlocal sent
        for _ in range(16):
            client.sendall(chunk)
        sent += 16 * MiB
        sink.wait_for(sent)

    measured(benchmark, pytestconfig, relay, burst, "16 MiB", rounds=20, warmup_rounds=1)
    client.shutdown(socket.SHUT_WR)
    sink.join(10)


@pytest.mark.parametrize("size", [64, 4096, 65536])
@pytest.mark.benchmark(group="relay stream to the client: 16 MiB of PUBLISH packets, one way")
def test_stream_to_client(
    benchmark, pytestconfig: pytest.Config, relay: Relay, pair: Pair, size: int
) -> None:
    """A broker streaming to a subscriber: the direction a tracking relay follows."""
    client, server = pair
    sink = Sink(client)
    sink.start()
    chunk = mqtt_message(size) * (MiB // size)
    sent = 0

    def burst() -> None:
        nonlocal sent
        for _ in range(16):
            server.sendall(chunk)
        sent += 16 * len(chunk)
        sink.wait_for(sent)

    measured(benchmark, pytestconfig, relay, burst, "16 MiB", rounds=10, warmup_rounds=1)
    server.shutdown(socket.SHUT_WR)
    sink.join(10)


BATCH = 500


class Batches:
    """BATCH fresh socketpair pairs per round; the previous round's peers are closed here,
    outside the timed call."""

    def __init__(self) -> None:
        self.peers: list[socket.socket] = []

    def __call__(self) -> tuple[tuple[list[tuple[int, int]]], dict]:
        for sock in self.peers:
            sock.close()
        self.peers, fds = [], []
        for _ in range(BATCH):
            client, a = socket.socketpair()
            b, server = socket.socketpair()
            fds.append((a.detach(), b.detach()))
            self.peers += (client, server)
        return (fds,), {}


@pytest.mark.benchmark(group=f"engine add + close, {BATCH} connections per round")
def test_add_close(benchmark) -> None:
    """Hand over BATCH pairs, kill them all, and wait for all their records."""
    engine = Engine()
    engine.start()
    next_id = 0

    def add_close(fds: list[tuple[int, int]]) -> None:
        nonlocal next_id
        first = next_id
        for a, b in fds:
            engine.add(next_id, a, b, 240.0, 240.0)
            next_id += 1
        for conn_id in range(first, next_id):
            engine.close(conn_id)
        got, deadline = 0, time.monotonic() + 10
        while got < BATCH and time.monotonic() < deadline:
            select.select([engine.completions_fd()], [], [], 1)
            got += len(engine.drain())
        assert got == BATCH

    batches = Batches()
    benchmark.pedantic(add_close, setup=batches, rounds=20)
    batches()
    for sock in batches.peers:
        sock.close()
    engine.stop()
