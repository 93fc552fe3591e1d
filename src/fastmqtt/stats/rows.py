"""What the stats listener shows, as plain data: one snapshot of the live frontends, backends
and servers feeds the HTML page, the CSV, the JSON and the Prometheus text.

Row keys are HAProxy's CSV column names wherever one exists (``scur``, ``stot``, ``econ``,
``check_status``, ...), so the CSV is the rows themselves; what CSV cannot hold (denied
connections by reason, CONNACK codes, the latency histogram) rides along for JSON and metrics.

With ``workers > 1`` each worker takes its own snapshot and the supervisor adds them up with
merge_snapshots(): counters, current sessions, rates and per-worker limits are summed, what
describes a server (status, weight, check results) comes from the first worker that has it.
What belongs to one process (its fds, memory, CPU, reloads: ``processes``) is listed per
process, each labelled with its worker, never summed: an fd limit holds per process, and a
restarted worker's counters start again at zero, which a sum would show as a reset of all.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastmqtt import IMPLEMENTATION, __version__
from fastmqtt.backend import Backend, Server, ServerState
from fastmqtt.frontend import Frontend
from fastmqtt.health import DESCRIPTIONS, ServerHealth
from fastmqtt.metrics import Histogram, ReloadCounters
from fastmqtt.procfs import read_process

if TYPE_CHECKING:
    from fastmqtt.runtime import Runtime

# HAProxy 2.6's leading `show stat` columns, in its order (the rest are HTTP/H2/SSL ones).
CSV_COLUMNS = (
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout", "dreq",
    "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act", "bck",
    "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid", "sid", "throttle",
    "lbtot", "tracked", "type", "rate", "rate_lim", "rate_max", "check_status", "check_code",
    "check_duration", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
    "hanafail", "req_rate", "req_rate_max", "req_tot", "cli_abrt", "srv_abrt", "comp_in",
    "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk", "last_agt", "qtime", "ctime",
    "rtime", "ttime", "agent_status", "agent_code", "agent_duration", "check_desc", "agent_desc",
    "check_rise", "check_fall", "check_health", "agent_rise", "agent_fall", "agent_health", "addr",
    "cookie", "mode", "algo",
)  # fmt: skip
TYPES = {"frontend": 0, "backend": 1, "server": 2}  # HAProxy's `type` column
MQTT_VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}
SERVER_STATES = tuple(state.value for state in ServerState)


class Rates:
    """Sessions per second over the last tick, and the highest seen, per object."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, ...], int] = {}
        self.rate: dict[tuple[str, ...], int] = {}
        self.max: dict[tuple[str, ...], int] = {}

    def sample(self, key: tuple[str, ...], total: int) -> None:
        self.rate[key] = total - self._last.get(key, total)
        self._last[key] = total
        self.max[key] = max(self.max.get(key, 0), self.rate[key])

    def fields(self, key: tuple[str, ...]) -> dict[str, int]:
        return {"rate": self.rate.get(key, 0), "rate_max": self.max.get(key, 0)}


def _live_bytes(runtime: Runtime) -> tuple[dict[str, list[int]], dict[int, list[int]]]:
    """Bytes of connections still open (counters only grow when one ends): per frontend
    name and per server (by id), as [in, out]."""
    frontends: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    servers: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for session in runtime.hub.sessions.values():
        traffic = session.traffic(*runtime.hub.counters(session))
        rows = [frontends[session.frontend.name]]
        if session.server is not None:
            rows.append(servers[id(session.server)])
        for row in rows:
            row[0] += traffic[0]
            row[1] += traffic[1]
    if runtime.fast is not None:
        runtime.fast.add_live_bytes(frontends, servers)
    return frontends, servers


def _frontend_row(fe: Frontend, live: list[int], rates: Rates) -> dict[str, Any]:
    c = fe.counters
    reason = fe.runtime.path_reason(fe)
    return {
        "pxname": fe.name,
        "svname": "FRONTEND",
        "type": TYPES["frontend"],
        "status": "OPEN" if fe.sock is not None else "STOP",
        "addr": f"{fe.config.bind_host}:{fe.config.bind_port}",
        "mode": fe.config.protocol,
        "scur": c.current,
        "smax": c.max_current,
        "slim": fe.config.maxconn,
        "stot": c.total,
        "bin": c.bytes_in + live[0],
        "bout": c.bytes_out + live[1],
        "dreq": sum(c.denied.values()),
        "denied": dict(c.denied),
        "invalid_forwarded": dict(c.invalid_forwarded),
        "connects_by_version": {  # the standard versions from the start, so rate() sees them
            MQTT_VERSIONS.get(v, str(v)): n
            for v, n in sorted((dict.fromkeys(MQTT_VERSIONS, 0) | c.connects_by_version).items())
        },
        "accept_errors": c.accept_errors,
        "path_scur": {"fast": c.fast_path_current, "loop": c.current - c.fast_path_current},
        "path_stot": {"fast": c.fast_path_total, "loop": c.total - c.fast_path_total},
        "path": "fast" if reason is None else "event-loop",  # who sets connections up
        "path_reason": reason or "",
        **rates.fields(("frontend", fe.name)),
    }


