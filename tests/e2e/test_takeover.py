"""Upgrade without a reconnect (takeover.py, docs/running.md): a new `fastmqtt serve --takeover
PATH` takes the listeners and the engine's connections over from the running process, which
then exits. Real Mosquitto, real sockets; the clients run in one asyncio loop (tests/support/
swarm.py) so that 2,000 of them fit in the test process."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Callable

import pytest

from fastmqtt import takeover
from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.tools.brokers import Mosquitto
from tests.e2e.test_admin import PASSWORD
from tests.e2e.test_clients import HALF_SENT, kick_the_half_sender
from tests.support.certs import make_certs, tls_line
from tests.support.lb import (
    Client,
    FastMQTT,
    close_all,
    lb_port,
    raw_connect,
    recipe,
    wait_until,
)
from tests.support.stats import Stats, stats_toml
from tests.support.swarm import Peer, Publisher, Subscriber, load_around

PING_EVERY = 3.0


def takeover_config(
    brokers: list[Mosquitto],
    port: int,
    stats_port: int,
    path: str,
    extra: str = "",
    user: str | None = None,
) -> str:
    config = recipe(brokers, port, frontend=extra) + stats_toml(stats_port, user)
    return config.replace("[global]\n", f'[global]\ntakeover_socket = "{path}"\n', 1)


def socket_path() -> str:
    return os.path.join(tempfile.mkdtemp(prefix="fmq-takeover-"), "takeover.sock")


def new_process(config: str, port: int, path: str, **env: str) -> FastMQTT:
    return FastMQTT(config, port=port, args=["--takeover", path], env=env).start()


def one_line(lb: FastMQTT, pattern: str, timeout: float = 20.0) -> re.Match:
    found: list[re.Match] = []

    def seen() -> bool:
        found[:] = [m for m in [re.search(pattern, lb.read("stderr.log"))] if m]
        return bool(found)

    assert wait_until(seen, timeout), f"no {pattern!r} in:\n{lb.logs()[-3000:]}"
    return found[0]


def run_swarm(
    port: int, clients: int, publishers: int, during: Callable[[], None]
) -> tuple[list[Peer], list[Publisher], Subscriber, float, float]:
    """Every pinger pings once before ``during`` (the takeover) and twice after it."""
    load = load_around(
        port, clients, publishers, during, PING_EVERY, 0.1, PING_EVERY + 1, 2 * PING_EVERY + 1
    )
    return asyncio.run(load)


@pytest.mark.skipif(NO_EXTENSIONS, reason="the connections are the C engine's")
@pytest.mark.parametrize(
    ("path", "clients"),
    [pytest.param("fast", 2000, marks=pytest.mark.serial), ("loop", 200)],  # 2,000: alone
)
def test_a_new_process_takes_every_connection_over_without_a_reconnect(
    brokers, fastmqtt, path: str, clients: int
) -> None:
    """2,000 pinging clients and 20 QoS 1 publishers: no disconnect, no new broker
    connection, every message exactly once, and the new process logs and counts them."""
    [broker] = brokers(1)
    port, stats_port, sock = lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock)
    if path == "loop":
        config = config.replace("[global]\n", "[global]\nfast_path = false\n", 1)
    old = fastmqtt(config, port=port)
    assert wait_until(lambda: os.path.exists(sock), 10)
    new: list[FastMQTT] = []
    frontends: list[dict] = []

    def take_over() -> None:
        new.append(new_process(config, port, sock))
        assert wait_until(lambda: old.proc.poll() is not None, 30), old.logs()[-3000:]
        time.sleep(0.5)  # the new process's counters are synced every 0.25 s
        frontends.extend(Stats(stats_port).json()["frontends"])

    pingers, pubs, sub, _, ended = run_swarm(port, clients, 20, take_over)
    [lb] = new
    try:
        assert old.proc.returncode == 0
        moved = int(one_line(old, r"takeover: (\d+) connections handed over").group(1))
        adopted = int(one_line(lb, r"takeover: adopted (\d+) connections").group(1))
        assert moved == adopted == clients + 21, (moved, adopted)
        lost = [p for p in [*pingers, *pubs, sub] if p.lost]
        assert not lost, [(p.client_id, p.lost) for p in lost[:5]]
        after = [p for p in pingers if not any(sent > ended for sent, _ in p.answered)]
        assert not after, "some pingers were not answered after the takeover"
        ids = broker.connected_client_ids()
        assert len(ids) == clients + 21 and len(set(ids)) == clients + 21, len(ids)
        acked = [m for p in pubs for m in p.acked]
        assert len(acked) > 20 * 50  # ~10 s at 10 a second each
        assert sub.received == dict.fromkeys(acked, 1), "lost or duplicated QoS 1 messages"
        # the new process counts them (stats, read right after the takeover) ...
        [frontend] = [fe for fe in frontends if fe["pxname"] == "mqtt"]
        assert frontend["scur"] == clients + 21, frontend
        # ... and logs each of them when it ends, with the bytes of its whole life
        assert wait_until(lambda: len(lines_of(lb, "ping-")) == clients, 20)
        for line in lines_of(lb, "pub-"):
            assert int(re.search(r" in=(\d+)", line).group(1)) > 40 * 20, line
        assert not old.connection_log() or all(
            'cid="ping-' not in x for x in old.connection_log()
        )  # fmt: skip
    finally:
        lb.stop()


@pytest.mark.skipif(NO_EXTENSIONS, reason="the connections are the C engine's")
def test_a_kick_right_after_the_takeover_lets_an_mqtt311_clients_publish_finish(
    brokers, fastmqtt
) -> None:
    """The old engine had relayed half of a 3.1.1 client's QoS 1 PUBLISH when it handed the
    connection over: the new process's kick (a close between two packets) waits for the rest,
    and the subscriber gets the whole message."""
    [broker] = brokers(1)
    port, stats_port, sock = lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock, user="ops")
    old = fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    assert wait_until(lambda: os.path.exists(sock), 10)
    subscriber = Client("watcher", broker.port)
    subscriber.subscribe("kick/t", qos=1)
    device = raw_connect(port, "half-sender")
    device.sendall(HALF_SENT[:2000])
    time.sleep(0.3)  # relayed by the old engine: it is inside the packet at the handover
    lb = new_process(config, port, sock, STATS_PW=PASSWORD)
    try:
        one_line(old, r"takeover: 1 connections handed over")
        one_line(lb, r"takeover: adopted 1 connections")
        kick_the_half_sender(stats_port, device, subscriber)
        assert wait_until(lambda: any(
            'cid="half-sender"' in x and x.endswith(" kicked") for x in lb.connection_log()
        ))  # fmt: skip
    finally:
        subscriber.close()
        device.close()
        lb.stop()


def lines_of(lb: FastMQTT, prefix: str) -> list[str]:
    return [x for x in lb.connection_log() if f'cid="{prefix}' in x]


def tls_client(client_id: str, port: int, context: ssl.SSLContext) -> Client:
    client = Client(client_id, port, connect=False)
    client.mqtt.tls_set_context(context)
    return client.connect()


@pytest.mark.skipif(NO_EXTENSIONS, reason="the plain connections are the C engine's")
def test_a_tls_client_drains_in_the_old_process_not_dropped(brokers, fastmqtt, tmp_path) -> None:
    [broker] = brokers(1)
    certs = make_certs(tmp_path)
    port, tls_port, stats_port, sock = lb_port(), lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock).replace(
        'grace = "2s"', 'grace = "4s"'
    )
    config += (
        f'\n[frontend.secure]\nbind = "127.0.0.1:{tls_port}"\nbackend = "cluster"\n'
        + tls_line(cert=certs.server)
    )
    old = fastmqtt(config, port=port)
    plain = [Client(f"plain-{i}", port) for i in range(5)]
    secure = tls_client("tls-0", tls_port, certs.client_context())
    secure.subscribe("t/secure", 1)
    lb = new_process(config, port, sock)
    try:
        line = one_line(old, r"takeover: (\d+) connections handed over .*; (\d+) on the event")
        assert (line.group(1), line.group(2)) == ("5", "1")
        secure.publish("t/secure", b"still here", 1)  # through the old process, draining
        assert secure.wait_message(5) and not secure.disconnected.is_set()
        assert wait_until(lambda: old.proc.poll() is not None, 15)
        assert wait_until(secure.disconnected.is_set, 5)  # closed when the grace ended
        assert any('cid="tls-0"' in x and x.endswith(" shutdown") for x in old.connection_log())
        assert not any(c.disconnected.is_set() for c in plain)
        tls_client("tls-1", tls_port, certs.client_context()).close()  # to the new process
        assert wait_until(lambda: any('cid="tls-1"' in x for x in lb.connection_log()), 10)
    finally:
        close_all([*plain, secure])
        lb.stop()


@pytest.mark.skipif(NO_EXTENSIONS, reason="compares two connection formats of the C engine")
def test_a_format_the_new_process_cannot_read_is_refused_and_the_old_one_drains(
    brokers, fastmqtt
) -> None:
    [broker] = brokers(1)
    port, stats_port, sock = lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock).replace(
        'grace = "2s"', 'grace = "3s"'
    )
    old = fastmqtt(config, port=port)
    clients = [Client(f"old-{i}", port) for i in range(3)]
    for c in clients:  # closed at the drain's end: no reconnect within the test (paho: 1 s)
        c.mqtt.reconnect_delay_set(60, 60)
    lb = new_process(config, port, sock, FASTMQTT_TAKEOVER_FORMAT="99")
    try:
        one_line(old, r"connections are not handed over, 3 drain")
        one_line(lb, r"connection formats differ")
        fresh = Client("new-0", port)  # the listener moved all the same
        clients[0].publish("t", b"x", 1)  # the old connections still work while they drain
        assert not any(c.disconnected.is_set() for c in clients)
        assert wait_until(lambda: old.proc.poll() is not None, 15)
        assert wait_until(lambda: all(c.disconnected.is_set() for c in clients), 5)
        assert not fresh.disconnected.is_set()
        fresh.close()
        assert wait_until(lambda: any('cid="new-0"' in x for x in lb.connection_log()), 10)
        assert sorted(broker.connected_client_ids()) == ["new-0", "old-0", "old-1", "old-2"]
    finally:
        close_all(clients)
        lb.stop()


@pytest.mark.skipif(not NO_EXTENSIONS, reason="without the C engine only listeners move")
def test_without_the_engine_only_the_listeners_move(brokers, fastmqtt) -> None:
    [broker] = brokers(1)
    port, stats_port, sock = lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock).replace(
        'grace = "2s"', 'grace = "3s"'
    )
    old = fastmqtt(config, port=port)
    clients = [Client(f"old-{i}", port) for i in range(3)]
    lb = new_process(config, port, sock)
    try:
        one_line(old, r"connections are not handed over, 3 drain")
        fresh = Client("new-0", port)
        assert wait_until(lambda: old.proc.poll() is not None, 15)
        assert wait_until(lambda: all(c.disconnected.is_set() for c in clients), 5)
        assert not fresh.disconnected.is_set()
        assert Stats(stats_port).json()  # the stats port moved too
        fresh.close()
    finally:
        close_all(clients)
        lb.stop()


def die_during_handover(path: str, after_ready: bool) -> float:
    """Play a new process that dies during the handover: HELLO, take the listeners, then
    close everything (before READY, or right after it). Returns when it died."""
    assert wait_until(lambda: os.path.exists(path), 10)  # offered once the process serves
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        hello = {"magic": takeover.MAGIC, "formats": [takeover.FORMAT], "pid": os.getpid()}
        takeover.send_json(sock, takeover.HELLO, hello)
        _, _, fds = takeover.recv_frame(sock, takeover.OFFER)
        for fd in fds:
            os.close(fd)
        if after_ready:
            # dead for reading before READY leaves: the first batch fails with EPIPE, where
            # a close after READY could race it (sent into the buffer, then dropped)
            sock.shutdown(socket.SHUT_RD)
            takeover.send_json(sock, takeover.READY, {})
    return time.monotonic()


@pytest.mark.skipif(NO_EXTENSIONS, reason="the connections are the C engine's")
def test_a_new_process_that_dies_before_taking_connections_leaves_the_old_one_serving(
    brokers, fastmqtt
) -> None:
    """Nothing was handed over yet: the old process accepts again, relays on, offers again."""
    [broker] = brokers(1)
    port, stats_port, sock = lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock)
    old = fastmqtt(config, port=port)
    clients = [Client(f"old-{i}", port) for i in range(5)]
    clients[0].subscribe("t/x", 1)
    die_during_handover(sock, after_ready=False)
    one_line(old, r"no connection was handed over: serving on")
    assert wait_until(lambda: os.path.exists(sock), 5)  # offered again
    clients[1].publish("t/x", b"still relayed", 1)
    assert clients[0].wait_message(5)
    fresh = Client("fresh-0", port)  # accepted by the old process again
    fresh.close()
    assert wait_until(lambda: any('cid="fresh-0"' in x for x in old.connection_log()), 10)
    assert old.proc.poll() is None and not any(c.disconnected.is_set() for c in clients)
    lb = new_process(config, port, sock)  # and a later takeover moves them all
    try:
        assert one_line(lb, r"takeover: adopted (\d+) connections").group(1) == "5"
        assert wait_until(lambda: old.proc.poll() is not None, 15)
        assert not any(c.disconnected.is_set() for c in clients)
        assert len(broker.connected_client_ids()) == 6
    finally:
        close_all(clients)
        lb.stop()


@pytest.mark.skipif(NO_EXTENSIONS, reason="the connections are the C engine's")
def test_a_new_process_that_dies_mid_handover_does_not_leave_connections_frozen(
    brokers, fastmqtt
) -> None:
    """The engine froze for the handover and cannot relay again: what was not sent is closed
    at once (its clients reconnect), not held frozen until the grace ends."""
    [broker] = brokers(1)
    port, stats_port, sock = lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock).replace(
        'grace = "2s"', 'grace = "30s"'
    )
    old = fastmqtt(config, port=port)
    clients = [Client(f"old-{i}", port) for i in range(20)]
    died = die_during_handover(sock, after_ready=True)
    one_line(old, r"takeover failed")
    closed = int(one_line(old, r"takeover: (\d+) connections not handed over were closed")[1])
    assert closed == len(clients)  # the new process died before the first batch could be sent
    assert wait_until(lambda: all(c.disconnected.is_set() for c in clients), 5)
    assert wait_until(lambda: old.proc.poll() is not None, 10)  # nothing left to drain
    assert time.monotonic() - died < 15 and old.proc.returncode == 0
    close_all(clients)


@pytest.mark.skipif(NO_EXTENSIONS, reason="the connections are the C engine's")
def test_workers_are_taken_over_by_the_new_workers_of_the_same_index(brokers, fastmqtt) -> None:
    """workers = 2: the supervisor gives its stats port, each worker its listeners and the
    engine's connections to the new worker of its index: no disconnect, no new broker
    connection, every QoS 1 message exactly once; the old supervisor and workers exit."""
    [broker] = brokers(1)
    port, stats_port, sock = lb_port(), lb_port(), socket_path()
    config = takeover_config([broker], port, stats_port, sock)
    config = config.replace("[global]\n", "[global]\nworkers = 2\n", 1)
    clients, publishers = 300, 4
    old = fastmqtt(config, port=port)
    assert wait_until(lambda: os.path.exists(sock), 10)
    new: list[FastMQTT] = []

    def take_over() -> None:
        new.append(new_process(config, port, sock))
        assert wait_until(lambda: old.proc.poll() is not None, 30), old.logs()[-3000:]

    pingers, pubs, sub, _, ended = run_swarm(port, clients, publishers, take_over)
    [lb] = new
    try:
        total = clients + publishers + 1
        assert old.proc.returncode == 0
        log_old, log_new = old.read("stderr.log"), lb.read("stderr.log")
        moved = [int(n) for n in re.findall(r"takeover: (\d+) connections handed over", log_old)]
        adopted = [int(n) for n in re.findall(r"takeover: adopted (\d+) connections", log_new)]
        assert len(moved) == len(adopted) == 2 and sum(moved) == sum(adopted) == total
        assert "handed over to supervisor pid" in log_old
        lost = [p for p in [*pingers, *pubs, sub] if p.lost]
        assert not lost, [(p.client_id, p.lost) for p in lost[:5]]
        after = [p for p in pingers if not any(sent > ended for sent, _ in p.answered)]
        assert not after, "some pingers were not answered after the takeover"
        ids = broker.connected_client_ids()
        assert len(ids) == total and len(set(ids)) == total, len(ids)
        acked = [m for p in pubs for m in p.acked]
        assert acked and sub.received == dict.fromkeys(acked, 1), "lost or duplicated QoS 1"
        assert Stats(stats_port).json()["frontends"]  # the stats port moved too
        assert wait_until(lambda: len(lines_of(lb, "ping-")) == clients, 20)
    finally:
        lb.stop()
