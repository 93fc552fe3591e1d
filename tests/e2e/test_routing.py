"""The HAProxy recipe end to end: real Mosquitto brokers, real clients, `fastmqtt serve`.
Tests that take ``path`` run on the engine's fast path and on the event-loop path."""

from __future__ import annotations

import collections
import socket
import threading
import time

import pytest

from fastmqtt import packets
from fastmqtt.proxy_protocol import parse as parse_proxy_header
from tests.e2e.conftest import PATHS
from tests.support.hostile import process_socket
from tests.support.lb import (
    Client,
    closed_by_peer,
    landed,
    lb_port,
    raw_connect,
    recipe,
    returning_device,
    wait_until,
    ws_client,
    ws_recipe,
)

pytestmark = pytest.mark.e2e


def _counts(brokers) -> dict[str, int]:
    return {b.name: len(b.connected_client_ids()) for b in brokers}


def test_quick_start_ten_clients_land_4_3_3(brokers, fastmqtt, path):
    nodes = brokers(3)
    port = lb_port()
    fastmqtt(recipe(nodes, port, backend='stick = { on = "client_id" }'), port=port)
    socks = [raw_connect(port, f"quick-{i}") for i in range(10)]
    assert wait_until(lambda: sum(_counts(nodes).values()) == 10)
    assert _counts(nodes) == {"node1": 4, "node2": 3, "node3": 3}
    for s in socks:
        s.close()


def test_weights_5_2_3_over_1000_connections(brokers, fastmqtt, path):
    nodes = brokers(3)
    port = lb_port()
    weights = {"node1": {"weight": 5}, "node2": {"weight": 2}, "node3": {"weight": 3}}
    fastmqtt(recipe(nodes, port, servers=weights), port=port)
    for i in range(1000):
        raw_connect(port, f"w-{i}").close()
    assert wait_until(lambda: sum(_counts(nodes).values()) == 1000, timeout=10)
    counts = _counts(nodes)
    for name, share in (("node1", 0.5), ("node2", 0.2), ("node3", 0.3)):
        assert abs(counts[name] / 1000 - share) <= 0.02, counts


# The client's transports: MQTT over TCP on each setup path, and over WebSocket (event loop).
TRANSPORTS = [pytest.param("tcp", p, id=f"tcp-{p}") for p in PATHS] + [
    pytest.param("ws", "loop", id="ws")
]


@pytest.mark.parametrize(("transport", "path"), TRANSPORTS, indirect=["path"])
@pytest.mark.parametrize("sticky", [True, False], ids=["stick-on", "stick-off"])
def test_persistent_session_follows_the_client(brokers, fastmqtt, path, transport, sticky):
    """Stickiness proved by broker state: a queued QoS 1 message reaches the reconnecting
    client only if it lands on the broker that holds its session."""
    nodes = brokers(3)
    port = lb_port()
    stick = 'stick = { on = "client_id", expire = "30m" }' if sticky else ""
    ws = transport == "ws"
    fastmqtt((ws_recipe if ws else recipe)(nodes, port, backend=stick), port=port)

    def connect() -> Client:
        return (ws_client if ws else Client)("device-42", port, clean=False)  # type: ignore[operator]

    device, got = returning_device(connect, nodes, wait=3 if sticky else 1.5)
    assert got is sticky
    if sticky:
        assert device.messages == [("devices/42/cmd", b"reboot")]
        assert device.session_present


def test_consistent_hash_is_shared_by_processes_and_moves_one_third(brokers, fastmqtt, path):
    nodes = brokers(3)
    ids = [f"sensor-{i:04d}" for i in range(600)]

    def route(active_nodes) -> dict[str, str]:
        placement: dict[str, str] = {}
        for node in nodes:
            node.restart()  # fresh logs: each routing round is read on its own
        port = lb_port()
        lb = fastmqtt(recipe(active_nodes, port, balance="consistent"), port=port)
        for cid in ids:
            raw_connect(port, cid).close()
        assert wait_until(lambda: len(landed(nodes)) == len(ids), timeout=10)
        placement = landed(nodes)
        lb.stop()
        return placement

    first = route(nodes)
    second = route(nodes)  # another fastmqtt process, same config
    assert first == second
    assert min(collections.Counter(first.values()).values()) > len(ids) / 6  # all nodes used
    without_node3 = route(nodes[:2])
    moved = [cid for cid in ids if first[cid] != without_node3[cid]]
    assert all(first[cid] == "node3" for cid in moved)  # only node3's clients move
    assert abs(len(moved) / len(ids) - 1 / 3) < 0.1


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http-request"),
        ("random", bytes(range(7, 200)), "not-connect"),
        ("reserved-flag", bytes.fromhex("100f00044d5154540403003c0003616263"), "reserved-flag"),
        ("huge", b"\x10" + packets.varint(1 << 20), "packet-too-large"),
        ("truncated", packets.connect("slow-client")[:9], "inspect-timeout"),
    ],
)
def test_rejections_never_reach_a_broker(brokers, fastmqtt, path, name, payload, reason):
    nodes = brokers(2)
    port = lb_port()
    lb = fastmqtt(recipe(nodes, port, inspect_delay="1s"), port=port)
    before = [n.tcp_connection_count() for n in nodes]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        started = time.monotonic()
        assert closed_by_peer(s, timeout=5)
        if reason == "inspect-timeout":
            assert time.monotonic() - started >= 0.9
    assert wait_until(lambda: any(line.endswith(f" {reason}") for line in lb.connection_log()))
    assert [n.tcp_connection_count() for n in nodes] == before


