"""What systemd hears from a real `fastmqtt serve` under Type=notify: READY=1 once listening,
RELOADING=1 then READY=1 around a SIGHUP (also a refused one), STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator

import pytest

from tests.support.lb import lb_port, recipe

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(tmp_path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    yield sock
    sock.close()


def _states(sock: socket.socket) -> list[str]:
    """The assignments of the next datagram, MONOTONIC_USEC's value left out."""
    lines = sock.recv(4096).decode().split("\n")
    return [
        line.partition("=")[0] if line.startswith("MONOTONIC_USEC=") else line for line in lines
    ]


def test_serve_notifies_systemd(brokers, fastmqtt, notify_socket):
    port = lb_port()
    config = recipe(brokers(3), port)
    lb = fastmqtt(config, port=port, env={"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert _states(notify_socket) == ["READY=1", "STATUS=serving 1 frontends"]

    assert " reloaded " in lb.reload(config)
    assert _states(notify_socket) == ["RELOADING=1", "MONOTONIC_USEC"]
    assert _states(notify_socket) == ["READY=1"]

    assert "reload refused" in lb.reload(config + "\n[nonsense]\n")
    assert _states(notify_socket) == ["RELOADING=1", "MONOTONIC_USEC"]
    assert _states(notify_socket) == ["READY=1"]  # still serving, on the old config

    lb.signal(signal.SIGTERM)
    assert _states(notify_socket) == ["STOPPING=1"]
    assert lb.proc.wait(timeout=30) == 0
