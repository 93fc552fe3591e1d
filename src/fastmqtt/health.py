"""Server health: active probes (tcp / mqtt / http), passive observation of real connects,
the operator's admin states, and what a state change does (log, close sessions, slow start).

A server's state combines two things HAProxy also keeps apart: its health (up or down, from
probes and observation) and its admin state (ready, drain, maint, set through the admin API).
MAINT wins over everything, then DOWN, then DRAIN; a server is UP only when healthy and ready.

Health follows HAProxy's counter: ``health`` runs from 0 to ``rise + fall - 1`` and the server
is up while it is at least ``rise``. A server starts up with ``health = rise``, so the first
failed probe takes it down (HAProxy's "up, but will fall down at first failure"); once proven
it takes ``fall`` consecutive failures to go down and, when down, ``rise`` successes to return.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import NamedTuple

from fastmqtt import packets
from fastmqtt.backend import Backend, Server, ServerState
from fastmqtt.config import BackendConfig, CheckConfig, ServerConfig
from fastmqtt.deadline import Deadline
from fastmqtt.errors import MalformedPacket
from fastmqtt.parse import inspect_connack
from fastmqtt.proxy_protocol import encode_v2_local

log = logging.getLogger("fastmqtt.health")

OBSERVE_TICK = 0.1  # seconds between looks at real traffic's connect errors
SLOWSTART_STEPS = 16  # weight updates during one slow start
WEIGHT_SCALE = 16  # weights are scaled while a server ramps, so a weight of 1 can ramp too
MAX_RESPONSE = 4096  # bytes a probe reads before giving up on the answer
CHECK_KEEPALIVE = 30  # seconds announced in the probe's CONNECT; it disconnects at once anyway
_HTTP_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")

# HAProxy's check_desc for each check_status, so existing dashboards read the same words.
DESCRIPTIONS = {
    "L4OK": "Layer4 check passed",
    "L4CON": "Layer4 connection problem",
    "L4TOUT": "Layer4 timeout",
    "L7OK": "Layer7 check passed",
    "L7RSP": "Layer7 invalid response",
    "L7TOUT": "Layer7 timeout",
    "L7STS": "Layer7 wrong status",
    "OBSERVE": "Connection errors on real traffic",
}


class Admin(enum.Enum):
    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


class CheckResult(NamedTuple):
    ok: bool
    status: str  # a DESCRIPTIONS key
    code: int | None  # CONNACK reason code or HTTP status
    info: str  # what happened, e.g. "Connection refused"
    duration: float  # seconds


class _Failed(Exception):
    def __init__(self, status: str, info: str, code: int | None = None) -> None:
        super().__init__(info)
        self.status, self.info, self.code = status, info, code


def check_for(backend: BackendConfig, server: ServerConfig) -> CheckConfig | None:
    """The probe settings of one server: the backend's, switched or overridden per server."""
    override = server.check
    if override is False:
        return None
    if override is None:
        return backend.check
    base = backend.check or CheckConfig()
    return base if override is True else replace(base, **override)  # type: ignore[arg-type]


# -- probes -------------------------------------------------------------------------------


def _check_address(server: Server, check: CheckConfig) -> tuple:
    if check.port is None:
        return server.sockaddr
    return (server.sockaddr[0], check.port, *server.sockaddr[2:])


async def _open(
    loop: asyncio.AbstractEventLoop, server: Server, check: CheckConfig
) -> socket.socket:
    sock = socket.socket(server.family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, _check_address(server, check))
        if check.send_proxy:  # the broker expects a PROXY header first; LOCAL = "a probe"
            await loop.sock_sendall(sock, encode_v2_local())
    except BaseException:
        sock.close()
        raise
    return sock


async def _read_until(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, done: Callable[[bytearray], object]
) -> object:
    """Read until ``done(data)`` returns something other than None (bounded in size)."""
    data = bytearray()
    while (answer := done(data)) is None:
        chunk = await loop.sock_recv(sock, MAX_RESPONSE)
        if not chunk:
            raise _Failed("L7RSP", "closed without an answer")
        data += chunk
        if len(data) > MAX_RESPONSE:
            raise _Failed("L7RSP", f"no answer in the first {MAX_RESPONSE} bytes")
    return answer