def test_dead_backend_is_retried_elsewhere_and_backup_waits(brokers, fastmqtt, path):
    primary1, primary2, standby = brokers(3)
    port = lb_port()
    lb = fastmqtt(
        recipe(
            [primary1, primary2, standby],
            port,
            backend="retries = 2\nredispatch = true",
            servers={"node3": {"backup": True}},
        ),
        port=port,
    )
    for i in range(6):
        raw_connect(port, f"before-{i}").close()
    assert "node3" not in landed([primary1, primary2, standby]).values()

    primary1.kill()
    for i in range(20):
        raw_connect(port, f"after-{i}").close()  # raises if any client fails
    where = landed([primary2, standby])
    assert all(where.get(f"after-{i}") == "node2" for i in range(20))

    primary2.kill()
    for i in range(5):
        raw_connect(port, f"standby-{i}").close()
    assert all(landed([standby]).get(f"standby-{i}") == "node3" for i in range(5))
    assert lb.proc is not None and lb.proc.poll() is None


def test_proxy_v2_header_carries_the_client_address(fastmqtt):
    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(10)
    bport = backend.getsockname()[1]
    port = lb_port()
    fastmqtt(
        f'[frontend.mqtt]\nbind = "127.0.0.1:{port}"\nprotocol = "tcp"\nbackend = "b"\n'
        f'[backend.b]\nsend_proxy = "v2"\n'
        f'[[backend.b.server]]\nname = "probe"\naddress = "127.0.0.1:{bport}"\n',
        port=port,
    )
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"hello")
    for _ in range(3):  # the fixture's readiness probe was relayed too: skip it
        conn, _ = backend.accept()
        conn.settimeout(5)
        data = b""
        while (header := parse_proxy_header(data)) is None or len(data) < header.length + 5:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        if data.endswith(b"hello"):
            break
        conn.close()
    assert header is not None
    assert header.version == 2 and header.command == "PROXY"
    assert header.src == client.getsockname()
    assert header.dst == ("127.0.0.1", port)
    assert data[header.length :] == b"hello"
    for s in (client, conn, backend):
        s.close()


def test_v5_assigned_client_id_is_learned_for_stickiness(brokers, fastmqtt, path):
    nodes = brokers(3)
    port = lb_port()
    fastmqtt(recipe(nodes, port, backend='stick = { on = "client_id" }'), port=port)
    Client("", port, version=5).close()
    assert wait_until(lambda: len(landed(nodes)) == 1)
    [(assigned, home)] = landed(nodes).items()
    assert assigned.startswith("auto-"), "mosquitto assigns ids to v5 clients that send none"
    # without learning, round robin would send the next three connections to node2, node3, node1
    for _ in range(3):
        Client(assigned, port, version=5).close()
    assert wait_until(lambda: sum(_counts(nodes).values()) == 4)
    assert _counts(nodes)[home] == 4


def test_a_server_that_closes_before_connack_is_retried_elsewhere(brokers, fastmqtt, path):
    """A node that accepts TCP but hangs up without a word (dying, or not MQTT): the client
    never notices, its CONNECT goes to the next server (HAProxy: retry-on empty-response)."""
    [node] = brokers(1)
    closer = socket.create_server(("127.0.0.1", 0))
    closer.settimeout(0.2)
    stop = threading.Event()

    def hang_up() -> None:
        while not stop.is_set():
            try:
                closer.accept()[0].close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    port = lb_port()
    closer_address = f"127.0.0.1:{closer.getsockname()[1]}"
    servers = (
        f'[[backend.cluster.server]]\nname = "closer"\naddress = "{closer_address}"\n'
        f'[[backend.cluster.server]]\nname = "node1"\naddress = "{node.address}"\n'
    )
    config = recipe([], port, backend="retries = 2\nredispatch = true") + servers
    lb = fastmqtt(config, port=port)
    try:
        for i in range(10):
            raw_connect(port, f"retried-{i}").close()  # raises if one is refused
    finally:
        stop.set()
        thread.join(5)  # before the close, so accept() never meets a closed socket
        closer.close()
    assert sum(cid.startswith("retried-") for cid in landed([node])) == 10
    assert not any("retried-" in line and "closer" in line for line in lb.connection_log())


@pytest.mark.parametrize("implementation", ["cython", "python"])
def test_accepted_client_sockets_have_nodelay(brokers, fastmqtt, implementation):
    """Nagle on the client side holds a broker's small PUBLISH behind an unacknowledged one
    (milliseconds of latency at tens of thousands of messages a second): every accepted
    socket gets TCP_NODELAY, read here from the very socket fastmqtt holds."""
    nodes = brokers(1)
    port = lb_port()
    env = {"FASTMQTT_NO_EXTENSIONS": "1" if implementation == "python" else "0"}
    # Inspection outlasts the test (pytest's timeout is 5 min): a 2 s inspect_delay closed
    # the CONNECT-less socket before a busy machine got to read it.
    lb = fastmqtt(recipe(nodes, port, inspect_delay="10m"), port=port, env=env)
    assert wait_until(lambda: f"({implementation}) listening" in lb.logs())
    inspecting = socket.create_connection(("127.0.0.1", port), timeout=5)  # no CONNECT yet
    relayed = raw_connect(port, "nodelay")  # handed over to the relay
    try:
        for client in (inspecting, relayed):
            with process_socket(lb.proc.pid, port, client.getsockname()[1]) as held:
                assert held.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        inspecting.close()
        relayed.close()
