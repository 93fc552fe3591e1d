"""Fixtures of the unit tests that drive relays over real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from tests.support.sockets import close_kept


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    yield sock
    sock.close()


@pytest.fixture(autouse=True)
def close_test_ends() -> Iterator[None]:
    yield
    close_kept()
