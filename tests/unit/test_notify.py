"""sd_notify over a real AF_UNIX datagram socket, bound where systemd would bind it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from fastmqtt import notify


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def path_socket(tmp_path, monkeypatch) -> Iterator[socket.socket]:
    path = str(tmp_path / "notify")
    with _bind(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


@pytest.fixture
def abstract_socket(monkeypatch) -> Iterator[socket.socket]:
    name = f"fastmqtt-test-{os.getpid()}-{time.monotonic_ns()}"
    with _bind("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def _lines(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_with_status(path_socket):
    assert notify.ready("serving 2 frontends")
    assert _lines(path_socket) == ["READY=1", "STATUS=serving 2 frontends"]


def test_ready_over_the_abstract_namespace(abstract_socket):
    assert notify.ready()
    assert _lines(abstract_socket) == ["READY=1"]


def test_reloading_carries_a_monotonic_timestamp(path_socket):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading("reloading lb.toml")
    state, stamp, status = _lines(path_socket)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert state == "RELOADING=1"
    assert stamp.startswith("MONOTONIC_USEC=")
    assert before <= int(stamp.removeprefix("MONOTONIC_USEC=")) <= after
    assert status == "STATUS=reloading lb.toml"


def test_stopping_and_status(abstract_socket):
    assert notify.stopping()
    assert _lines(abstract_socket) == ["STOPPING=1"]
    assert notify.status("draining 12 connections\nsecond line")
    assert _lines(abstract_socket) == ["STATUS=draining 12 connections second line"]


@pytest.mark.parametrize(
    ("args", "ours"),
    [
        (["--ready", "--status=serving 2 frontends"], lambda: notify.ready("serving 2 frontends")),
        (["STOPPING=1"], notify.stopping),
        (["--status=draining"], lambda: notify.status("draining")),
    ],
)
def test_same_datagram_as_systemd_notify(abstract_socket, args, ours):
    """systemd's own client, given the same states, sends the same bytes."""
    tool = shutil.which("systemd-notify")
    assert tool, "systemd-notify not found: `apt-get install systemd`"
    subprocess.run([tool, "--no-block", *args], check=True, timeout=10)  # no barrier wait
    theirs = abstract_socket.recv(4096)
    assert ours()
    assert abstract_socket.recv(4096) == theirs


def test_one_datagram_per_call(path_socket):
    notify.ready()
    notify.status("a")
    assert path_socket.recv(4096) == b"READY=1"
    assert path_socket.recv(4096) == b"STATUS=a"


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/path"])
def test_non_unix_address_is_ignored(monkeypatch, value):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify.ready() is False


def test_missing_socket_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify.ready() is False
    assert "sd_notify" in caplog.text