def _check_fields(health: ServerHealth, now: float) -> dict[str, Any]:
    check, last = health.check, health.last
    if check is None:
        return {}
    fields: dict[str, Any] = {
        "check_type": check.type,
        "check_rise": check.rise,
        "check_fall": check.fall,
        "check_health": health.health,
        "chkfail": health.checks_failed,
        "chkdown": health.up_down,
    }
    if last is not None:
        assert health.last_check_at is not None
        fields |= {
            "check_status": last.status,
            "check_code": "" if last.code is None else last.code,
            "check_duration": round(last.duration * 1000),
            "check_desc": DESCRIPTIONS[last.status],
            "last_chk": last.info,
            "check_age": round(now - health.last_check_at, 1),
        }
    return fields


def _server_row(
    backend: Backend,
    server: Server,
    health: ServerHealth,
    live: list[int],
    rates: Rates,
    now: float,
) -> dict[str, Any]:
    c = server.counters
    up = server.state is ServerState.UP
    return {
        "pxname": backend.name,
        "svname": server.name,
        "type": TYPES["server"],
        "sid": server.index + 1,
        **_address_fields(server),
        "mode": "tcp",
        "status": health.status_text(),
        "state": server.state.value,
        "admin": health.admin.value,
        "backup": server.backup,
        "act": int(up and not server.backup),
        "bck": int(up and server.backup),
        "weight": server.weight,
        "throttle": round(health.throttle(now) * 100),
        "scur": c.current,
        "smax": c.max_current,
        "slim": server.maxconn or "",
        "stot": c.total,
        "bin": c.bytes_in + live[0],
        "bout": c.bytes_out + live[1],
        "econ": c.connect_errors,
        "eresp": c.response_errors,
        "wretr": c.retries,
        "wredis": c.redispatches,
        "connack": {str(code): n for code, n in sorted(c.connack_codes.items())},
        "lastchg": round(now - health.last_change),
        "downtime": round(health.downtime_total(now)),
        **_check_fields(health, now),
        **_resolution_fields(server),
        **rates.fields(("server", backend.name, server.name)),
    }


def _address_fields(server: Server) -> dict[str, Any]:
    """``addr``: where new clients go now ("" for nowhere); ``fqdn``: the name looked up."""
    if server.sockaddr is None:
        addr = ""
    else:
        host, port = server.sockaddr[0], server.sockaddr[1]
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"addr": addr, "fqdn": server.hostname} if server.named else {"addr": addr}


def _resolution_fields(server: Server) -> dict[str, Any]:
    """Why a server given by name has no address (or keeps an old one): also the check
    column's text when no probe result says more."""
    if server.resolution is None:
        return {}
    fields = {"resolution": server.resolution}
    if server.sockaddr is None:
        fields["last_chk"] = server.resolution
    return fields


def _histogram(h: Histogram) -> dict[str, Any]:
    cumulative, running = [], 0
    for count in h.counts:
        running += count
        cumulative.append(running)
    return {"le": [*h.bounds, "+Inf"], "cumulative": cumulative, "sum": h.total, "count": h.count}


_SUMMED = ("scur", "smax", "stot", "bin", "bout", "econ", "eresp", "wretr", "wredis", "act", "bck")


def _backend_row(backend: Backend, servers: list[dict[str, Any]], rates: Rates) -> dict[str, Any]:
    c = backend.counters
    row: dict[str, Any] = {key: sum(s[key] for s in servers) for key in _SUMMED}
    usable = row["act"] or row["bck"]
    return {
        **row,
        "pxname": backend.name,
        "svname": "BACKEND",
        "type": TYPES["backend"],
        "status": "UP" if usable else "DOWN",
        "algo": backend.config.balance,
        "mode": "tcp",
        "weight": sum(s["weight"] for s in servers if s["state"] == ServerState.UP.value),
        "lastchg": min((s["lastchg"] for s in servers), default=0),
        "no_server": c.no_server,
        "sticky_hits": c.sticky_hits,
        "sticky_misses": c.sticky_misses,
        "learned_ids": c.learned_ids,
        **_stick_fields(backend),
        "connect_latency": _histogram(c.connect_latency),
        "connack_latency": _histogram(c.connack_latency),
        "servers": servers,
        **rates.fields(("backend", backend.name)),
    }


def _stick_fields(backend: Backend) -> dict[str, Any]:
    """The backend's stick table, if it has one: shared by every worker, so the workers'
    snapshots agree on it and merging takes one, not the sum."""
    if backend.stick is None:
        return {}
    table = backend.stick
    return {"stick_entries": len(table), "stick_size": table.size, "stick_bytes": table.bytes}


