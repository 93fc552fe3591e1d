"""Backends and their servers: live state, and where a server is chosen and opened for a
client (keys, stick table, balancer, backups, the one retry/redispatch loop)."""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from fastmqtt.balance import Balancer, make_balancer
from fastmqtt.config import BackendConfig, ServerConfig
from fastmqtt.deadline import Deadline
from fastmqtt.metrics import BackendCounters, ServerCounters
from fastmqtt.stick import StickStore, StickTable
from fastmqtt.upstream import HungUp, open_upstream

if TYPE_CHECKING:
    from fastmqtt.parse import Connect
    from fastmqtt.session import Session
    from fastmqtt.streams import Stream


class Known(Protocol):
    """What a client is known by: a Session, or a connection seen by a rebalance."""

    @property
    def client_id(self) -> str | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def client_addr(self) -> tuple[str, int]: ...


Listener = Callable[["Backend", Sequence["Server"], Sequence["Server"]], None]


class ServerState(enum.Enum):
    UP = "UP"
    DOWN = "DOWN"
    DRAIN = "DRAIN"  # no new clients; existing ones stay
    MAINT = "MAINT"  # out of rotation


class NoServerAvailable(Exception):
    """Every server that could take the client is down, full, or failed to connect."""


class Endpoint(NamedTuple):
    """Where new connections to a server go: an address, and the name it was found under."""

    family: int
    sockaddr: tuple
    hostname: str  # the server's host, or the SRV target that gave this address


