"""SIGTERM with drain_disconnect: MQTT 5 clients hear DISCONNECT 0x8B between two packets,
spread at drain_rate; MQTT 3.1.1 clients keep running until the grace period ends."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import threading
import time

import pytest
import uvloop

from fastmqtt import packets, runtime
from fastmqtt._splice import Engine
from fastmqtt.config import load_config
from tests.support.certs import Certs, make_certs, tls_line
from tests.support.lb import Client, lb_port, recipe, wait_until
from tests.support.wire import Wire, split_packets

pytestmark = pytest.mark.e2e


def test_sigterm_says_goodbye_to_v5_clients_at_a_packet_boundary(brokers, fastmqtt, path):
    [node] = brokers(1)
    port = lb_port()
    config = recipe([node], port).replace(
        'grace = "2s"', 'grace = "10s"\ndrain_disconnect = true\ndrain_rate = 10'
    )
    lb = fastmqtt(config, port=port)
    v5 = [Client(f"v5-{i}", port, version=5) for i in range(6)]
    for c in v5:
        c.subscribe("drain/big")
    v3 = Client("v311", port, version=4)

    # the broker streams large messages back to back, so a goodbye nearly always comes while a
    # packet is half sent: a DISCONNECT written there corrupts it (with a pause between
    # messages, a relay that wrote it at once would mostly go unnoticed)
    stop = threading.Event()
    publisher = Client("publisher", node.port)

    def publish() -> None:
        while not stop.is_set():
            publisher.publish("drain/big", b"x" * 200_000)
            time.sleep(0)  # only yield the GIL

    feeder = threading.Thread(target=publish, daemon=True)
    feeder.start()
    assert wait_until(lambda: all(c.messages for c in v5))
    signalled = time.monotonic()
    lb.signal(signal.SIGTERM)
    try:
        assert wait_until(lambda: all(c.disconnected.is_set() for c in v5), timeout=8)
    finally:
        stop.set()
        feeder.join(5)
    assert [c.disconnect_reason for c in v5] == [0x8B] * 6  # "Server shutting down"
    assert all(len(payload) == 200_000 for c in v5 for _topic, payload in c.messages)
    spread = max(c.disconnected_at for c in v5) - min(c.disconnected_at for c in v5)
    assert spread >= 0.3  # 6 clients at 10 per second, not all at once
    assert not v3.disconnected.is_set()  # no goodbye for 3.1.1: it stays until grace ends
    v3.close()
    publisher.close()
    for c in v5:
        c.mqtt.loop_stop()
    assert lb.proc.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 10


def test_drain_rate_is_for_the_whole_process_with_two_workers(brokers, fastmqtt):
    """drain_rate = 5 with workers = 2: the 0x8B DISCONNECTs arrive at 5 a second in all, not
    5 per worker (each worker takes its share of the rate)."""
    [node] = brokers(1)
    port = lb_port()
    config = recipe([node], port).replace(
        'grace = "2s"', 'grace = "20s"\nworkers = 2\ndrain_disconnect = true\ndrain_rate = 5'
    )
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())  # both bound, signals handled
    clients = [Client(f"v5-{i}", port, version=5) for i in range(24)]  # spread by the kernel
    lb.signal(signal.SIGTERM)
    try:
        assert wait_until(lambda: all(c.disconnected.is_set() for c in clients), timeout=15)
    finally:
        for c in clients:
            c.mqtt.loop_stop()
    assert [c.disconnect_reason for c in clients] == [0x8B] * 24
    times = sorted(c.disconnected_at for c in clients)
    busiest = max(sum(t <= s < t + 2.0 for s in times) for t in times)
    rate = (len(times) - 1) / (times[-1] - times[0])
    print(
        f"\n24 goodbyes over {times[-1] - times[0]:.1f} s ({rate:.1f}/s), at most {busiest} in 2 s"
    )
    assert busiest <= 10 + 2  # 5/s over 2 s, plus a tick of scheduling jitter per worker
    assert rate <= 5 * 1.2
    assert lb.proc.wait(timeout=20) == 0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _v5_subscriber(
    port: int, client_id: str, topic: str, tls: ssl.SSLContext | None = None
) -> socket.socket:
    """A raw MQTT 5 client subscribed at QoS 1 on ``topic``, with a small receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(packets.connect(client_id, version=5))
    wire = b""
    while not (got := split_packets(wire)[0]):
        wire += sock.recv(64)
    assert got[0][0] == 0x20
    sock.sendall(packets.subscribe(1, topic, qos=1, version=5))
    return sock


