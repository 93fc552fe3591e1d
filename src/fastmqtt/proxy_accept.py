"""``accept_proxy``: read the PROXY header an L4 balancer puts in front of a connection.

The header is taken off the socket without consuming a byte beyond it (peek, then read
exactly its length), so a TLS handshake or a WebSocket upgrade can follow on the same socket.
Only sources in ``trusted_proxies`` may send one; from anywhere else a header is a spoofing
attempt, and a trusted source that sends none is misconfigured: both are refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from fastmqtt.config import Network
from fastmqtt.errors import MalformedPacket
from fastmqtt.proxy_protocol import V2_MAX, ProxyHeader, parse

RETRY = 0.01  # seconds between peeks while a header is still arriving (rare: one segment)


class ProxyRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def trusted(host: str, networks: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 peer of a dual-stack listener
    return any(ip in net for net in networks)


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """What the client has sent so far, left in the socket; waits for at least one byte."""
    readable = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(sock.fileno())
    data = sock.recv(V2_MAX, socket.MSG_PEEK)
    if not data:
        raise ProxyRefused("client-closed-early")
    return data


async def refuse_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """An untrusted source: refused if what it sends starts like a PROXY header."""
    try:
        parse(await _peek(loop, sock))
    except MalformedPacket as exc:
        if exc.offset == 0:
            return  # not a PROXY header: an ordinary direct client
    raise ProxyRefused("untrusted-proxy-header")


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProxyHeader:
    """A trusted source: its header, consumed from the socket; the caller bounds the time."""
    while True:
        try:
            header = parse(await _peek(loop, sock))
        except MalformedPacket as exc:
            raise ProxyRefused("missing-proxy-header" if exc.offset == 0 else exc.reason) from None
        if header is not None:
            taken = sock.recv(header.length)  # peeked, so all of it is there
            assert len(taken) == header.length
            return header
        await asyncio.sleep(RETRY)
