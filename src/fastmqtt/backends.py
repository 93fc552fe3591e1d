"""Backends and their servers: live state, server choice (stickiness, balancing, backups)
and connecting with retries and redispatch."""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import socket
from collections.abc import Sequence

from fastmqtt.balance import Balancer, make_balancer
from fastmqtt.config import BackendConfig, ServerConfig, StickConfig
from fastmqtt.deadline import Deadline
from fastmqtt.metrics import BackendCounters, ServerCounters
from fastmqtt.stick import StickTable


class ServerState(enum.Enum):
    UP = "UP"
    DOWN = "DOWN"
    DRAIN = "DRAIN"  # no new clients; existing ones stay
    MAINT = "MAINT"  # out of rotation


class NoServerAvailable(Exception):
    """Every server that could take the client is down, full, or failed to connect."""


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """(address family, sockaddr) of the first TCP address for host:port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}:{port}")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def resolve_servers(config: BackendConfig) -> list[tuple[int, tuple]]:
    """Every server's address, resolved before anything changes (OSError if one fails)."""
    return [resolve(sc.host, sc.port) for sc in config.servers]


class Server:
    """One broker node of a backend."""

    def __init__(self, config: ServerConfig, index: int, address: tuple[int, tuple]) -> None:
        self.state = ServerState.UP
        self.counters = ServerCounters()
        self.reconfigure(config, index, address)

    def reconfigure(self, config: ServerConfig, index: int, address: tuple[int, tuple]) -> None:
        """Take a (re)loaded config and its resolved address; state and counters stay."""
        self.family, self.sockaddr = address
        self.config = config
        self.name = config.name
        self.index = index
        self.backup = config.backup
        self.maxconn = config.maxconn
        self.weight = config.weight

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def accepts_new(self) -> bool:
        return self.state is ServerState.UP and (
            self.maxconn == 0 or self.counters.current < self.maxconn
        )


class Backend:
    """A pool of servers behind one balancing policy and an optional stick table."""

    def __init__(
        self, config: BackendConfig, addresses: list[tuple[int, tuple]] | None = None
    ) -> None:
        self.servers: list[Server] = []
        self.by_name: dict[str, Server] = {}
        self.stick: StickTable | None = None
        self.counters = BackendCounters()
        self.reconfigure(config, resolve_servers(config) if addresses is None else addresses)

    def reconfigure(self, config: BackendConfig, addresses: list[tuple[int, tuple]]) -> None:
        """Apply a (re)loaded config whose server ``addresses`` are resolved already: servers
        that keep their name keep their state, counters and stick-table entries; removed
        servers' entries are forgotten. Established connections are not touched."""
        servers = []
        for i, (sc, address) in enumerate(zip(config.servers, addresses, strict=True)):
            server = self.by_name.get(sc.name)
            if server is None:
                server = Server(sc, i, address)
            else:
                server.reconfigure(sc, i, address)
            servers.append(server)
        self.balancer: Balancer = make_balancer(
            config.balance,
            [s.name for s in servers],
            [s.weight for s in servers],
            config.hash_balance_factor,
        )
        self.stick = _stick_table(self.stick, config.stick)
        if self.stick is not None:
            for gone in self.by_name.keys() - {s.name for s in servers}:
                self.stick.forget_server(gone)
        self.config = config
        self.name = config.name
        self.servers = servers
        self.by_name = {s.name: s for s in servers}

    # -- choosing a server ------------------------------------------------------------

    def choose(self, key: bytes | None, stick_key: str | None, tried: Sequence[int]) -> Server:
        """The server for a new client: its sticky server if usable, else the balancer's pick
        among primaries, else among backups. ``tried`` holds servers that just failed."""
        if self.stick is not None and stick_key:
            name = self.stick.get(stick_key)
            server = self.by_name.get(name) if name is not None else None
            if server is not None and server.accepts_new() and server.index not in tried:
                self.counters.sticky_hits += 1
                return server
            self.counters.sticky_misses += 1
        active = [s.counters.current for s in self.servers]
        for pool in (False, True):  # primaries first, backups only when no primary can serve
            eligible = [
                s.backup is pool and s.accepts_new() and s.index not in tried for s in self.servers
            ]
            if pool and not self.config.all_backups:
                eligible = _first_only(eligible)
            index = self.balancer.pick(key, eligible, active)
            if index is not None:
                return self.servers[index]
        self.counters.no_server += 1
        raise NoServerAvailable(self.name)

    def learn(self, stick_key: str | None, server: Server) -> None:
        """Remember where this client's session lives (the entry follows the client)."""
        if self.stick is not None and stick_key:
            self.stick.put(stick_key, server.name)

    # -- connecting ------------------------------------------------------------------

    async def connect(
        self, key: bytes | None, stick_key: str | None, avoid: Sequence[int] = ()
    ) -> tuple[Server, socket.socket]:
        """Connect to a server, retrying ``retries`` times; with ``redispatch`` each retry
        goes to another server, so a dead node never fails a client another node can serve.
        ``avoid``: servers that already failed this client (they answered nothing)."""
        loop = asyncio.get_running_loop()
        tried: list[int] = list(avoid)
        server = self.choose(key, None if avoid else stick_key, tried)
        for attempt in range(self.config.retries + 1):
            sock = socket.socket(server.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with Deadline(loop, self.config.timeout_connect):
                    await connect_socket(loop, sock, server.sockaddr)
                return server, sock
            except (OSError, TimeoutError) as exc:
                sock.close()
                server.counters.connect_errors += 1
                if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise  # our own limit, not the server's fault: don't burn retries
                if attempt == self.config.retries:
                    break
                server.counters.retries += 1
                if self.config.redispatch:
                    server.counters.redispatches += 1
                    tried.append(server.index)
                    server = self.choose(key, None, tried)
        raise NoServerAvailable(self.name)


async def connect_socket(loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: tuple) -> None:
    """Non-blocking connect to a resolved address: loop.sock_connect without its per-call
    address conversion, which showed in churn profiles."""
    err = sock.connect_ex(addr)
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        writable = loop.create_future()
        loop.add_writer(sock.fileno(), writable.set_result, None)
        try:
            await writable
        finally:
            loop.remove_writer(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _stick_table(current: StickTable | None, config: StickConfig | None) -> StickTable | None:
    """Keep the learned entries unless stickiness was switched off or resized."""
    if config is None:
        return None
    if current is not None and (current.size, current.expire) == (config.size, config.expire):
        return current
    return StickTable(config.size, config.expire)


def _first_only(eligible: list[bool]) -> list[bool]:
    """Keep only the first True: a single standby takes over unless all_backups is set."""
    seen = False
    out = []
    for ok in eligible:
        out.append(ok and not seen)
        seen = seen or ok
    return out