def _read_slowly_until_goodbye(sock: socket.socket, result: dict[str, object]) -> None:
    """Read 4 KiB every 2 ms, acknowledge every QoS 1 PUBLISH (so the client keeps sending
    while it reads), until a DISCONNECT, EOF, a reset or 20 s."""
    rest, deadline = b"", time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                result["end"] = "eof"
                return
            found, rest = split_packets(rest + chunk)
            for p in found:
                if p[0] & 0xF0 == 0xE0:
                    result["end"] = "disconnect"
                    result["reason"] = p[2] if len(p) > 2 else 0
                    if isinstance(sock, ssl.SSLSocket):
                        sock.unwrap()  # close_notify, then the balancer's
                    return
                if p[0] & 0xF0 == 0x30 and p[0] & 0x06:  # QoS 1: topic, then the packet id
                    at = 2 if p[1] < 0x80 else 3 if p[2] < 0x80 else 4
                    at += 2 + int.from_bytes(p[at : at + 2], "big")
                    sock.sendall(b"\x40\x02" + p[at : at + 2])
            time.sleep(0.002)
        result["end"] = "still-open"
    except OSError as exc:
        result["end"] = type(exc).__name__


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_slow_v5_subscribers_still_sending_get_their_goodbye(brokers, fastmqtt, certs, transport):
    """Subscribers that read slowly and keep acknowledging have unread bytes in flight both
    ways when their goodbye is due: closing at once would reset them (and the kernel would drop
    the DISCONNECT); fastmqtt shuts down writing, drops what they still send, and closes after
    they did: every one reads the 0x8B. Over TLS, each answers with close_notify, which may
    come while the balancer still flushes: no traceback in the log."""
    [node] = brokers(1)
    port = lb_port()
    tls = tls_line(cert=certs.server) if transport == "tls" else ""
    config = recipe([node], port, frontend=tls).replace(
        'grace = "2s"', 'grace = "4s"\ndrain_disconnect = true\ndrain_rate = 1000'
    )
    lb = fastmqtt(config, port=port)
    count, burst = 12, 100
    context = certs.client_context() if tls else None
    subs = [_v5_subscriber(port, f"slow-{i}", "slow/feed", context) for i in range(count)]
    keeper = Wire(port, tls=context)  # MQTT 3.1.1: no goodbye, the process lives until grace
    keeper.send(packets.connect("keeper"))
    assert [p[0] for p in keeper.packets(1)] == [0x20]
    time.sleep(0.3)  # subscribed
    publisher = Client("feeder", node.port)
    for _ in range(burst):  # 200 KB for each subscriber, most of it waiting in the relay's
        publisher.mqtt.publish("slow/feed", b"f" * 2000, qos=1)  # send buffers (4 KB windows)
    results: list[dict[str, object]] = [{} for _ in subs]
    readers = [
        threading.Thread(target=_read_slowly_until_goodbye, args=(s, r), daemon=True)
        for s, r in zip(subs, results, strict=True)
    ]
    for th in readers:
        th.start()
    time.sleep(0.05)  # reading and acknowledging, far behind
    lb.signal(signal.SIGTERM)
    for th in readers:
        th.join(25)
    publisher.close()
    for s in subs:
        s.close()
    assert lb.proc.wait(timeout=15) == 0
    keeper.close()
    for noise in ("Traceback", "Error calling", "eof_received"):
        assert noise not in lb.read("stderr.log")
    ends = [(r.get("end"), r.get("reason")) for r in results]
    assert ends == [("disconnect", 0x8B)] * count, (ends, lb.connection_log()[-3:])