def snapshot(runtime: Runtime, rates: Rates) -> dict[str, Any]:
    """Everything the stats page shows, as plain data (this is also /stats.json)."""
    now = runtime.loop.time()
    if runtime.fast is not None:  # what the engine's fast path did, into the counters below
        runtime.hub.take_records()
        runtime.fast.sync()
    live_fe, live_sv = _live_bytes(runtime)
    backends = []
    for backend in runtime.backends.values():
        checker = runtime.health[backend.name]
        servers = [
            _server_row(backend, s, checker.servers[s.name], live_sv[id(s)], rates, now)
            for s in backend.servers
        ]
        backends.append(_backend_row(backend, servers, rates))
    uptime = now - runtime.started_at
    return {
        "version": __version__,
        "implementation": IMPLEMENTATION,
        "pid": os.getpid(),
        "uptime_seconds": round(uptime, 3),
        "start_time_seconds": round(time.time() - uptime, 3),
        "current": runtime.current + (runtime.fast.live if runtime.fast is not None else 0),
        "maxconn": runtime.config.global_.maxconn,
        "frontends": [_frontend_row(fe, live_fe[fe.name], rates) for fe in runtime.frontends],
        "backends": backends,
        "processes": [process_row(runtime.reloads, runtime.worker)],
        "moves": runtime.rebalancer.snapshot(),
    }


def process_row(reloads: ReloadCounters, worker: int | str | None) -> dict[str, Any]:
    """One process's own numbers; ``worker`` (its index, or "supervisor") under workers."""
    row = {**read_process(), **reloads.fields()}
    return row if worker is None else {"worker": str(worker), **row}


def _rows(snap: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """HAProxy's row order: each frontend, then each backend's servers and the backend."""
    yield from snap["frontends"]
    for backend in snap["backends"]:
        yield from backend["servers"]
        yield backend


def render_csv(snap: dict[str, Any]) -> str:
    out = io.StringIO()
    out.write("# " + ",".join(CSV_COLUMNS) + "\n")
    writer = csv.writer(out, lineterminator="\n")
    iids = {name: i + 1 for i, name in enumerate(_proxy_names(snap))}
    for row in _rows(snap):
        values = {**row, "pid": 1, "iid": iids[row["pxname"]], "sid": row.get("sid", 0)}
        writer.writerow([values.get(column, "") for column in CSV_COLUMNS])
    return out.getvalue()


def _proxy_names(snap: dict[str, Any]) -> list[str]:
    names = [fe["pxname"] for fe in snap["frontends"]]
    return names + [be["pxname"] for be in snap["backends"] if be["pxname"] not in names]


# Summed across workers. Limits (maxconn, slim) are enforced per worker, so they add up too;
# smax and rate_max become the sum of per-worker maxima (an upper bound of the true peak).
MERGE_SUMMED = frozenset({
    "scur", "smax", "slim", "stot", "bin", "bout", "dreq", "econ", "eresp", "wretr", "wredis",
    "rate", "rate_max", "accept_errors", "chkfail", "chkdown", "no_server", "sticky_hits",
    "sticky_misses", "learned_ids",
})  # fmt: skip
MERGE_COUNTS = frozenset({
    "denied", "invalid_forwarded", "connects_by_version", "connack", "path_scur", "path_stot",
})  # fmt: skip
MERGE_HISTOGRAMS = frozenset({"connect_latency", "connack_latency"})


def merge_snapshots(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for several workers (at least one). A frontend, backend or server only
    some workers know (a reload reaching them one after the other) is merged over those."""
    return {
        **snaps[0],
        "uptime_seconds": max(s["uptime_seconds"] for s in snaps),
        "start_time_seconds": min(s["start_time_seconds"] for s in snaps),
        "current": sum(s["current"] for s in snaps),
        "maxconn": sum(s["maxconn"] for s in snaps),
        "frontends": _merge_rows([s["frontends"] for s in snaps], "pxname"),
        "backends": _merge_rows([s["backends"] for s in snaps], "pxname"),
        "processes": [process for s in snaps for process in s["processes"]],
        "workers": len(snaps),
        "pids": [s["pid"] for s in snaps],
    }


def _merge_rows(lists: list[list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Rows with the same name merged, in the order they first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rows in lists:
        for row in rows:
            groups.setdefault(row[key], []).append(row)
    return [
        {name: _merge_field(name, [r[name] for r in rows if name in r]) for name in rows[0]}
        for rows in groups.values()
    ]


def _merge_field(name: str, values: list[Any]) -> Any:
    if name in MERGE_SUMMED and all(type(v) is int for v in values):
        return sum(values)  # a blank limit ("" = none) stays blank
    if name in MERGE_COUNTS:
        total: Counter[str] = Counter()
        for counts in values:
            total.update(counts)
        return dict(total)
    if name in MERGE_HISTOGRAMS:
        return {
            "le": values[0]["le"],
            "cumulative": [sum(c) for c in zip(*(h["cumulative"] for h in values), strict=True)],
            "sum": sum(h["sum"] for h in values),
            "count": sum(h["count"] for h in values),
        }
    if name == "servers":
        return _merge_rows(values, "svname")
    return values[0]
