"""Access rules and per-client-id pacing through a running fastmqtt to real Mosquitto brokers:
deny by source address and username, route a tenant's client ids to its own backend, refuse
empty client ids with a CONNACK, and slow a reconnect loop down instead of refusing it.
Rules on sources and client-id prefixes run on both connection-setup paths; a username rule
keeps a frontend on the event loop."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from fastmqtt import packets
from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.proxy_protocol import encode_v2
from fastmqtt.tools.brokers import Mosquitto, free_port, start_brokers
from tests.e2e.conftest import PATHS, assert_path, on_path
from tests.support.hostile import read_until_closed, rss_kib
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
"""
USERNAME_RULE = """
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


def _setup(rules: str, path: str | None) -> Iterator[Setup]:
    shared, tenant = start_brokers(2)
    port = free_port()
    config = recipe([shared], port, frontend=rules) + "\n[backend.tenant_a]\n"
    lb = FastMQTT(on_path(config + servers_toml("tenant_a", [tenant]), path), port=port)
    try:
        lb.start()
        assert_path(lb, path)
        yield Setup(lb, port, shared, tenant)
    finally:
        lb.stop()
        shared.stop()
        tenant.stop()


@pytest.fixture(scope="module", params=PATHS)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield from _setup(RULES, request.param)


@pytest.fixture(scope="module")
def username_setup() -> Iterator[Setup]:
    yield from _setup(RULES + USERNAME_RULE, None)  # the username rule alone keeps it off


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
def test_denied_username_gets_not_authorized(
    username_setup: Setup, version: int, code: int
) -> None:
    setup = username_setup
    logged = setup.ended("denied-rule-2")
    answer = _answer(setup.port, packets.connect("g", version=version, username="guest-7"))
    assert answer == packets.connack(code, version)
    assert setup.logged_once_more("denied-rule-2", logged)
    reason = "rule 2: username" if not NO_EXTENSIONS else "compiled extensions are off"
    assert f"(event-loop path ({reason}))" in setup.lb.read("stderr.log")


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


def test_reconnect_too_fast_is_refused_with_rate_exceeded(brokers, fastmqtt) -> None:
    """Past max_delay (5 h at 2/h: 2 at once and 10 queued), a v5 client is told 0x9F.

    The 13th is refused if its CONNECT comes less than 30 min after the first (one token
    back). pytest stops any test after 5 min: a slow machine cannot turn the refusal into a
    wait. (At 2/s, the 13 CONNECTs had to be read within 0.5 s.)"""
    port = free_port()
    limits = 'reject_with_connack = true\nrate_limit = { per_client_id = "2/h", max_delay = "5h" }'
    lb = fastmqtt(recipe(brokers(1), port, frontend=limits), port=port)
    held = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(packets.connect("burst-device", version=5))
            held.append(sock)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as late:
            late.sendall(packets.connect("burst-device", version=5))
            assert read_until_closed(late) == packets.connack(0x9F, 5)
        refused = 'cid="burst-device"'
        assert wait_until(
            lambda: any(
                refused in line and line.endswith(" reconnect-too-fast")
                for line in lb.connection_log()
            )
        )
        raw_connect(port, "calm-device").close()  # paced per client id: another goes at once
    finally:
        for sock in held:
            sock.close()


def _mqtt_answer(port: int, connect: bytes, header: bytes = b"") -> bytes:
    """CONNECT (after an optional PROXY header) and what came back until the first byte of a
    CONNACK or the close: b"" when refused without a word."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(header + connect)
        try:
            return sock.recv(4)
        except ConnectionResetError:
            return b""


def test_a_flood_of_long_client_ids_holds_no_more_than_fixed_size_keys(brokers, fastmqtt, path):
    """per_client_id remembers every id before any broker answers: 1,000 ids of 65,000 bytes
    (62 MiB as strings) must cost the process about tracked x a few hundred bytes."""
    nodes = brokers(1)
    port = free_port()
    limits = 'rate_limit = { per_client_id = "1/m" }\n'
    lb = fastmqtt(recipe(nodes, port, frontend=limits), port=port)
    tail = "x" * 65_000

    def flood(prefix: str, count: int) -> list[bytes]:
        connects = (packets.connect(f"{prefix}-{i:05d}-{tail}") for i in range(count))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda c: _mqtt_answer(port, c), connects))

    assert flood("warm", 100) == [packets.connack(0, 4)] * 100  # allocator arenas warmed
    rss_before = rss_kib(lb.proc.pid)  # type: ignore[union-attr]
    assert flood("flood", 1000) == [packets.connack(0, 4)] * 1000
    growth = rss_kib(lb.proc.pid) - rss_before  # type: ignore[union-attr]
    print(f"1,000 ids of 65,000 bytes: RSS {growth:+d} KiB")
    assert growth < 8 * 1024


def _proxied(source: str, dest: str = "2001:db8::fe") -> bytes:
    return encode_v2((source, 40000), (dest, 1883))


@pytest.fixture
def behind_a_balancer(brokers, fastmqtt) -> Callable[[str], int]:
    """fastmqtt behind a trusted balancer that reports the clients' addresses, with
    ``rate_limit`` keys given by the test: returns the frontend's port."""

    def start(limits: str) -> int:
        port = free_port()
        trust = 'accept_proxy = true\ntrusted_proxies = ["127.0.0.1/32"]\n'
        frontend = f"{trust}rate_limit = {{ {limits} }}\n"
        fastmqtt(recipe(brokers(1), port, frontend=frontend), port=port)
        return port

    return start


def test_ipv6_sources_in_one_64_share_max_per_source(behind_a_balancer) -> None:
    port = behind_a_balancer("max_per_source = 2")
    held = []
    try:
        for source in ("2001:db8:1:2::a", "2001:db8:1:2:ffff:ffff:ffff:fffe"):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(_proxied(source) + packets.connect(f"dev-{source}"))
            assert sock.recv(4) == packets.connack(0, 4)
            held.append(sock)
        third = packets.connect("dev-third")
        assert _mqtt_answer(port, third, _proxied("2001:db8:1:2::c")) == b""  # the same /64
        assert _mqtt_answer(port, third, _proxied("2001:db8:1:3::c")) == packets.connack(0, 4)
        for ipv4 in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):  # IPv4: per address, as before
            header = encode_v2((ipv4, 40000), ("10.0.0.254", 1883))
            assert _mqtt_answer(port, packets.connect(f"v4-{ipv4}"), header)
    finally:
        for sock in held:
            sock.close()


def test_ipv6_prefix_sets_the_size_of_one_source(behind_a_balancer) -> None:
    # 2/h: one connection back every 30 min, and pytest stops any test after 5 min, so the
    # third of one /56 is refused however slow the machine (2/m gave it back after 30 s).
    port = behind_a_balancer('per_source = "2/h", ipv6_prefix = 56')
    answers = [
        _mqtt_answer(port, packets.connect(f"dev-{i}"), _proxied(source))
        for i, source in enumerate(("2001:db8:1:200::1", "2001:db8:1:2ff::1", "2001:db8:1:2aa::1"))
    ]
    assert answers == [packets.connack(0, 4), packets.connack(0, 4), b""]  # one /56
    other = _mqtt_answer(port, packets.connect("dev-other"), _proxied("2001:db8:1:300::1"))
    assert other == packets.connack(0, 4)
