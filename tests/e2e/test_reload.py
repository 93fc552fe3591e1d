"""Hitless reload: SIGHUP applies a new config while thousands of clients stay connected."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest

from fastmqtt import packets
from fastmqtt.parse import inspect_connack
from fastmqtt.tools.brokers import free_port, wait_for_port
from tests.e2e.conftest import PATHS, on_path
from tests.support.certs import Certs, make_certs, tls_line
from tests.support.lb import landed, lb_port, raw_connect, servers_toml, wait_until
from tests.support.stats import Stats, checked_recipe

pytestmark = pytest.mark.e2e

PINGRESP = b"\xd0\x00"


def config_text(listeners: dict[str, int], nodes, weights: dict[str, int] | None = None) -> str:
    frontends = "".join(
        f'[frontend.{name}]\nbind = "127.0.0.1:{port}"\nbackend = "cluster"\n\n'
        for name, port in listeners.items()
    )
    servers = {n.name: {"weight": (weights or {}).get(n.name, 1)} for n in nodes}
    return (
        '[global]\ngrace = "1s"\n[defaults]\ninspect_delay = "5s"\n\n'
        + frontends
        + '[backend.cluster]\nstick = { on = "client_id" }\n'
        + servers_toml("cluster", nodes, **servers)
    )


async def _connect(port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(packets.connect(client_id, keepalive=0))
    data = b""
    while inspect_connack(data) is None:
        chunk = await asyncio.wait_for(reader.read(16), 10)
        assert chunk, f"{client_id} closed before CONNACK"
        data += chunk
    return reader, writer


async def _alive(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    """One publish and a ping: the connection still reaches a broker."""
    reader, writer = conn
    try:
        writer.write(packets.publish("reload/t", b"x") + packets.PINGREQ)
        return await asyncio.wait_for(reader.readexactly(2), 10) == PINGRESP
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return False


async def _connect_many(port: int, prefix: str, count: int, batch: int = 100) -> list:
    conns = []
    for start in range(0, count, batch):
        conns += await asyncio.gather(
            *(_connect(port, f"{prefix}-{i}") for i in range(start, min(count, start + batch)))
        )
    return conns


async def _all_alive(conns: list) -> list[bool]:
    return list(await asyncio.gather(*(_alive(c) for c in conns)))


async def _close_all(conns: list) -> None:
    for _reader, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _r, w in conns), return_exceptions=True)


def test_reloads_keep_every_client_connected(brokers, fastmqtt, path):
    node1, node2, node3, node4 = brokers(4)
    ports = {"a": lb_port(), "b": lb_port(), "c": lb_port()}

    def config(*args: object, **kwargs: object) -> str:  # every reload keeps the path
        return on_path(config_text(*args, **kwargs), path)  # type: ignore[arg-type]

    lb = fastmqtt(config({"a": ports["a"], "b": ports["b"]}, [node1, node2]), port=ports["a"])
    loop = asyncio.new_event_loop()
    stay: list = []
    leave: list = []
    try:
        stay = loop.run_until_complete(_connect_many(ports["a"], "stay", 1800))
        leave = loop.run_until_complete(_connect_many(ports["b"], "leave", 200))

        # 1: add a server - new clients reach it, old ones are untouched
        assert " reloaded " in lb.reload(
            config({"a": ports["a"], "b": ports["b"]}, [node1, node2, node3])
        )
        assert all(loop.run_until_complete(_all_alive(stay + leave)))
        for i in range(30):
            raw_connect(ports["a"], f"new-{i}").close()
        assert wait_until(lambda: sum(c.startswith("new-") for c in landed([node3])) >= 9)

        # 2: change weights
        heavy = config({"a": ports["a"], "b": ports["b"]}, [node1, node2, node3], {"node1": 8})
        assert " reloaded " in lb.reload(heavy)
        for i in range(100):
            raw_connect(ports["a"], f"heavy-{i}").close()
        assert wait_until(lambda: sum(c.startswith("heavy-") for c in landed([node1])) >= 75)
        assert all(loop.run_until_complete(_all_alive(stay + leave)))

        # an invalid config is refused and changes nothing
        assert "reload refused" in lb.reload("[frontend.x]\nbind = 5\n")
        raw_connect(ports["b"], "still-b").close()

        # 3: remove listener b, add listener c
        third = config({"a": ports["a"], "c": ports["c"]}, [node1, node2, node3])
        assert " reloaded " in lb.reload(third)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["b"]), timeout=2)
        raw_connect(ports["c"], "on-c").close()
        assert all(loop.run_until_complete(_all_alive(stay)))

        # 4: a server keeps its name and moves: new clients reach its new address
        moved = SimpleNamespace(name="node3", address=node4.address)
        assert " reloaded " in lb.reload(config({"a": ports["a"]}, [node1, node2, moved]))
        for i in range(9):
            raw_connect(ports["a"], f"moved-{i}").close()
        assert wait_until(lambda: sum(c.startswith("moved-") for c in landed([node4])) >= 3)
        assert not any(c.startswith("moved-") for c in landed([node3]))
    finally:
        loop.run_until_complete(_close_all(stay + leave))
        loop.close()
    assert lb.proc is not None and lb.proc.poll() is None


# -- what a reload keeps: health state; what a refused one leaves: everything ---------------

CHECK = 'type = "tcp", interval = "300ms", timeout = "2s", rise = 2, fall = 1'


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _tls_frontend(name: str, port: int, certs: Certs, alpn: list[str]) -> str:
    tls = tls_line(cert=certs.server, alpn=alpn)
    return f'\n[frontend.{name}]\nbind = "127.0.0.1:{port}"\nbackend = "cluster"\n{tls}'


def _alpn(port: int, certs: Certs, offer: list[str]) -> str | None:
    """The ALPN protocol the frontend on ``port`` selects for a client offering ``offer``."""
    context = certs.client_context()
    context.set_alpn_protocols(offer)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.selected_alpn_protocol()


def _goes_down(stats: Stats, broker) -> bool:
    """Health checks still run: a killed broker is marked DOWN."""
    broker.stop()
    return wait_until(lambda: stats.state(broker.name) == "DOWN", timeout=5)


def test_a_refused_reload_keeps_health_checks_and_opens_no_listener(brokers, fastmqtt, certs):
    """A new frontend whose ALPN name cannot be offered (longer than 255 bytes) refuses the
    reload before anything changed: no listener bound, health checks still running."""
    node1, node2 = brokers(2)
    port, stats_port, extra = lb_port(), free_port(), lb_port()
    config = checked_recipe([node1, node2], port, stats_port, CHECK)
    lb = fastmqtt(config, port=port)
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    answer = lb.reload(config + _tls_frontend("extra", extra, certs, ["x" * 256]))
    assert "reload refused" in answer and "frontend.extra.tls.alpn[0]" in answer, answer
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", extra), timeout=2)
    assert _goes_down(Stats(stats_port), node2)
    for i in range(4):  # node2 is out of rotation: every client lands on node1
        raw_connect(port, f"after-refusal-{i}").close()


@pytest.mark.parametrize("alpn", ["x" * 256, "mqtté"], ids=["256-bytes", "non-ascii"])
def test_unusable_tls_of_a_kept_frontend_keeps_its_certificates_and_the_reload_applies(
    brokers, fastmqtt, certs, alpn
):
    """A kept TLS frontend given an ALPN name OpenSSL refuses (an SSLError, a ValueError: the
    reload used to stop half-way, health checks off and new listeners bound but never
    accepting) keeps its contexts, logged; the rest of the reload applies."""
    node1, node2 = brokers(2)
    port, stats_port, tls_port, extra = lb_port(), free_port(), lb_port(), lb_port()
    config = checked_recipe([node1, node2], port, stats_port, CHECK)
    lb = fastmqtt(config + _tls_frontend("secure", tls_port, certs, ["mqtt"]), port=port)
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    assert _alpn(tls_port, certs, ["mqtt"]) == "mqtt"
    added = f'\n[frontend.extra]\nbind = "127.0.0.1:{extra}"\nbackend = "cluster"\n'
    answer = lb.reload(config + added + _tls_frontend("secure", tls_port, certs, [alpn]))
    assert " reloaded " in answer, answer
    assert "frontend secure: keeping the previous certificates" in lb.logs()
    assert "frontend.secure.tls.alpn[0]" in lb.logs()
    assert _alpn(tls_port, certs, ["mqtt"]) == "mqtt"
    raw_connect(extra, "via-the-new-listener").close()  # it accepts
    assert _goes_down(Stats(stats_port), node2)


def test_a_reload_keeps_a_dead_server_down_with_its_history(brokers, fastmqtt):
    """docs/running.md: a server that stays keeps its live state. An unchanged SIGHUP while a
    broker is dead must not put it back in rotation: with retries = 0 every client it got
    would be closed."""
    node1, node2 = brokers(2)
    port, stats_port = lb_port(), free_port()
    check = 'type = "tcp", interval = "2s", timeout = "1s", rise = 2, fall = 1'
    config = checked_recipe([node1, node2], port, stats_port, check, backend="retries = 0\n")
    lb = fastmqtt(config, port=port)
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    stats = Stats(stats_port)
    node2.stop()
    assert wait_until(lambda: stats.state("node2") == "DOWN", timeout=6)
    before = stats.servers()["node2"]
    assert " reloaded " in lb.reload(config)
    after = stats.servers()["node2"]
    assert (after["state"], after["status"]) == ("DOWN", "DOWN")
    assert (after["chkdown"], after["check_status"]) == (1, "L4CON")
    assert after["chkfail"] >= before["chkfail"] >= 1
    assert after["downtime"] >= before["downtime"]
    for i in range(10):  # right after the reload, before any new probe
        raw_connect(port, f"after-reload-{i}").close()
    assert wait_until(lambda: stats.servers()["node2"]["chkfail"] > before["chkfail"])
    assert stats.state("node2") == "DOWN"


@pytest.mark.skipif(PATHS == ["loop"], reason="one path only without compiled extensions")
def test_a_reload_moves_a_frontend_between_paths(brokers, fastmqtt):
    """fast_path switched by a reload: the socket changes acceptor (one at a time), clients
    keep getting in, and a frontend dropped afterwards stops accepting."""
    nodes = brokers(2)
    a, b = lb_port(), lb_port()
    both = config_text({"a": a, "b": b}, nodes)
    lb = fastmqtt(on_path(both, "loop"), port=a)
    for step, text in enumerate([both, on_path(both, "loop"), both]):
        assert " reloaded " in lb.reload(text)
        expected = "(fast path)" if step != 1 else "(event-loop path (fast_path = false))"
        assert lb.read("stderr.log").splitlines()[-1].endswith(f"b=127.0.0.1:{b} {expected}")
        for i in range(20):  # fds of closed clients come back while the acceptor changes
            raw_connect(a, f"s{step}-a{i}").close()
            raw_connect(b, f"s{step}-b{i}").close()
    assert " reloaded " in lb.reload(on_path(config_text({"a": a}, nodes), "loop"))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", b), timeout=2)
    for i in range(20):
        raw_connect(a, f"last-{i}").close()


def test_a_reload_with_new_rules_keeps_the_limits_state(brokers, fastmqtt, path):
    """New rules apply at once; limits left as they were keep counting (access.Guard
    .reconfigure): the source holding its one connection still cannot open a second."""
    nodes = brokers(1)
    port = lb_port()
    text = config_text({"mqtt": port}, nodes).replace(
        'backend = "cluster"\n', 'backend = "cluster"\nrate_limit = { max_per_source = 1 }\n', 1
    )
    lb = fastmqtt(on_path(text, path), port=port)
    held = raw_connect(port, "held")
    try:
        rule = '[[frontend.mqtt.rule]]\naction = "deny"\nsource = "127.0.0.2"\n\n'
        ruled = text.replace("[backend.", rule + "[backend.", 1)
        assert " reloaded " in lb.reload(on_path(ruled, path))
        assert _answer(port, "second") == b""  # still one connection from 127.0.0.1
        assert _answer(port, "denied", "127.0.0.2") == b""
        assert _answer(port, "other", "127.0.0.3") == packets.connack(0)
        held.close()
        assert wait_until(lambda: _answer(port, "third") == packets.connack(0))

        def logged() -> set[str]:  # the engine's records reach the log in batches
            return {line.rsplit(" ", 1)[-1] for line in lb.connection_log()}

        assert wait_until(lambda: {"max-per-source", "denied-rule-0"} <= logged()), logged()
    finally:
        held.close()


def _answer(port: int, client_id: str, source: str = "127.0.0.1") -> bytes:
    """The first bytes a client gets back for its CONNECT (b"": closed without a word)."""
    with socket.create_connection(("127.0.0.1", port), 10, (source, 0)) as sock:
        sock.sendall(packets.connect(client_id))
        try:
            return sock.recv(4)
        except ConnectionResetError:
            return b""
