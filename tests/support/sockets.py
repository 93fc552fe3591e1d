"""Loopback socket pairs for tests that drive a relay directly, and the test-side ends they
keep, closed after each test (ResourceWarnings are errors)."""

from __future__ import annotations

import socket

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