def endpoint(ip: str, port: int, hostname: str) -> Endpoint:
    """The endpoint of an IP address: numeric only, never a lookup (socket.gaierror if
    ``ip`` is not an IP)."""
    info = socket.getaddrinfo(ip, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    family, _, _, _, sockaddr = info[0]
    return Endpoint(family, sockaddr, hostname)


def is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def first_endpoint(config: ServerConfig) -> Endpoint | None:
    """What a server can use before any lookup: its IP, or its init_addr (discovery.py
    resolves names, without blocking, and places what it finds)."""
    for ip in (config.host, config.init_addr):
        if ip is not None:
            try:
                return endpoint(ip, config.port, config.host)
            except socket.gaierror:
                continue
    return None


def _lookup(config: ServerConfig) -> tuple:
    """What decides the address of a server given by name: a reload that keeps it keeps the
    address found."""
    return config.host, config.port, config.resolvers, config.resolve_prefer, config.template


class Server:
    """One broker node of a backend (or one slot of a server template)."""

    def __init__(self, config: ServerConfig, index: int) -> None:
        self.state = ServerState.UP
        self.counters = ServerCounters()
        self.resolution: str | None = None  # why a server given by name has no address
        self.config = config
        self._aim(first_endpoint(config))
        self.reconfigure(config, index)

    def reconfigure(self, config: ServerConfig, index: int) -> None:
        """Take a (re)loaded config; state, counters and an address found for the same name
        stay."""
        if _lookup(config) != _lookup(self.config):
            self._aim(first_endpoint(config))
        self.config = config
        self.named = config.template is not None or not is_ip(config.host)  # looked up
        self.name = config.name
        self.index = index
        self.backup = config.backup
        self.maxconn = config.maxconn
        self.weight = config.weight

    def place(self, found: Endpoint | None) -> bool:
        """Send new connections to ``found`` (None: nowhere); True if that is a change.
        Established connections keep their sockets."""
        if found == self.endpoint:
            return False
        self._aim(found)
        return True

    def _aim(self, found: Endpoint | None) -> None:
        self.endpoint = found
        self.family = found.family if found is not None else socket.AF_INET
        self.sockaddr: tuple | None = found.sockaddr if found is not None else None

    @property
    def hostname(self) -> str:
        """The name TLS expects of this server: its host, or the SRV target it came from."""
        return self.endpoint.hostname if self.endpoint is not None else self.config.host

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def accepts_new(self) -> bool:
        return (
            self.state is ServerState.UP
            and self.sockaddr is not None
            and (self.maxconn == 0 or self.counters.current < self.maxconn)
        )


class Backend:
    """A pool of servers behind one balancing policy and an optional stick table: the owner
    of routing. ``open`` chooses the keys a client is known by, consults and learns the stick
    table, applies the balancer (backups when no primary can serve) and runs the one retry
    loop; ``connected``/``disconnected`` keep a relayed client's stick entry live (called by
    its Session). Subscribers hear of servers that moved (``subscribe``) and of states,
    weights and limits that changed (``watch``)."""

    def __init__(self, config: BackendConfig, sticks: StickStore | None = None) -> None:
        self.servers: list[Server] = []
        self.by_name: dict[str, Server] = {}
        self.sticks = sticks or StickStore(None, 1, 0, owner=True)  # where its table lives
        self.stick: StickTable | None = None
        self.counters = BackendCounters()
        self._listeners: dict[Listener, None] = {}
        self._watchers: dict[Callable[[Backend], None], None] = {}
        self.reconfigure(config)

    def reconfigure(self, config: BackendConfig) -> None:
        """Apply a (re)loaded config without a lookup: servers that keep their name keep their
        state, counters, stick-table entries and, if they look the same name up the same way,
        the address found for it; removed servers' entries are forgotten. Established
        connections are not touched."""
        stick = _stick_table(self.sticks, config, self.stick)  # may fail: before any change
        servers = []
        for i, sc in enumerate(config.servers):
            server = self.by_name.get(sc.name)
            if server is None:
                server = Server(sc, i)
            else:
                server.reconfigure(sc, i)
            servers.append(server)
        self.balancer: Balancer = make_balancer(
            config.balance,
            [s.name for s in servers],
            [s.weight for s in servers],
            config.hash_balance_factor,
        )
        self.stick = stick
        if self.stick is not None:
            self.stick.register(s.name for s in servers)
            for gone in self.by_name.keys() - {s.name for s in servers}:
                self.stick.forget_server(gone)
        self.config = config
        self.name = config.name
        self.servers = servers
        self.by_name = {s.name: s for s in servers}

    # -- servers found by name (discovery.py) -------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(backend, servers, joined)`` whenever servers got a new address or
        lost it while running (health checks, the C engine's copy of the servers, automatic
        rebalance); ``joined`` are those of ``servers`` that had no address before."""
        self._listeners[listener] = None

    def servers_changed(self, servers: Sequence[Server], joined: Sequence[Server] = ()) -> None:
        """``servers`` were placed elsewhere (Server.place), ``joined`` of them after having
        no address: tell every subscriber."""
        for listener in self._listeners:
            listener(self, servers, joined)

    def watch(self, watcher: Callable[[Backend], None]) -> None:
        """Call ``watcher(backend)`` whenever server states, weights or limits changed
        (health, the admin API, slow start): the C engine's copy of them follows."""
        self._watchers[watcher] = None

    def changed(self) -> None:
        """Server states, weights or limits changed: tell every watcher."""
        for watcher in self._watchers:
            watcher(self)

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

    def connected(self, stick_key: str | None) -> None:
        """A client known by ``stick_key`` is relayed: its entry stops expiring."""
        if self.stick is not None and stick_key:
            self.stick.connected(stick_key)

    def disconnected(self, stick_key: str | None) -> None:
        """That client's connection ended; the last one starts its entry's expiry clock."""
        if self.stick is not None and stick_key:
            self.stick.disconnected(stick_key)

    def retire(self) -> None:
        """A reload removed this backend: its stick table (mapping and file) goes; its
        established connections end without touching it."""
        if self.stick is not None:
            self.stick.close()
            self.stick = None

    def learn(self, stick_key: str | None, server: Server) -> None:
        """Remember where this client's session lives (the entry follows the client)."""
        if self.stick is not None and stick_key:
            self.stick.put(stick_key, server.name)

    # -- opening: the one retry loop ------------------------------------------------------

    async def open(
        self,
        session: Session,
        connect: Connect | None,
        hello: bytes,
        client: Stream,
        dst: tuple[str, int],
    ) -> Established:
        """Choose a server for this client and open it: the hash and stick keys, the stick
        table, the balancer (backups when no primary can serve), then one attempt after another
        (upstream.open_upstream). One retry loop, as the engine's fast path runs it
        (_fastpath.pyx retry()): a connect error, a connect timeout and a server that hangs up
        before its CONNACK (HAProxy's retry-on empty-response) all spend ``retries``; with
        ``redispatch`` each retry goes to another server, without it a connect error tries the
        same server again and a hang-up is not retried. NoServerAvailable when no server could
        be connected, HungUp when the last one hung up."""
        key, stick_key = self.hash_key(session), self.stick_key(session)
        tried: list[int] = []
        server = self.choose(key, stick_key, tried)
        failures = 0
        while True:
            try:
                upstream, to_client = await self._attempt(
                    server, session, hello, client, dst, connect is not None
                )
                break
            except _ConnectFailed:
                connect_error = True
            except HungUp:
                connect_error = False
            failures += 1
            if failures > self.config.retries or not (connect_error or self.config.redispatch):
                if connect_error:
                    raise NoServerAvailable(self.name)
                raise HungUp(server)
            server.counters.retries += 1
            if self.config.redispatch:
                server.counters.redispatches += 1
                tried.append(server.index)
                server = self.choose(key, None, tried)
        if connect is not None and not connect.client_id and session.client_id:
            stick_key = self.stick_key(session)  # the broker assigned an id: learn it
            self.counters.learned_ids += stick_key is not None
        if session.connack_code in (None, 0):
            self.learn(stick_key, server)
        return Established(server, upstream, to_client, stick_key)

    async def _attempt(
        self,
        server: Server,
        session: Session,
        hello: bytes,
        client: Stream,
        dst: tuple[str, int],
        mqtt: bool,
    ) -> tuple[Stream, bytes]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(server.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with Deadline(loop, self.config.timeout_connect):
                await connect_socket(loop, sock, server.sockaddr)
        except (OSError, TimeoutError) as exc:
            sock.close()
            server.counters.connect_errors += 1
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                raise  # our own limit, not the server's fault: don't burn retries
            raise _ConnectFailed from None
        session.server = server
        session.connected_at = time.monotonic()
        latency = session.connected_at - session.inspected_at  # type: ignore[operator]
        self.counters.connect_latency.observe(latency)
        return await open_upstream(session, sock, server, self, hello, client, dst, mqtt)

    # -- the keys a client is known by ------------------------------------------------------

    def stick_key(self, session: Known) -> str | None:
        """What the stick table remembers this client by, or None (no table, no id)."""
        stick = self.config.stick
        if stick is None:
            return None
        if stick.on == "source":
            return session.client_addr[0]
        # empty ids (broker-assigned) must not all stick to one server
        return (session.username if stick.on == "username" else session.client_id) or None

    def hash_key(self, session: Known) -> bytes:
        """The bytes the balancer hashes (consistent hashing, source)."""
        config = self.config
        if config.balance == "source" or config.hash_key == "source":
            return session.client_addr[0].encode()
        value = session.username if config.hash_key == "username" else session.client_id
        if value:
            return value.encode()
        # no id to hash on: spread by address and port rather than piling onto one server
        return f"{session.client_addr[0]}:{session.client_addr[1]}".encode()

    def home(self, key: bytes) -> Server | None:
        """Where the balancer sends a new client with ``key`` now, among the primaries."""
        eligible = [not s.backup and s.accepts_new() for s in self.servers]
        index = self.balancer.pick(key, eligible, [s.counters.current for s in self.servers])
        return None if index is None else self.servers[index]


class Established(NamedTuple):
    """An opened connection to a server, ready for the relay."""

    server: Server
    upstream: Stream
    to_client: bytes  # the broker's CONNACK (and anything after it): the relay sends it first
    stick_key: str | None  # what the stick table knows this client by (learned ids included)


class _ConnectFailed(Exception):
    """The server could not be connected (counted on the server)."""


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


def _stick_table(
    store: StickStore, config: BackendConfig, current: StickTable | None
) -> StickTable | None:
    """Keep the learned entries unless stickiness was switched off (a resize copies them)."""
    if config.stick is None:
        if current is not None:
            current.close()
        return None
    return store.table(config.name, config.stick, current)


def _first_only(eligible: list[bool]) -> list[bool]:
    """Keep only the first True: a single standby takes over unless all_backups is set."""
    seen = False
    out = []
    for ok in eligible:
        out.append(ok and not seen)
        seen = seen or ok
    return out
