"""fastmqtt.tools.brokers.free_port under many test processes at once (pytest -n 4, two runs)."""

from __future__ import annotations

import socket

from fastmqtt.tools.brokers import EPHEMERAL_RANGE, free_port


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    """Outgoing connections take their local port from the ephemeral range: a port found free
    there can be taken by a client before the broker binds it (EADDRINUSE under load)."""
    with open(EPHEMERAL_RANGE) as f:
        low = int(f.read().split()[0])
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40 and all(port < low for port in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # free indeed