async def _probe_tcp(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    server: Server,
    check: CheckConfig,
    password: str | None,
) -> tuple[str, int | None, str]:
    return "L4OK", None, "connected"


async def _probe_mqtt(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    server: Server,
    check: CheckConfig,
    password: str | None,
) -> tuple[str, int | None, str]:
    """CONNECT, expect CONNACK 0, DISCONNECT: the broker really serves MQTT."""
    secret = None if password is None else password.encode()
    hello = packets.connect(
        check.client_id, check.mqtt_version, CHECK_KEEPALIVE, True, check.username, secret
    )
    await loop.sock_sendall(sock, hello)
    try:
        connack = await _read_until(loop, sock, lambda d: inspect_connack(d, check.mqtt_version))
    except MalformedPacket as exc:
        raise _Failed("L7RSP", f"malformed CONNACK: {exc.reason}") from None
    code = connack.reason_code  # type: ignore[attr-defined]
    if code != 0:
        raise _Failed("L7RSP", f"CONNACK reason code {code}", code)
    await loop.sock_sendall(sock, packets.DISCONNECT)
    return "L7OK", 0, "CONNACK 0"


async def _probe_http(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    server: Server,
    check: CheckConfig,
    password: str | None,
) -> tuple[str, int | None, str]:
    """GET ``path``, expect ``expect_status`` (EMQX answers 503 while a node drains)."""
    auth = ""
    if check.username is not None:
        token = base64.b64encode(f"{check.username}:{password or ''}".encode()).decode()
        auth = f"Authorization: Basic {token}\r\n"
    request = (
        f"GET {check.path} HTTP/1.1\r\nHost: {server.hostname}\r\n"
        f"User-Agent: fastmqtt-check\r\nConnection: close\r\n{auth}\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    line = await _read_until(
        loop, sock, lambda d: bytes(d[: d.index(b"\n")]) if b"\n" in d else None
    )
    match = _HTTP_STATUS.match(line)  # type: ignore[arg-type]
    if match is None:
        raise _Failed("L7RSP", "not an HTTP/1.x status line")
    status = int(match[1])
    if status != check.expect_status:
        raise _Failed("L7STS", f"HTTP status {status}", status)
    return "L7OK", status, f"HTTP status {status}"


Probe = Callable[..., Awaitable[tuple[str, int | None, str]]]
PROBES: dict[str, Probe] = {"tcp": _probe_tcp, "mqtt": _probe_mqtt, "http": _probe_http}


async def probe(
    loop: asyncio.AbstractEventLoop, server: Server, check: CheckConfig, password: str | None = None
) -> CheckResult:
    """One health check of ``server``; never raises for anything the server does."""
    started = loop.time()
    layer = "L4"
    try:
        with Deadline(loop, check.timeout or check.interval):
            sock = await _open(loop, server, check)
            layer = "L7" if check.type != "tcp" else "L4"
            try:
                status, code, info = await PROBES[check.type](loop, sock, server, check, password)
            finally:
                sock.close()
    except TimeoutError:
        status, code, info = f"{layer}TOUT", None, "timeout"
    except _Failed as exc:
        status, code, info = exc.status, exc.code, exc.info
    except OSError as exc:  # uvloop's strerror names the call, not the cause
        kind = "CON" if layer == "L4" else "RSP"
        info = os.strerror(exc.errno) if exc.errno else str(exc)
        status, code = f"{layer}{kind}", None
    ok = status.endswith("OK")
    return CheckResult(ok, status, code, info, loop.time() - started)


# -- one server's health ------------------------------------------------------------------


