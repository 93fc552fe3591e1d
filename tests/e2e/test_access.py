"""Access rules and per-client-id pacing through a running fastmqtt to real Mosquitto brokers:
deny by source address and username, route a tenant's client ids to its own backend, refuse
empty client ids with a CONNACK, and slow a reconnect loop down instead of refusing it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fastmqtt import packets
from fastmqtt.brokers import Mosquitto, free_port, start_brokers
from tests.support.hostile import read_until_closed
from tests.support.lb import FastMQTT, landed, raw_connect, recipe, servers_toml, wait_until

RULES = """reject_with_connack = true
deny_empty_client_id = true
rate_limit = { per_client_id = "2/s", max_delay = "5s" }

[[frontend.mqtt.rule]]
action = "deny"
source = "127.0.0.2"

[[frontend.mqtt.rule]]
action = "route"
client_id = "tenant-a/*"
backend = "tenant_a"

[[frontend.mqtt.rule]]
action = "deny"
username = "guest*"
"""


@dataclass
class Setup:
    lb: FastMQTT
    port: int
    shared: Mosquitto
    tenant: Mosquitto

    def ended(self, reason: str) -> int:
        """Connections logged with this end reason so far."""
        return sum(line.endswith(f" {reason}") for line in self.lb.connection_log())

    def logged_once_more(self, reason: str, before: int) -> bool:
        return wait_until(lambda: self.ended(reason) == before + 1)


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    shared, tenant = start_brokers(2)
    port = free_port()
    config = recipe([shared], port, frontend=RULES) + "\n[backend.tenant_a]\n"
    lb = FastMQTT(config + servers_toml("tenant_a", [tenant]), port=port)
    try:
        yield Setup(lb.start(), port, shared, tenant)
    finally:
        lb.stop()
        shared.stop()
        tenant.stop()


def _answer(port: int, connect: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.sendall(connect)
        return read_until_closed(sock)


def test_denied_source_is_closed_before_anything_is_read(setup: Setup) -> None:
    brokers_before = setup.shared.tcp_connection_count() + setup.tenant.tcp_connection_count()
    logged = setup.ended("denied-rule-0")
    assert _answer(setup.port, packets.connect("from-2"), source="127.0.0.2") == b""
    assert setup.logged_once_more("denied-rule-0", logged)
    after = setup.shared.tcp_connection_count() + setup.tenant.tcp_connection_count()
    assert after == brokers_before


def test_tenant_client_ids_go_to_their_backend(setup: Setup) -> None:
    for client_id in ("tenant-a/dev-1", "tenant-a/dev-2", "plain-dev-1"):
        raw_connect(setup.port, client_id).close()
    assert wait_until(lambda: len(landed([setup.shared, setup.tenant])) >= 3)
    where = landed([setup.shared, setup.tenant])
    assert where["tenant-a/dev-1"] == where["tenant-a/dev-2"] == setup.tenant.name
    assert where["plain-dev-1"] == setup.shared.name


@pytest.mark.parametrize(("version", "code"), [(4, 5), (5, 0x87)])
def test_denied_username_gets_not_authorized(setup: Setup, version: int, code: int) -> None:
    logged = setup.ended("denied-rule-2")
    answer = _answer(setup.port, packets.connect("g", version=version, username="guest-7"))
    assert answer == packets.connack(code, version)
    assert setup.logged_once_more("denied-rule-2", logged)


@pytest.mark.parametrize(("version", "code"), [(4, 2), (5, 0x85)])
def test_empty_client_id_gets_identifier_rejected(setup: Setup, version: int, code: int) -> None:
    logged = setup.ended("empty-client-id")
    answer = _answer(setup.port, packets.connect("", version=version))
    assert answer == packets.connack(code, version)
    assert setup.logged_once_more("empty-client-id", logged)


def test_reconnect_loop_is_slowed_not_refused(setup: Setup) -> None:
    """2/s per client id: the first two go at once, each later one waits about 0.5 s."""
    started = time.monotonic()
    for _ in range(5):
        raw_connect(setup.port, "looping-device").close()
    looped = time.monotonic() - started
    started = time.monotonic()
    raw_connect(setup.port, "calm-device").close()
    calm = time.monotonic() - started
    print(f"5 reconnects of one id: {looped:.2f}s; another id: {calm:.3f}s")
    assert looped >= 1.3
    assert calm < 0.5


def test_reconnect_too_fast_is_refused_with_rate_exceeded(setup: Setup) -> None:
    """Past max_delay (5 s at 2/s: 2 at once and 10 queued), a v5 client is told 0x9F."""
    held = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", setup.port), timeout=10)
            sock.sendall(packets.connect("burst-device", version=5))
            held.append(sock)
        with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as late:
            late.sendall(packets.connect("burst-device", version=5))
            assert read_until_closed(late) == packets.connack(0x9F, 5)
        refused = 'cid="burst-device"'
        assert wait_until(
            lambda: any(
                refused in line and line.endswith(" reconnect-too-fast")
                for line in setup.lb.connection_log()
            )
        )
    finally:
        for sock in held:
            sock.close()
