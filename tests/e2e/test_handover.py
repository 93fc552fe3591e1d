"""The hand-over from routing to the relay, on every path that goes through the event-loop relay
(TLS, WebSocket bridge and passthrough, and plain TCP under FASTMQTT_NO_EXTENSIONS=1).

Routing has read bytes from both sides (the CONNECT and what came with it, the CONNACK and what
came after it) when the relay takes over; bytes and EOF keep arriving meanwhile. Whatever the
timing, each side must get the other's bytes in the order they were sent, none lost, and an
EOF seen during the hand-over must still end the pair. The races are narrow, so each case is
repeated (bounded in count and time)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fastmqtt import packets
from fastmqtt.tools.brokers import Mosquitto
from tests.support.certs import Certs, make_certs, tls_line
from tests.support.lb import Client, FastMQTT, lb_port, recipe, wait_until
from tests.support.wire import Wire

pytestmark = pytest.mark.e2e

TRIES = 50
NO_EXT = {"FASTMQTT_NO_EXTENSIONS": "1"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@dataclass
class Path:
    """How a test client reaches the broker: ``wire()`` opens one raw connection."""

    name: str
    port: int
    certs: Certs | None
    ws: bool
    node: Mosquitto
    lb: FastMQTT

    def wire(self) -> Wire:
        tls = self.certs.client_context() if self.certs else None
        return Wire(self.port, tls=tls, ws=self.ws)


PATHS = ["tls", "ws", "wss", "wss-passthrough", "tcp-no-extensions", "tls-no-extensions"]


@pytest.fixture(params=PATHS)
def path(request, brokers, fastmqtt, certs) -> Iterator[Path]:
    name: str = request.param
    [node] = brokers(1)
    port = lb_port()
    tls = tls_line(cert=certs.server) if name.startswith(("tls", "wss")) else ""
    env = NO_EXT if name.endswith("no-extensions") else {}
    config = recipe([node], port, frontend=tls, defaults='timeout_client = "240s"\n')
    if name.startswith("ws"):
        config = config.replace('protocol = "mqtt"', 'protocol = "ws"', 1)
    if name == "wss-passthrough":  # -> a second fastmqtt in bridge mode -> the broker
        inner = lb_port()
        fastmqtt(recipe([node], inner).replace('protocol = "mqtt"', 'protocol = "ws"'), port=inner)
        config = recipe([], port, frontend=tls, backend='ws_backend = "passthrough"\n')
        config = config.replace('protocol = "mqtt"', 'protocol = "ws"', 1)
        config += f'[[backend.cluster.server]]\nname = "ws"\naddress = "127.0.0.1:{inner}"\n'
    lb = fastmqtt(config, port=port, env=env)
    yield Path(name, port, certs if tls else None, name.startswith("ws"), node, lb)


def kinds(found: list[bytes]) -> list[int]:
    return [p[0] & 0xF0 for p in found]


def test_pipelined_subscribe_is_answered_after_the_connack(path: Path) -> None:
    """CONNECT and SUBSCRIBE in one write (a client need not wait for the CONNACK): the CONNACK
    comes first, then the SUBACK."""
    wrong = []
    for i in range(TRIES):
        wire = path.wire()
        wire.send(packets.connect(f"pipe-{i}") + packets.subscribe(1, f"t/pipe/{i}"))
        got = wire.packets(2)
        wire.close()
        if kinds(got) != [0x20, 0x90]:
            wrong.append((i, [p.hex() for p in got]))
    assert not wrong, f"{len(wrong)}/{TRIES} out of order: {wrong[:3]}"


def _sequence(count: int, size: int = 100) -> list[bytes]:
    return [f"{n:08d}".encode() + b"p" * (size - 8) for n in range(count)]


class Subscriber:
    """A client straight at the broker that collects what is published on ``topic``."""

    def __init__(self, node: Mosquitto, topic: str, qos: int = 0) -> None:
        self.client = Client(f"sub-{topic.replace('/', '-')}", node.port)
        self.client.subscribe(topic, qos)

    def payloads(self) -> list[bytes]:
        return [payload for _topic, payload in self.client.messages]

    def close(self) -> None:
        self.client.close()


def test_connect_and_hundreds_of_publishes_arrive_whole_and_in_order(path: Path) -> None:
    """CONNECT + 900 QoS 0 PUBLISH in a few writes, while routing is still going on: the broker
    gets every message, in order, none corrupted."""
    count, tries = 900, 8
    for t in range(tries):
        topic = f"seq/{t}"
        sub = Subscriber(path.node, topic)
        wire = path.wire()
        stream = packets.connect(f"pub-{t}") + b"".join(
            packets.publish(topic, p) for p in _sequence(count)
        )
        for start in range(0, len(stream), 16384):  # several writes, several frames
            wire.send(stream[start : start + 16384])
        wire.send(packets.DISCONNECT)
        assert wait_until(lambda s=sub: len(s.payloads()) >= count, timeout=10)
        wire.close()
        sub.close()
        assert sub.payloads() == _sequence(count), f"try {t}"


def test_queued_messages_of_a_persistent_session_follow_the_connack(path: Path) -> None:
    """A device with a persistent session comes back while QoS 1 messages wait for it: the
    broker sends them right behind the CONNACK, and the device must read them behind it."""
    backlog, tries = 20, 20  # Mosquitto sends 20 unacknowledged QoS 1 messages at most
    for t in range(tries):
        client_id, topic = f"backlog-{t}", f"backlog/{t}"
        device = Client(client_id, path.node.port, clean=False)
        device.subscribe(topic, qos=1)
        device.close()
        publisher = Client(f"publisher-{t}", path.node.port)
        for payload in _sequence(backlog, 1000):
            publisher.publish(topic, payload, qos=1)
        publisher.close()
        wire = path.wire()
        wire.send(packets.connect(client_id, clean=False))
        got = wire.packets(1 + backlog)
        wire.close()
        assert kinds(got) == [0x20] + [0x30] * backlog, f"try {t}: {[p[:4].hex() for p in got]}"
        assert got[0][2] == 1  # session present
        assert [p[-1000:] for p in got[1:]] == _sequence(backlog, 1000), f"try {t}"


def _closed_at_broker(node: Mosquitto, client_id: str) -> bool:
    log = node.read_log()
    return f"Client {client_id} closed its connection" in log or (
        f"Client {client_id} disconnected" in log
    )


def test_client_that_closes_right_after_its_connect_is_gone_from_the_broker(path: Path) -> None:
    """CONNECT + a PUBLISH, then close at once: the PUBLISH reaches the broker and the broker
    sees the close at once (within seconds on a busy machine, not after timeout_client's 240 s:
    no ghost session)."""
    tries = 20
    sub = Subscriber(path.node, "last/words")
    for t in range(tries):
        client_id = f"brief-{t}"
        wire = path.wire()
        wire.send(packets.connect(client_id) + packets.publish("last/words", b"%d" % t))
        wire.close()
        assert wait_until(lambda c=client_id: _closed_at_broker(path.node, c), timeout=10), (
            f"try {t}: {client_id} still connected at the broker: "
            f"{path.node.read_log()[-400:]} {path.lb.connection_log()[-2:]}"
        )
    assert wait_until(lambda: len(sub.payloads()) == tries)
    assert sorted(sub.payloads(), key=int) == [b"%d" % t for t in range(tries)]
    sub.close()


def test_pipelined_clients_in_parallel(path: Path) -> None:
    """The same races with several clients at once (the hand-over of one overlaps another's
    routing): every client gets CONNACK then SUBACK, then its own echo."""
    errors: list[str] = []

    def one(i: int) -> None:
        wire = path.wire()
        try:
            topic = f"par/{i}"
            wire.send(
                packets.connect(f"par-{i}")
                + packets.subscribe(1, topic)
                + packets.publish(topic, b"echo %d" % i)
            )
            got = wire.packets(3)
            if kinds(got) != [0x20, 0x90, 0x30] or not got[2].endswith(b"echo %d" % i):
                errors.append(f"{i}: {[p.hex() for p in got]}")
        finally:
            wire.close()

    deadline = time.monotonic() + 60
    for batch in range(5):
        threads = [threading.Thread(target=one, args=(batch * 10 + i,)) for i in range(10)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(max(1.0, deadline - time.monotonic()))
    assert not errors, errors[:3]
