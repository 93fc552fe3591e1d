"""The fast path: plain-TCP MQTT frontends whose connections the C engine owns from accept
to close (_fastpath.pyx), and what Python does for them.

- ``fast_path_reason(frontend, backends)`` says whether a frontend can take the fast path
  and, if not, why (``fastmqtt check``, the startup log and the stats page show it).
- ``FastPathHub`` pushes the engine what it needs: listening sockets and frontend settings,
  backends and servers with their live state (health, admin, weights, Maglev tables), and
  the event-loop path's live counts that limits must see.
- It turns the engine's completion records into what the event-loop path produces for a
  connection: a ``Session``, its log line, and the frontend, backend and server counters;
  counters the engine keeps as atomics are added in at ``sync()``.

Without compiled extensions (FASTMQTT_NO_EXTENSIONS=1) every frontend takes the event-loop
path and this module only answers ``fast_path_reason``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastmqtt import packets
from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.access import IDENTIFIER_REJECTED, NOT_AUTHORIZED, RATE_EXCEEDED, malformed_answer
from fastmqtt.backend import ServerState
from fastmqtt.balance import Consistent, server_id
from fastmqtt.mqtt_spec import U16_MAX
from fastmqtt.relay import ConnInfo
from fastmqtt.session import Session, credit

if TYPE_CHECKING:
    from fastmqtt.backend import Backend, Server
    from fastmqtt.config import BackendConfig, FrontendConfig
    from fastmqtt.frontend import Frontend
    from fastmqtt.metrics import Histogram
    from fastmqtt.runtime import Runtime

log = logging.getLogger("fastmqtt")

SYNC_INTERVAL = 0.25  # seconds between copies of the engine's counters into Python's
TICK = 0.1  # the engine's timing wheel
MAX_RULES = 64  # access rules per frontend on the fast path (_fastpath.MAX_ROUTES)
STATES = tuple(ServerState)  # the engine's S_* codes, in this order
# fields of a record (_fastpath.Record)
BYTES_IN = 14  # the engine's counts include the CONNECT
BYTES_OUT = 15
REASON = 16
DENIED = 17  # refused before reaching a server
CONN_ID = 19
QUERY_TIMEOUT = 1.0  # seconds the engine's threads have to answer a find() or leave()
QUERY_POLL = 0.001


def fast_path_reason(
    frontend: FrontendConfig, backends: Mapping[str, BackendConfig], enabled: bool = True
) -> str | None:
    """None when the C engine can serve ``frontend`` from accept to close, else why not
    (``enabled``: the config's ``[global] fast_path``)."""
    if NO_EXTENSIONS:
        return "compiled extensions are off"
    if not enabled or not frontend.fast_path:
        return "fast_path = false"
    if frontend.protocol != "mqtt":
        return f'protocol = "{frontend.protocol}"'
    if frontend.tls is not None:
        return "TLS"
    if frontend.accept_proxy:
        return "accept_proxy"
    for i, rule in enumerate(frontend.rules):
        if rule.client_id_regex is not None:
            return f"rule {i}: client_id_regex"
        if rule.username is not None:
            return f"rule {i}: username"
        if rule.client_id is not None and _id_pattern(rule.client_id) is None:
            return (
                f'rule {i}: client_id = "{rule.client_id}" (the engine matches an id or a prefix*)'
            )
    if len(frontend.rules) > MAX_RULES:
        return f"more than {MAX_RULES} rules"
    for name in _backends_of(frontend):
        backend = backends[name]
        if backend.tls is not None:
            return f"backend {name}: TLS to the servers"
        if backend.ws_backend == "passthrough":
            return f'backend {name}: ws_backend = "passthrough"'
    return None


def _id_pattern(glob: str) -> tuple[bytes, bool] | None:
    """(literal, is a prefix) for a client_id glob the engine can match: an exact id, or a
    literal followed by one "*"; None for anything else (``?``, ``[...]``, inner ``*``)."""
    literal, star = (glob[:-1], True) if glob.endswith("*") else (glob, False)
    if any(c in literal for c in "*?["):
        return None
    return literal.encode(), star


def id_batches(client_ids: Iterable[str], most: tuple[int, int]) -> Iterator[list[bytes]]:
    """The client ids, encoded and each once, in batches of at most ``most`` (ids, bytes):
    what one find() of the engine takes. An id longer than an MQTT string is no client's."""
    most_ids, most_bytes = most
    batch: list[bytes] = []
    size = 0
    for key in dict.fromkeys(client_id.encode() for client_id in client_ids):
        if len(key) > U16_MAX:
            continue
        if len(batch) == most_ids or size + len(key) > most_bytes:
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += len(key)
    if batch:
        yield batch


def _backends_of(frontend: FrontendConfig) -> list[str]:
    routes = [rule.backend for rule in frontend.rules if rule.backend]
    return [frontend.backend, *dict.fromkeys(routes)]


def describe(reason: str | None) -> str:
    """How logs, ``check`` and the stats page name a frontend's path."""
    return "fast path" if reason is None else f"event-loop path ({reason})"


class FastPathHub:
    """Every fast-path frontend of one process and the connections the engine made for
    them; created before the engine starts, configured again on every reload."""

    def __init__(self, runtime: Runtime, engine: Any) -> None:
        from fastmqtt import _fastpath

        self.runtime = runtime
        self.loop: asyncio.AbstractEventLoop = runtime.loop
        self.c = _fastpath.FastPath(engine, runtime.config.global_.maxconn)
        self._max_keys = (_fastpath.MAX_FIND_KEYS, _fastpath.MAX_FIND_KEY_BYTES)  # per find()
        self._ids = itertools.count(1)
        self._frontends: dict[int, Frontend] = {}  # by engine id, also once removed
        self._frontend_ids: dict[Frontend, int] = {}
        self._admissions: dict[int, tuple[tuple[Any, int], Any]] = {}  # id -> (limits, ref)
        self._servers: dict[Server, Any] = {}  # -> _choose.ServerRef
        self._server_by_id: dict[int, Server] = {}
        self._pools: dict[Backend, Any] = {}  # -> _choose.PoolRef
        self._backend_by_id: dict[int, Backend] = {}
        self._seen: dict[object, tuple] = {}  # counters as last added into Python's
        self._close_reasons: dict[int, str] = {}  # server id -> why close_server() was asked
        self._leave_reasons: dict[int, str] = {}  # conn id -> why leave() was asked
        self._query = asyncio.Lock()  # the engine answers one find() or leave() at a time
        self._sync: asyncio.TimerHandle | None = None

    # -- configuration ---------------------------------------------------------------

    def reason(self, frontend: Frontend) -> str | None:
        config = self.runtime.config
        return fast_path_reason(frontend.config, config.backends, config.global_.fast_path)

    def serves(self, frontend: Frontend) -> bool:
        return frontend in self._frontend_ids

    def configure(self) -> None:
        """Push every backend, and every frontend that takes the fast path (start, reload);
        a frontend that no longer does is removed (its connections go on)."""
        from fastmqtt import _choose

        for backend in self.runtime.backends.values():
            self._configure_backend(backend, _choose)
        for fe in list(self._frontend_ids):
            if fe not in self.runtime.frontends or self.reason(fe) is not None:
                self.remove(fe)
                fe.accepting = False  # the event loop takes it back at its next resume()
        for fe in self.runtime.frontends:
            if fe.sock is not None and self.reason(fe) is None:
                if fe not in self._frontend_ids:
                    fe.pause()  # the event loop lets go of it first: one acceptor per socket
                self._configure_frontend(fe)
        self.python_live_changed()
        if self._sync is None:
            self._sync = self.loop.call_later(SYNC_INTERVAL, self._tick)

    def _configure_backend(self, backend: Backend, _choose: Any) -> None:
        refs = []
        for server in backend.servers:
            ref = self._servers.get(server)
            if ref is None:
                ref = self._new_server(server, _choose)
            refs.append(ref)
        pool = self._pools.get(backend)
        if pool is None:
            pool = self._pools[backend] = _choose.PoolRef(next(self._ids))
            self._backend_by_id[pool.id] = backend
        bc = backend.config
        table = backend.stick.file.table if backend.stick is not None else None
        pool.set_stick(table, bc.stick.on if bc.stick is not None else "client_id")
        pool.configure(
            bc.balance,
            refs,
            all_backups=bc.all_backups,
            factor=bc.hash_balance_factor,
            hash_key=bc.hash_key,
            retries=bc.retries,
            redispatch=bc.redispatch,
            timeout_connect=_ticks(bc.timeout_connect),
            timeout_server=_ticks(bc.timeout_server),
            send_proxy=bc.send_proxy,
            client_id_tlv=bc.proxy_client_id_tlv if "client_id" in bc.proxy_tlvs else -1,
        )
        self.servers_moved(backend, backend.servers)

    def _new_server(self, server: Server, _choose: Any) -> Any:
        host, port, scope = _host_port_scope(server) if server.sockaddr else ("0.0.0.0", 0, 0)
        ref = _choose.ServerRef(
            next(self._ids), server.family, host, port, scope, stick_id=server_id(server.name)
        )
        self._servers[server] = ref
        self._server_by_id[ref.id] = server
        return ref

    def servers_moved(self, backend: Backend, servers: Sequence[Server]) -> None:
        """A reload or discovery gave servers another address (or none: they take no new
        client until they have one again)."""
        pool = self._pools.get(backend)
        if pool is None:
            return
        for server in servers:
            if server.sockaddr is not None and server in backend.servers:
                pool.set_address(
                    backend.servers.index(server), server.family, *_host_port_scope(server)
                )
        self.backend_changed(backend)

    def backend_changed(self, backend: Backend) -> None:
        """Server states, weights and maxconn changed (health, admin, slow start, reload):
        the engine applies them to the next pick."""
        pool = self._pools.get(backend)
        if pool is None:
            return
        servers = backend.servers
        weights = list(backend.balancer.weights)
        placed = [s.state if s.sockaddr is not None else ServerState.DOWN for s in servers]
        pool.update(
            [STATES.index(state) for state in placed],
            weights,
            [s.maxconn for s in servers],
            [s.backup for s in servers],
        )
        if isinstance(backend.balancer, Consistent):
            up = [state is ServerState.UP for state in placed]
            backups = [s.backup for s in servers]
            all_backups = backend.config.all_backups
            pool.set_tables(*consistent_tables(backend.balancer, weights, up, backups, all_backups))

    def _configure_frontend(self, fe: Frontend) -> None:
        config = fe.config
        fid = self._frontend_ids.get(fe)
        if fid is None:
            fid = next(self._ids)
            self._frontend_ids[fe] = fid
            self._frontends[fid] = fe
        assert fe.sock is not None
        ct = config.timeout_client
        backends = self.runtime.backends
        global_ = self.runtime.config.global_
        self.c.frontend(
            fid,
            fe.sock.fileno(),
            self._pools[fe.backend],
            [self._pools[backends[r.backend]] if r.backend else None for r in config.rules],
            inspect_delay=config.inspect_delay,
            max_connect_size=config.max_connect_size,
            maxconn=config.maxconn,
            reject_invalid=config.reject_invalid,
            allow_bridge=config.allow_bridge,
            track=_track(self.runtime.hub),  # as the process started
            client_timeout=(ct.auto, ct.seconds, ct.minimum, ct.maximum),
            refusals=refusal_table() if config.reject_with_connack else None,
            admission=self._admission(fid, config, min(config.maxconn, global_.maxconn)),
        )
        fe.counters.current = self.c.counters(fid)[2]

    def _admission(self, fid: int, config: FrontendConfig, live: int) -> Any:
        limits = limits_of(config, live)
        kept = self._admissions.get(fid)
        made = admission(config, live, kept[1] if kept and kept[0] == limits else None)
        if made is None:
            self._admissions.pop(fid, None)
        else:
            self._admissions[fid] = (limits, made)
        return made

    def listen(self, fe: Frontend, on: bool) -> None:
        self.c.listen(self._frontend_ids[fe], on)

    def remove(self, fe: Frontend) -> None:
        """The engine stops accepting for ``fe``; its connections go on (and are logged)."""
        fid = self._frontend_ids.pop(fe, None)
        if fid is not None:
            self.c.remove(fid)
            self._admissions.pop(fid, None)

    # -- live counts -----------------------------------------------------------------

    @property
    def live(self) -> int:
        """Connections of the fast path (accepted, not yet ended)."""
        return self.c.live

    def close_server(self, server: Server, reason: str = "killed") -> int:
        """End the engine's relayed connections to ``server`` (on_marked_down =
        "shutdown-sessions"; their log lines say ``reason``); returns how many it holds now."""
        ref = self._servers.get(server)
        if ref is None:
            return 0
        self._close_reasons[ref.id] = reason
        if not self.c.close_server(ref.id):
            self.loop.call_later(0.05, self.close_server, server, reason)  # its threads are busy
        return ref.live

    async def say_goodbye(self, packet: bytes, rate: int) -> None:
        """drain_disconnect: ``packet`` to the engine's tracked (MQTT 5) clients, ``rate`` a
        second, until they are gone or the caller cancels (RelayHub.say_goodbye)."""
        batch = max(1, rate // 10)
        while self.c.live:
            self.c.goodbye(packet, batch)
            await asyncio.sleep(batch / rate)

    # -- find and leave ----------------------------------------------------------------

    async def find(
        self,
        client_ids: Collection[str] | None,
        prefix: str | None,
        backend: str | None,
        server: str | None,
        limit: int,
    ) -> list[ConnInfo]:
        """RelayHub.find for the engine's relayed fast-path connections: one query to the
        engine's threads, or one per batch of client ids it takes (_fastpath.MAX_FIND_KEYS)."""
        pool_id = server_id = 0
        if backend is not None:
            found = self.runtime.backends.get(backend)
            pool = self._pools.get(found) if found is not None else None
            if pool is None:
                return []
            pool_id = pool.id
            if server is not None:
                named = [s for s in found.servers if s.name == server]  # type: ignore[union-attr]
                ref = self._servers.get(named[0]) if named else None
                if ref is None:
                    return []
                server_id = ref.id
        batches: Iterable[list[bytes] | None] = (
            [[prefix.encode()]] if prefix is not None
            else [None] if client_ids is None
            else id_batches(client_ids, self._max_keys)
        )  # fmt: skip
        views: list[tuple] = []
        for keys in batches:
            if len(views) >= limit:
                break
            async with self._query:
                self.c.find(keys, prefix is not None, pool_id, server_id, limit - len(views))
                await self._answers()
                complete, more = self.c.found()
            if not complete:
                log.warning("find: an engine thread did not answer within %.1f s", QUERY_TIMEOUT)
            views += more
        return [self._info(view) for view in views]

    def _info(self, view: tuple) -> ConnInfo:
        (conn_id, fid, pool_id, server_id, ip, port, client_id, version, since, bytes_in,
         bytes_out, clean_start, expiry, tracked, username) = view  # fmt: skip
        backend = self._backend_by_id.get(pool_id)
        server = self._server_by_id.get(server_id)
        return ConnInfo(
            conn_id=conn_id,
            client_id=client_id,
            username=username,
            protocol_version=version,
            frontend=self._frontends[fid].name,
            backend=backend.name if backend is not None else "",
            server=server.name if server is not None else None,
            source=f"{ip}:{port}",
            since=since,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            path="fast",
            clean_start=clean_start,
            session_expiry=expiry,
            tracked=tracked,
        )

    async def leave(self, conn_ids: list[int], packet: bytes, reason: str) -> int:
        """RelayHub.ask_to_leave for fast-path connections; returns how many were found."""
        for conn_id in conn_ids:  # before asking: a record may come back before the answer
            self._leave_reasons.setdefault(conn_id, reason)
        async with self._query:
            self.c.leave(conn_ids, packet)
            await self._answers()
            _, asked = self.c.left()
        for conn_id in set(conn_ids) - set(asked):
            self._leave_reasons.pop(conn_id, None)
        return len(asked)

    async def _answers(self) -> None:
        """Until every engine thread answered the query, QUERY_TIMEOUT at most."""
        deadline = time.monotonic() + QUERY_TIMEOUT
        while not self.c.answered() and time.monotonic() < deadline:
            await asyncio.sleep(QUERY_POLL)

    def python_live_changed(self, server: Server | None = None) -> None:
        """The event-loop path's connections changed: limits in the engine count them."""
        self.c.set_limits(self.runtime.config.global_.maxconn, self.runtime.current)
        if server is not None:
            ref = self._servers.get(server)
            if ref is not None:
                ref.set_python_live(server.counters.current - self._fast_current(server))

    def _fast_current(self, server: Server) -> int:
        seen = self._seen.get(("live", server))
        return seen[0] if seen else 0

    # -- records ---------------------------------------------------------------------

    def drain(self) -> int:
        """Every connection the engine ended since the last drain: the Session the event-loop
        path would have had (Session.ended credits its bytes), its refusal count, its line.
        Returns how many."""
        log = self.runtime.conn_log
        records = self.c.drain()
        for record in records:
            reason = self._end_reason(record)
            counters = self._frontends[record[0]].counters
            if log is not None:
                session = self.session_of(record)
                session.ended(record[BYTES_IN], record[BYTES_OUT], reason)
                log.write(session)
            else:  # no line to write (log_connections = false): the counters alone, cheaper
                server = self._server_by_id.get(record[2])
                credit(counters, server, record[BYTES_IN], record[BYTES_OUT])
            if record[DENIED]:  # refused before reaching a server (Frontend._serve counts those)
                counters.denied[reason] += 1
        for fe in self.runtime.frontends:
            if not fe.accepting:
                fe.resume()  # a slot of the process's maxconn may have freed up
        return len(records)

    def _end_reason(self, record: tuple) -> str:
        reason, server_id = record[REASON], record[2]
        asked = self._leave_reasons.pop(record[CONN_ID], None)
        if asked is not None and reason in ("killed", "drained"):
            return asked  # leave() said why
        if reason == "killed" and server_id in self._close_reasons:
            return self._close_reasons[server_id]  # close_server() said why
        return reason

    def session_of(self, record: tuple) -> Session:
        """The Session of an engine record (drain(), or facts() of a live connection)."""
        (fid, pool_id, server_id, ip, port, client_id, username, version, keepalive, connack,
         wall_start, wait_ms, connect_ms, total_ms, *_) = record  # fmt: skip
        fe = self._frontends[fid]
        session = Session(fe, (ip, port))
        session.accepted_at = 0.0
        session.wall_start = wall_start
        session.inspected_at = _at(wait_ms)
        session.connected_at = _at(connect_ms)
        session.ended_at = _at(total_ms)
        session.backend = self._backend_by_id.get(pool_id)
        session.server = self._server_by_id.get(server_id)
        session.client_id = client_id
        session.username = username
        session.protocol_version = version
        session.keepalive = keepalive
        session.connack_code = connack
        return session

    # -- counters --------------------------------------------------------------------

    def add_live_bytes(
        self, frontends: dict[str, list[int]], servers: dict[int, list[int]]
    ) -> None:
        """Bytes of the engine's connections still open, into stats.rows._live_bytes' sums
        (per frontend name, per server id): their records credit them once they end."""
        for fe, fid in self._frontend_ids.items():
            row = frontends[fe.name]
            for i, n in enumerate(self.c.live_bytes(fid)):
                row[i] += n
        for server, ref in self._servers.items():
            row = servers[id(server)]
            for i, n in enumerate(ref.live_bytes):
                row[i] += n

    def _tick(self) -> None:
        self._sync = self.loop.call_later(SYNC_INTERVAL, self._tick)
        self.sync()

    def sync(self) -> None:
        """Add what the engine counted since the last sync to Python's counters (stats,
        metrics and the health checker's ``observe`` read those)."""
        for fe, fid in self._frontend_ids.items():
            self._sync_frontend(fe, self.c.counters(fid))
        for server, ref in self._servers.items():
            self._sync_server(server, ref)
        for backend, pool in self._pools.items():
            self._sync_backend(backend, pool.counters())

    def _delta(self, key: object, now: tuple) -> list:
        before = self._seen.get(key)
        self._seen[key] = now
        if before is None:
            return list(now)
        return [_count_delta(n, b) for n, b in zip(now, before, strict=True)]

    def _sync_frontend(self, fe: Frontend, now: tuple) -> None:
        *counts, accept_errno = now
        accepted, errors, _, versions, invalid = self._delta(("fe", fe), tuple(counts))
        c = fe.counters
        c.total += accepted
        c.fast_path_total += accepted
        if errors and (
            c.accept_errors == 0 or (c.accept_errors + errors) // 1000 > c.accept_errors // 1000
        ):
            # as listener.Frontend._back_off says it: the first, then every 1000th
            log.warning(
                "frontend %s: accept failed (%s), pausing", fe.name, os.strerror(accept_errno)
            )
        c.accept_errors += errors
        # the engine's connections, and those Python holds (adopted at a takeover)
        c.current += now[2] - c.fast_path_current
        c.fast_path_current = now[2]
        c.max_current = max(c.max_current, c.current)
        c.connects_by_version.update(versions)
        c.invalid_forwarded.update(invalid)

    def _sync_server(self, server: Server, ref: Any) -> None:
        total, econ, eresp, retries, redispatches, codes = self._delta(
            ("sv", server), ref.counters()
        )
        [live] = self._delta(("live", server), (ref.live,))
        c = server.counters
        c.total += total
        c.connect_errors += econ
        c.response_errors += eresp
        c.retries += retries
        c.redispatches += redispatches
        c.connack_codes.update(codes)
        c.current += live
        c.max_current = max(c.max_current, c.current)

    def _sync_backend(self, backend: Backend, now: tuple) -> None:
        no_server, hits, misses, learned, connect, connect_s, connack, connack_s = self._delta(
            ("be", backend), now
        )
        c = backend.counters
        c.no_server += no_server
        c.sticky_hits += hits
        c.sticky_misses += misses
        c.learned_ids += learned
        _add_histogram(c.connect_latency, connect, connect_s)
        _add_histogram(c.connack_latency, connack, connack_s)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            self._sync = None
        self.sync()


def admission(config: FrontendConfig, live: int, reuse: Any = None) -> Any:
    """The frontend's rules and limits for the engine (_admit.AdmissionRef), or None when it
    has neither: every client is let in. ``live``: the most connections it may hold.
    ``reuse``: the one it had before a reload, made with the same ``limits_of()``: it
    keeps its limiters' state and takes the new rules (access.Guard.reconfigure)."""
    from fastmqtt import _admit

    limits = config.rate_limit
    if config.access_default == "allow" and not (
        config.rules or limits or config.deny_empty_client_id
    ):
        return None
    rules = []
    for rule in config.rules:
        nets = [(net.version == 6, net.prefixlen, _packed16(net)) for net in rule.sources]
        pattern = None if rule.client_id is None else _id_pattern(rule.client_id)
        rules.append((rule.action, nets, *(pattern or (None, False))))
    if reuse is not None:
        reuse.set_rules(
            config.access_default, rules, deny_empty_client_id=config.deny_empty_client_id
        )
        return reuse
    rate = lambda r: None if r is None else (r.per_second, float(r.burst))  # noqa: E731
    return _admit.AdmissionRef(
        config.access_default,
        rules,
        deny_empty_client_id=config.deny_empty_client_id,
        per_source=rate(limits.per_source) if limits else None,
        max_per_source=(limits.max_per_source or 0) if limits else 0,
        connect_rate=rate(limits.connect_rate) if limits else None,
        per_client_id=rate(limits.per_client_id) if limits else None,
        max_delay=limits.max_delay if limits else 5.0,
        tracked=limits.tracked if limits else 1,
        ipv6_prefix=getattr(limits, "ipv6_prefix", 64),
        live_capacity=live,
    )


def limits_of(config: FrontendConfig, live: int) -> tuple[Any, int]:
    """What an admission's tables depend on: equal, a reload keeps it (admission())."""
    return config.rate_limit, live


def _packed16(net: Any) -> bytes:
    return net.network_address.packed.ljust(16, b"\0")


@functools.cache
def refusal_table() -> bytes:
    """The CONNACKs the engine sends when it refuses a client (reject_with_connack), made by
    access.py's writers, in the layout _fastpath.refusal() reads: one index byte per case,
    then the packets, each after its length byte."""
    from fastmqtt._parse import REASON_WORDS

    packets_: list[bytes] = []

    def index(packet: bytes | None) -> int:
        if packet is None:
            return 0
        if packet not in packets_:
            packets_.append(packet)
        return packets_.index(packet) + 1

    cases = []
    for codes in (NOT_AUTHORIZED, IDENTIFIER_REJECTED, RATE_EXCEEDED):  # RF_DENIED, ...
        cases += [index(packets.connack(codes[0], 4)), index(packets.connack(codes[1], 5))]
    for word in REASON_WORDS:  # RF_MALFORMED + (reason * 128 + level) * 2 + inside
        for level in range(128):
            for inside in (False, True):
                answer = None if word is None else malformed_answer(word, level, inside)
                cases.append(index(answer))
    return bytes(cases) + b"".join(bytes((len(p),)) + p for p in packets_)


def consistent_tables(
    balancer: Consistent, weights: list[int], up: list[bool], backup: list[bool], all_backups: bool
) -> tuple[Any, Any, Any, list[int]]:
    """What PoolRef.set_tables takes, built as balance.Consistent builds its tables: over
    every server with weight, over the usable primaries, over the usable backups (a single
    standby unless ``all_backups``, as backends._first_only), and the build order."""
    order = balancer.order
    primaries = [w if ok and not b else 0 for w, ok, b in zip(weights, up, backup, strict=True)]
    standby = [w if ok and b else 0 for w, ok, b in zip(weights, up, backup, strict=True)]
    if not all_backups:
        first = next((i for i, w in enumerate(standby) if w), None)
        standby = [w if i == first else 0 for i, w in enumerate(standby)]

    def table(ws: list[int]) -> Any:
        return balancer.table_for(tuple(ws[i] for i in order))

    return (
        table(weights),
        table(primaries) if any(primaries) else None,
        table(standby) if any(standby) else None,
        order,
    )


def _host_port_scope(server: Server) -> tuple[str, int, int]:
    """The address found for a server, as _choose takes it."""
    assert server.sockaddr is not None
    scope = server.sockaddr[3] if server.family == socket.AF_INET6 else 0
    return server.sockaddr[0], server.sockaddr[1], scope


def _add_histogram(h: Histogram, counts: list[int], seconds: float) -> None:
    for i, n in enumerate(counts):
        h.counts[i] += n
    h.count += sum(counts)
    h.total += seconds


def _track(hub: Any) -> int:
    """Whose packets the engine follows (_fastpath.TRACK_*): every MQTT client
    (track_packets), MQTT 5 ones (drain_disconnect alone), or none."""
    return 2 if hub.track_all else 1 if hub.drain_v5 else 0


def _ticks(seconds: float) -> int:
    return max(1, -int(-seconds // TICK))


def _at(ms: int) -> float | None:
    """A monotonic time whose Session._ms_since_accept (accepted at 0.0) is ``ms``."""
    return None if ms < 0 else (ms + 0.5) / 1000


def _count_delta(now: Any, before: Any) -> Any:
    """now - before, for a counter, a {key: count} or a list of counts."""
    if isinstance(now, dict):
        return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
    if isinstance(now, list):
        return [n - b for n, b in zip(now, before, strict=True)]
    return now - before
