"""Loopback socket pairs for tests that drive a relay directly, the test-side ends they keep
(closed after each test: ResourceWarnings are errors), reading them, and waiting for the C
engine's completion records."""

from __future__ import annotations

import select
import socket
import time
from typing import Any

_KEPT: list[socket.socket] = []


def tcp_pair(
    listener: socket.socket, buffers: int | None = None, near_rcvbuf: int | None = None
) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over 127.0.0.1 through ``listener``; with ``buffers``, both ends'
    socket buffers are that small (the near end's before connecting, so the window is small
    from the start), the near end's receive buffer ``near_rcvbuf`` if given."""
    near = socket.socket()
    if buffers is not None:
        near.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, near_rcvbuf or buffers)
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
    near.connect(listener.getsockname())
    far, _ = listener.accept()
    if buffers is not None:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            far.setsockopt(socket.SOL_SOCKET, option, buffers)
    return near, far


def keep(*socks: socket.socket) -> None:
    """Close these at the end of the test."""
    _KEPT.extend(socks)


def close_kept() -> None:
    while _KEPT:
        _KEPT.pop().close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        assert chunk, f"EOF with {n} bytes still to come"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_all(sock: socket.socket) -> bytes:
    """Everything up to EOF (bounded by the socket's timeout); a reset fails the test."""
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def records(engine: Any, count: int, timeout: float = 5.0) -> list[tuple]:
    """Wait (bounded) until ``count`` completion records of the C engine have arrived."""
    got: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} records: {got}"
        select.select([engine.completions_fd()], [], [], left)
        got += engine.drain()
    return got