class ServerHealth:
    """Health counter, admin state and history of one server."""

    def __init__(self, server: Server, check: CheckConfig | None, now: float) -> None:
        self.server = server
        self.check = check
        self.admin = Admin.READY
        self.up = True
        self.health = check.rise if check is not None else 0
        self.password = _password(check)
        self.last: CheckResult | None = None
        self.last_check_at: float | None = None
        self.checks_failed = 0
        self.up_down = 0  # times health took it from up to down
        self.last_change = now
        self.down_since: float | None = None
        self.downtime = 0.0
        self.observed_errors = 0  # consecutive failed connects of real clients
        self.seen = (server.counters.connect_errors, server.counters.total)
        self.ramp_start: float | None = None  # slow start in progress since

    def retune(self, check: CheckConfig | None) -> None:
        """A reload kept the server at the same address: up or down and the history stay, the
        counter is brought within the new rise/fall, admin states end (as HAProxy's do)."""
        self.check = check
        self.password = _password(check)
        self.admin = Admin.READY
        if check is None:  # never probed again: "no check" servers are up
            self.up, self.health = True, 0
        elif self.up:
            self.health = min(max(self.health, check.rise), check.rise + check.fall - 1)
        else:
            self.health = min(self.health, check.rise - 1)

    def state(self) -> ServerState:
        if self.admin is Admin.MAINT:
            return ServerState.MAINT
        if self.server.sockaddr is None:  # a name that did not resolve, an empty template slot
            return ServerState.MAINT if self.server.config.template else ServerState.DOWN
        if not self.up:
            return ServerState.DOWN
        return ServerState.DRAIN if self.admin is Admin.DRAIN else ServerState.UP

    def passed(self) -> None:
        assert self.check is not None
        if not self.up:
            self.health += 1
            if self.health < self.check.rise:
                return
            self.up = True
        self.health = self.check.rise + self.check.fall - 1

    def failed(self) -> None:
        assert self.check is not None
        if self.up and self.health > self.check.rise:
            self.health -= 1
            return
        self.health = 0
        self.up = False

    def observe(self) -> int:
        """Count failed connects of real clients since the last look (any success resets);
        at ``error_limit`` the server goes down and the count is returned, else 0. Only
        failures seen while it is up count: those of a server already down (attempts begun
        before, or counts that reach Python late from the engine) would take it down again
        as soon as its checks bring it back."""
        assert self.check is not None
        counters = self.server.counters
        errors = counters.connect_errors - self.seen[0]
        successes = counters.total - self.seen[1]
        self.seen = (counters.connect_errors, counters.total)
        if successes or not self.up:
            self.observed_errors = 0
            return 0
        self.observed_errors += errors
        if self.observed_errors < self.check.error_limit:
            return 0
        count, self.observed_errors = self.observed_errors, 0
        self.health = 0
        self.up = False
        return count

    def next_interval(self) -> float:
        check = self.check
        assert check is not None
        if not self.up and self.health == 0:
            return check.downinter or check.interval
        full = check.rise + check.fall - 1
        if (self.up and self.health < full) or (not self.up and self.health > 0):
            return check.fastinter or check.interval
        return check.interval

    def restart(self) -> None:
        """Another address: health starts over, up until the first failed probe (as HAProxy
        2.6 starts a server that leaves its resolution maintenance: "UP 1/3")."""
        self.up = True
        self.health = self.check.rise if self.check is not None else 0
        self.last = self.last_check_at = None
        self.observed_errors = 0
        self.seen = (self.server.counters.connect_errors, self.server.counters.total)

    def status_text(self) -> str:
        """HAProxy's status column: "UP", "UP 1/3" (going down), "DOWN 1/2" (coming up)..."""
        state = self.state()
        check = self.check
        if state in (ServerState.MAINT, ServerState.DRAIN) or self.server.sockaddr is None:
            return state.value
        if check is None:
            return "no check"  # HAProxy's words for a server that is never probed
        if self.up and self.health < check.rise + check.fall - 1:
            return f"{state.value} {self.health - check.rise + 1}/{check.fall}"
        if not self.up and self.health > 0:
            return f"DOWN {self.health}/{check.rise}"
        return state.value

    def downtime_total(self, now: float) -> float:
        return self.downtime + (now - self.down_since if self.down_since is not None else 0.0)

    def throttle(self, now: float) -> float:
        """Share of its weight the server gets now: below 1.0 while it slow-starts."""
        check = self.check
        if self.ramp_start is None or check is None or not check.slowstart:
            return 1.0
        return min(1.0, (now - self.ramp_start) / check.slowstart)

    def set_up(self, up: bool, now: float) -> None:
        """Book downtime when health flips (MAINT or DRAIN do not count as down)."""
        if not up and self.down_since is None:
            self.down_since = now
            self.up_down += 1
        elif up and self.down_since is not None:
            self.downtime += now - self.down_since
            self.down_since = None


def _target(server: Server, check: CheckConfig | None) -> tuple[str, int | None]:
    """What a server's health is the health of: its configured address and check port."""
    return server.address, None if check is None else check.port