def test_passthrough_sessions_get_no_unframed_goodbye(brokers, fastmqtt):
    """WebSocket passthrough relays frames, not MQTT packets: a goodbye written between two
    "packets" would land raw inside the client's WebSocket stream. Such sessions are not
    tracked: they stay until grace ends, then close, and what the client reads is frames."""
    [node] = brokers(1)
    inner, outer = lb_port(), lb_port()
    fastmqtt(recipe([node], inner).replace('protocol = "mqtt"', 'protocol = "ws"'), port=inner)
    config = recipe([], outer, backend='ws_backend = "passthrough"\n')
    config = config.replace('protocol = "mqtt"', 'protocol = "ws"')
    config = config.replace('grace = "2s"', 'grace = "1s"\ndrain_disconnect = true')
    config += f'[[backend.cluster.server]]\nname = "ws"\naddress = "127.0.0.1:{inner}"\n'
    lb = fastmqtt(config, port=outer)
    wire = Wire(outer, ws=True)
    wire.send(packets.connect("pass-v5", version=5) + packets.subscribe(1, "p/t", version=5))
    assert [p[0] for p in wire.packets(2)] == [0x20, 0x90]
    lb.signal(signal.SIGTERM)
    started = time.monotonic()
    assert wire.packets(1, timeout=5) == []  # no DISCONNECT, and nothing that is not a frame
    assert wire.eof and time.monotonic() - started < 4
    wire.close()
    assert lb.proc.wait(timeout=10) == 0
    assert any(line.endswith(" shutdown") for line in lb.connection_log())


def test_drain_disconnect_changed_by_a_reload_waits_for_a_restart(brokers, fastmqtt):
    """Whether a connection's packets are followed is decided when it starts, and following
    costs CPU on streams to the client: so a reload does not turn drain_disconnect on (the log
    says so), and at SIGTERM every MQTT 5 client, old or new, is treated the same."""
    [node] = brokers(1)
    port = lb_port()
    lb = fastmqtt(recipe([node], port), port=port)
    before = Client("before-reload", port, version=5)
    line = lb.reload(lb.config.replace('grace = "2s"', 'grace = "2s"\ndrain_disconnect = true'))
    assert " reloaded " in line
    after = Client("after-reload", port, version=5)
    lb.signal(signal.SIGTERM)
    assert lb.proc.wait(timeout=10) == 0
    assert wait_until(lambda: before.disconnected.is_set() and after.disconnected.is_set())
    reasons = [before.disconnect_reason, after.disconnect_reason]
    assert 0x8B not in reasons, reasons  # no goodbye: drain_disconnect was off at start
    assert "drain_disconnect: the change takes effect at the next restart" in lb.logs()
    for c in (before, after):
        c.mqtt.loop_stop()


class _SlowStoppingEngine(Engine):
    """The C engine, noting goodbye() requests that reach it once stop() has begun; its stop
    takes a while, as with many connections (a wide window for such a request)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.stopping = False
        self.late: list[int] = []

    def stop(self, grace: float = 0.0) -> None:
        self.stopping = True
        time.sleep(0.5)
        super().stop(grace)

    def goodbye(self, conn_id: int, packet: bytes) -> None:
        if self.stopping:
            self.late.append(conn_id)
        super().goodbye(conn_id, packet)


def test_goodbyes_stop_before_the_engine_stops(brokers, monkeypatch, tmp_path):
    """At the end of grace, goodbyes still being spread at drain_rate are cancelled before the
    engine stops, so no request reaches an engine that is halting (it would never be carried
    out, and its wake-up could hit an eventfd being closed)."""
    engines: list[_SlowStoppingEngine] = []

    def make_engine(threads: int) -> Engine:
        engines.append(_SlowStoppingEngine(threads=threads))
        return engines[-1]

    monkeypatch.setattr(runtime, "make_engine", make_engine)
    [node] = brokers(1)
    port = lb_port()
    text = recipe([node], port).replace('grace = "2s"', "drain_disconnect = true\ndrain_rate = 5")
    path = tmp_path / "lb.toml"
    path.write_text(text)
    config = load_config(path)

    async def drain() -> list[Client]:
        loop = asyncio.get_running_loop()
        proxy = runtime.Runtime(config, loop)
        proxy.start()
        clients = await loop.run_in_executor(
            None, lambda: [Client(f"v5-{i}", port, version=5, reconnect_on_failure=False)
                           for i in range(20)]
        )  # fmt: skip
        await proxy.shutdown(0.5)  # 5 goodbyes a second: most are still to come
        return clients

    clients = uvloop.run(drain())
    for client in clients:
        client.close()  # no reconnect attempts after the test
    assert engines[0].late == []
    said = [c for c in clients if c.disconnected.is_set() and c.disconnect_reason == 0x8B]
    assert 1 <= len(said) < 20  # some goodbyes were said, the rest were cut by grace
