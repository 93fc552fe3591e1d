"""The hostile-input catalogue through a running fastmqtt in front of a real Mosquitto.

Every case must be closed (or, on a ``reject_with_connack`` frontend, answered with the
CONNACK the spec allows and then closed), logged with its reason, never reach the broker, and
leave no file descriptor behind. One fastmqtt serves the whole module: two frontends on the
same backend, one that closes silently and one that answers with CONNACKs.
"""

from __future__ import annotations

import concurrent.futures
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fastmqtt import packets
from fastmqtt.packets import utf8
from fastmqtt.parse import inspect_connack
from fastmqtt.tools.brokers import Mosquitto, free_port, start_brokers
from tests.support.hostile import (
    Case,
    catalogue,
    fd_kinds,
    fd_targets,
    fds_back_to,
    raw_connect_packet,
    read_until_closed,
    rss_kib,
    send_and_read,
)
from tests.support.lb import FastMQTT, raw_connect, servers_toml, wait_until

INSPECT_DELAY = 1.0
CASES = catalogue()


@dataclass
class Harness:
    lb: FastMQTT
    broker: Mosquitto
    ports: dict[str, int]  # frontend name -> port
    fds: Counter[str]  # the fastmqtt process's open files by kind, once warmed up

    @property
    def pid(self) -> int:
        assert self.lb.proc is not None
        return self.lb.proc.pid

    def fds_settled(self) -> bool:
        return fds_back_to(self.pid, self.fds)


EXTRA = {
    "plain": "",
    "connack": "reject_with_connack = true\n",
    "trusting": 'accept_proxy = true\ntrusted_proxies = ["10.0.0.0/8"]\n',  # not 127.0.0.1
}


def _config(ports: dict[str, int], broker: Mosquitto) -> str:
    frontends = "".join(
        f'[frontend.{name}]\nbind = "127.0.0.1:{port}"\nbackend = "cluster"\n'
        f'max_connect_size = "128KiB"\n{EXTRA[name]}\n'
        for name, port in ports.items()
    )
    return (
        f'[global]\ngrace = "1s"\n\n[defaults]\ninspect_delay = "{INSPECT_DELAY}s"\n\n'
        f"{frontends}[backend.cluster]\n" + servers_toml("cluster", [broker])
    )


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    (broker,) = start_brokers(1)
    ports = {name: free_port() for name in EXTRA}
    lb = FastMQTT(_config(ports, broker), port=ports["plain"])
    try:
        lb.start()
        raw_connect(ports["connack"], "warm-up").close()  # let uvloop allocate what it keeps
        harness = Harness(lb, broker, ports, Counter())
        assert wait_until(lambda: 'cid="warm-up"' in "".join(lb.connection_log()))
        harness.fds = fd_kinds(harness.pid)
        yield harness
    finally:
        lb.stop()
        broker.stop()


def _new_log_line(harness: Harness, before: int) -> str:
    assert wait_until(lambda: len(harness.lb.connection_log()) > before, timeout=5.0)
    return harness.lb.connection_log()[before]


@pytest.mark.parametrize("frontend", ["plain", "connack"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_refused_and_leaves_nothing(
    harness: Harness, case: Case, frontend: str
) -> None:
    broker_connections = harness.broker.tcp_connection_count()
    logged = len(harness.lb.connection_log())
    answer = send_and_read(harness.ports[frontend], case, timeout=INSPECT_DELAY + 5)
    expected = case.connack if frontend == "connack" else None
    assert answer == (expected or b""), f"{case.name}: answered {answer!r}"
    line = _new_log_line(harness, logged)
    assert line.endswith(f" {case.reason}"), line
    assert f" {frontend} -/- " in line  # never reached a backend
    assert harness.broker.tcp_connection_count() == broker_connections
    assert harness.fds_settled(), f"{fd_targets(harness.pid)} vs {harness.fds}"


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name.startswith("proxy-")], ids=lambda c: c.name
)
def test_proxy_header_from_an_untrusted_source_is_refused(harness: Harness, case: Case) -> None:
    """On a frontend that accepts PROXY headers from 10.0.0.0/8 only, 127.0.0.1 sending one
    is refused before anything else is read."""
    broker_connections = harness.broker.tcp_connection_count()
    logged = len(harness.lb.connection_log())
    assert send_and_read(harness.ports["trusting"], case) == b""
    line = _new_log_line(harness, logged)
    assert line.endswith(" untrusted-proxy-header"), line
    assert harness.broker.tcp_connection_count() == broker_connections
    assert harness.fds_settled()


@pytest.mark.parametrize("version", [4, 5])
def test_65535_byte_client_id_is_valid_and_reaches_the_broker(
    harness: Harness, version: int
) -> None:
    before = harness.broker.tcp_connection_count()
    with socket.create_connection(("127.0.0.1", harness.ports["connack"]), timeout=10) as sock:
        sock.sendall(packets.connect("d" * 65_535, version=version))
        sock.settimeout(5)
        connack = inspect_connack(sock.recv(64), version)
        assert connack is not None and connack.reason_code == 0  # fastmqtt never sends a 0
        sock.sendall(packets.DISCONNECT)
        read_until_closed(sock)
    assert harness.broker.tcp_connection_count() == before + 1


@pytest.mark.parametrize("level", [2, 6, 7, 0x7F, 0x86])
def test_unknown_protocol_level_gets_the_connack_mosquitto_sends(
    harness: Harness, level: int
) -> None:
    """[MQTT-3.1.2-2]: a client of an unknown level gets the 3.1.1 CONNACK `20 02 00 01`, the
    only one it can be expected to read; the 5.0 format belongs to level 5 alone."""
    case = Case("level", raw_connect_packet(2, utf8("c"), level=level), "bad-protocol-version")
    mosquitto = send_and_read(harness.broker.port, case)
    assert mosquitto == b"\x20\x02\x00\x01"
    assert send_and_read(harness.ports["connack"], case) == mosquitto


def test_refused_in_bulk_without_leaking(harness: Harness) -> None:
    """Thirty rounds of the whole catalogue at once, 16 clients at a time: no fd, no broker
    connection, and memory back to a plateau (RSS growth is allocator noise, not per-case)."""
    broker_connections = harness.broker.tcp_connection_count()
    rss_before = rss_kib(harness.pid)
    quick = [case for case in CASES if not case.hold]
    jobs = [(port, case) for _ in range(30) for case in quick for port in harness.ports.values()]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: send_and_read(*job), jobs))
    assert len(answers) == len(jobs)
    assert harness.broker.tcp_connection_count() == broker_connections
    assert harness.fds_settled(), f"{fd_targets(harness.pid)} vs {harness.fds}"
    growth = rss_kib(harness.pid) - rss_before
    print(f"bulk: {len(jobs)} refusals, RSS {growth:+d} KiB, fds {dict(fd_kinds(harness.pid))}")
    assert growth < 8 * 1024, f"RSS grew {growth} KiB over {len(jobs)} refused connections"


def test_empty_client_id_with_clean_session_is_not_hostile(harness: Harness) -> None:
    """A broker-assigned id is legal (3.1.1 3.1.3-6): it must reach the broker."""
    before = harness.broker.tcp_connection_count()
    with socket.create_connection(("127.0.0.1", harness.ports["plain"]), timeout=5) as sock:
        sock.sendall(raw_connect_packet(2, utf8("")))
        assert sock.recv(16) == packets.connack(0, 4)
    assert harness.broker.tcp_connection_count() == before + 1