def _password(check: CheckConfig | None) -> str | None:
    return os.environ.get(check.password_env) if check and check.password_env else None


def _carried(
    server: Server, check: CheckConfig | None, previous: HealthChecker | None, now: float
) -> ServerHealth:
    """A reloaded server's health: what was known of it if it stays at the same address
    (docs/running.md: a server that stays keeps its live state), else a fresh start."""
    if previous is None or server.name not in previous.servers:
        return ServerHealth(server, check, now)
    if previous.targets[server.name] != _target(server, check):
        return ServerHealth(server, check, now)  # another broker under the same name
    kept = previous.servers[server.name]
    kept.retune(check)
    return kept


def _placement(server: Server) -> str:
    """Why a server moved, for the state-change log line."""
    if server.sockaddr is None:
        return server.resolution or "no address"
    host, port = server.sockaddr[0], server.sockaddr[1]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{server.hostname} is at {where}"


# -- one backend's checker ----------------------------------------------------------------


class HealthChecker:
    """Probes the servers of one backend and applies health, admin and weight changes.
    ``previous``: the checker this one replaces in a reload, whose knowledge carries over."""

    def __init__(
        self,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        close_sessions: Callable[[Server, str], int],
        previous: HealthChecker | None = None,
    ) -> None:
        self.backend = backend
        self.loop = loop
        self.close_sessions = close_sessions  # Runtime.close_sessions
        now = self.loop.time()
        checks = {s.name: check_for(backend.config, s.config) for s in backend.servers}
        self.targets = {s.name: _target(s, checks[s.name]) for s in backend.servers}
        self.servers = {s.name: _carried(s, checks[s.name], previous, now) for s in backend.servers}
        for health in self.servers.values():
            health.set_up(health.state() is not ServerState.DOWN, now)
            health.server.state = health.state()
        self._tasks: list[asyncio.Task] = []
        self._probes: dict[str, asyncio.Task] = {}  # by server name
        self._ramp: asyncio.TimerHandle | None = None
        self.running = False

    def start(self) -> None:
        """Start probing, spread over one interval so servers are not all probed at once;
        a slow start that a reload interrupted goes on."""
        if any(h.ramp_start is not None for h in self.servers.values()):
            self._apply_weights()
        self.running = True
        checked = [h for h in self.servers.values() if h.check is not None]
        for i, health in enumerate(checked):
            assert health.check is not None
            self._probe(health, health.check.interval * i / len(checked))
        if any(h.check.observe for h in checked if h.check is not None):
            self._tasks.append(self.loop.create_task(self._observe()))

    def stop(self) -> None:
        self.running = False
        for task in [*self._tasks, *self._probes.values()]:
            task.cancel()
        self._tasks.clear()
        self._probes.clear()
        if self._ramp is not None:
            self._ramp.cancel()
            self._ramp = None

    def _probe(self, health: ServerHealth, offset: float) -> None:
        """(Re)start probing one server, if it is checked and has an address to probe."""
        task = self._probes.pop(health.server.name, None)
        if task is not None:
            task.cancel()
        if health.check is not None and health.server.sockaddr is not None:
            self._probes[health.server.name] = self.loop.create_task(self._run(health, offset))

    def readdressed(self, servers: Sequence[Server]) -> None:
        """Servers got another address or lost theirs (discovery.py): one that got one starts
        afresh and is probed now; admin states, counters and history stay with the name."""
        for server in servers:
            health = self.servers.get(server.name)
            if health is None:  # the name left in a reload that raced the lookup
                continue
            if server.sockaddr is not None:
                health.restart()
            if not self.running:  # before start: the state is all there is to set
                server.state = health.state()
                continue
            self._probe(health, 0.0)
            self._update(health, _placement(server))

    async def _run(self, health: ServerHealth, offset: float) -> None:
        assert health.check is not None
        await asyncio.sleep(offset)
        while True:
            result = await probe(self.loop, health.server, health.check, health.password)
            self.record(health, result)
            await asyncio.sleep(health.next_interval())

    def record(self, health: ServerHealth, result: CheckResult) -> None:
        """Apply one probe result."""
        health.last = result
        health.last_check_at = self.loop.time()
        if result.ok:
            health.passed()
        else:
            health.checks_failed += 1
            health.failed()
        took = f"check duration {result.duration * 1000:.0f}ms"
        self._update(health, f"{DESCRIPTIONS[result.status]}: {result.info}, {took}")

    async def _observe(self) -> None:
        observed = [h for h in self.servers.values() if h.check is not None and h.check.observe]
        while True:
            await asyncio.sleep(OBSERVE_TICK)
            for health in observed:
                self._observe_one(health)

    def _observe_one(self, health: ServerHealth) -> None:
        count = health.observe()
        if count:
            info = f"{count} consecutive connect errors"
            health.last = CheckResult(False, "OBSERVE", None, info, 0.0)
            self._update(health, f"{DESCRIPTIONS['OBSERVE']}: {info}")

    # -- state changes ---------------------------------------------------------------

    def set_admin(self, name: str, admin: Admin, who: str) -> ServerHealth:
        """drain / maint / ready from the admin API; KeyError for an unknown server."""
        health = self.servers[name]
        health.admin = admin
        self._update(health, f"set to {admin.value} by {who}")
        return health

    def set_weight(self, name: str, weight: int, who: str) -> ServerHealth:
        health = self.servers[name]
        old, health.server.weight = health.server.weight, weight
        self._apply_weights()
        log.info(
            "server %s/%s weight %d -> %d by %s",
            self.backend.name,
            name,
            old,
            weight,
            who,
            extra={"backend": self.backend.name, "server": name, "weight": weight},
        )
        return health

    def _update(self, health: ServerHealth, reason: str) -> None:
        server = health.server
        now = self.loop.time()
        health.set_up(health.state() is not ServerState.DOWN, now)
        old, new = server.state, health.state()
        if old is new:
            return
        server.state = new
        self.backend.changed()
        health.last_change = now
        level = logging.WARNING if new in (ServerState.DOWN, ServerState.MAINT) else logging.INFO
        log.log(
            level,
            "server %s/%s is %s (was %s): %s; %s",
            self.backend.name,
            server.name,
            new.value,
            old.value,
            reason,
            self._remaining(),
            extra={
                "backend": self.backend.name,
                "server": server.name,
                "state": new.value,
                "previous_state": old.value,
                "reason": reason,
            },
        )
        check = health.check
        if (
            new in (ServerState.DOWN, ServerState.MAINT)
            and check is not None
            and check.on_marked_down == "shutdown-sessions"
        ):  # HAProxy 2.6 closes them on entering maintenance too
            self._shutdown_sessions(server, f"server-{new.value.lower()}")
        if (
            new is ServerState.UP
            and old in (ServerState.DOWN, ServerState.MAINT)
            and check
            and check.slowstart
        ):
            health.ramp_start = now
            self._apply_weights()

    def _remaining(self) -> str:
        usable = [s for s in self.backend.servers if s.state is ServerState.UP]
        backups = sum(s.backup for s in usable)
        return f"{len(usable) - backups} active and {backups} backup servers usable"

    def _shutdown_sessions(self, server: Server, reason: str) -> None:
        """on_marked_down = "shutdown-sessions": clients reconnect elsewhere at once."""
        closed = self.close_sessions(server, reason)
        log.warning("server %s/%s: closed %d sessions", self.backend.name, server.name, closed)

    # -- weights and slow start --------------------------------------------------------

    def _apply_weights(self) -> None:
        """Hand the balancer the weights of this moment; while a server ramps up, every
        weight is scaled so the ramping one can take fractional shares."""
        now = self.loop.time()
        shares = [self.servers[s.name].throttle(now) for s in self.backend.servers]
        for health, share in zip(self.servers.values(), shares, strict=True):
            if share >= 1.0:
                health.ramp_start = None
        weights = [s.weight for s in self.backend.servers]
        if all(share >= 1.0 for share in shares):
            self.backend.balancer.set_weights(weights)
            self.backend.changed()
            return
        scaled = [
            max(1, round(w * WEIGHT_SCALE * f)) if w else 0
            for w, f in zip(weights, shares, strict=True)
        ]
        self.backend.balancer.set_weights(scaled)
        self.backend.changed()
        if self._ramp is None:
            step = (
                max(h.check.slowstart for h in self.servers.values() if h.check) / SLOWSTART_STEPS
            )
            self._ramp = self.loop.call_later(max(step, 0.05), self._ramp_step)

    def _ramp_step(self) -> None:
        self._ramp = None
        self._apply_weights()
