"""A converted config behaves like the HAProxy config it came from: bench/haproxy.cfg runs in
HAProxy, its `fastmqtt convert` output runs in fastmqtt, both in front of the same three
Mosquitto brokers, and the brokers report the same routing for both."""

from __future__ import annotations

import collections
import pathlib
import socket

import pytest

from fastmqtt.tools.convert import convert
from tests.support.haproxy import HAProxy
from tests.support.lb import closed_by_peer, landed, lb_port, raw_connect, wait_until

pytestmark = pytest.mark.e2e

RECIPE = pathlib.Path(__file__).parents[2] / "bench" / "haproxy.cfg"


@pytest.fixture
def both(brokers, fastmqtt, monkeypatch):
    """{"hap": port, "fmq": port} and the brokers: the same recipe file in both balancers."""
    nodes = brokers(3)
    ports = {"hap": lb_port(), "fmq": lb_port()}
    servers = {f"SERVER{i + 1}": node.address for i, node in enumerate(nodes)}
    for name, value in {"MAXCONN": "1000", **servers}.items():
        monkeypatch.setenv(name, value)
    text = RECIPE.read_text()
    monkeypatch.setenv("BIND", f"127.0.0.1:{ports['hap']}")
    haproxy = HAProxy(text, ports["hap"]).start()
    monkeypatch.setenv("BIND", f"127.0.0.1:{ports['fmq']}")
    toml, report = convert(text)
    assert report.skipped == []
    fastmqtt(toml, port=ports["fmq"])
    yield ports, nodes
    haproxy.stop()


def _per_broker(nodes, prefix: str) -> list[int]:
    counts = collections.Counter(
        broker for cid, broker in landed(nodes).items() if cid.startswith(prefix)
    )
    return sorted(counts.values(), reverse=True)


def test_round_robin_and_stickiness_match(both):
    ports, nodes = both
    for lb, port in ports.items():
        socks = [raw_connect(port, f"{lb}-{i}") for i in range(10)]
        assert wait_until(lambda lb=lb: sum(_per_broker(nodes, f"{lb}-")) == 10)
        for sock in socks:
            sock.close()
    assert _per_broker(nodes, "hap-") == _per_broker(nodes, "fmq-") == [4, 3, 3]
    first = landed(nodes)
    for lb, port in ports.items():  # reconnects go back to the broker that holds the session
        for i in range(10):
            raw_connect(port, f"{lb}-{i}").close()
    assert wait_until(lambda: sum(len(n.connected_client_ids()) for n in nodes) == 40)
    assert landed(nodes) == first


def test_non_mqtt_is_refused_by_both(both):
    ports, nodes = both
    before = [node.tcp_connection_count() for node in nodes]
    for port in ports.values():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert closed_by_peer(sock)
    assert [node.tcp_connection_count() for node in nodes] == before
