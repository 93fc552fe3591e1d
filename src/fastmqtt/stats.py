"""The stats listener (``[stats]``): what fastmqtt is doing, for people and for scrapers, and
the runtime admin API.

- ``{uri}`` (default ``/stats``): an HTML page that refreshes itself, readable on a phone;
- ``{uri};csv``: the same rows under HAProxy's leading CSV column names, so scripts written
  for ``haproxy /stats;csv`` keep working; ``{uri}.json``: the same rows as JSON;
- ``/metrics``: Prometheus text format, ``fastmqtt_*`` names;
- ``/healthz``: 200 while the process serves (never needs auth: it is for liveness probes);
- ``GET /api/servers[/{backend}/{server}]`` and ``POST /api/servers/{backend}/{server}`` with
  ``{"state": "drain"|"maint"|"ready"}`` and/or ``{"weight": N}``.

With ``auth`` configured every path but ``/healthz`` needs HTTP basic auth (the password is
read from the environment variable ``password_env`` at start); the admin API always needs it
and answers 403 when no auth is configured.

A small HTTP/1.1 server on asyncio streams: one request per connection, bounded head and
body sizes and a deadline per request. No web framework, no new runtime dependency.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import hmac
import html
import io
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

from fastmqtt import IMPLEMENTATION, __version__
from fastmqtt.backends import Backend, Server, ServerState
from fastmqtt.config import StatsConfig
from fastmqtt.deadline import Deadline
from fastmqtt.health import DESCRIPTIONS, Admin, ServerHealth
from fastmqtt.listener import Frontend, open_listener
from fastmqtt.metrics import Histogram

if TYPE_CHECKING:
    from fastmqtt.server import Proxy

log = logging.getLogger("fastmqtt.stats")

MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 4096  # admin requests are tiny JSON objects
REQUEST_DEADLINE = 10.0  # seconds to read a request and write the answer
RATE_TICK = 1.0  # seconds between session-rate samples
MAX_WEIGHT = 256
API = "/api/servers"

# HAProxy 2.6's leading `show stat` columns, in its order (the rest are HTTP/H2/SSL ones).
CSV_COLUMNS = (
    "pxname",
    "svname",
    "qcur",
    "qmax",
    "scur",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "dreq",
    "dresp",
    "ereq",
    "econ",
    "eresp",
    "wretr",
    "wredis",
    "status",
    "weight",
    "act",
    "bck",
    "chkfail",
    "chkdown",
    "lastchg",
    "downtime",
    "qlimit",
    "pid",
    "iid",
    "sid",
    "throttle",
    "lbtot",
    "tracked",
    "type",
    "rate",
    "rate_lim",
    "rate_max",
    "check_status",
    "check_code",
    "check_duration",
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
    "hrsp_other",
    "hanafail",
    "req_rate",
    "req_rate_max",
    "req_tot",
    "cli_abrt",
    "srv_abrt",
    "comp_in",
    "comp_out",
    "comp_byp",
    "comp_rsp",
    "lastsess",
    "last_chk",
    "last_agt",
    "qtime",
    "ctime",
    "rtime",
    "ttime",
    "agent_status",
    "agent_code",
    "agent_duration",
    "check_desc",
    "agent_desc",
    "check_rise",
    "check_fall",
    "check_health",
    "agent_rise",
    "agent_fall",
    "agent_health",
    "addr",
    "cookie",
    "mode",
    "algo",
)  # fmt: skip
TYPES = {"frontend": 0, "backend": 1, "server": 2}  # HAProxy's `type` column
MQTT_VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}
SERVER_STATES = tuple(state.value for state in ServerState)


# -- the rows: one snapshot feeds HTML, CSV, JSON and metrics ------------------------------


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


def _live_bytes(proxy: Proxy) -> tuple[dict[str, list[int]], dict[int, list[int]]]:
    """Bytes of connections still open (counters only grow when one ends): per frontend
    name and per server (by id), as [in, out]."""
    frontends: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    servers: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for session in proxy.hub.sessions.values():
        c2s, s2c = proxy.hub.counters(session)
        fe = frontends[session.frontend]
        fe[0] += c2s  # the CONNECT itself is already counted by the listener
        fe[1] += session.bytes_out + s2c
        if session.server is not None:
            sv = servers[id(session.server)]
            sv[0] += session.bytes_in + c2s
            sv[1] += session.bytes_out + s2c
    return frontends, servers


def _frontend_row(fe: Frontend, live: list[int], rates: Rates) -> dict[str, Any]:
    c = fe.counters
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
        "connects_by_version": {
            MQTT_VERSIONS.get(v, str(v)): n for v, n in sorted(c.connects_by_version.items())
        },
        "accept_errors": c.accept_errors,
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
        "addr": server.address,
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
        **rates.fields(("server", backend.name, server.name)),
    }


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
        "connect_latency": _histogram(c.connect_latency),
        "servers": servers,
        **rates.fields(("backend", backend.name)),
    }


def snapshot(proxy: Proxy, rates: Rates) -> dict[str, Any]:
    """Everything the stats page shows, as plain data (this is also /stats.json)."""
    now = proxy.loop.time()
    live_fe, live_sv = _live_bytes(proxy)
    backends = []
    for backend in proxy.backends.values():
        checker = proxy.health[backend.name]
        servers = [
            _server_row(backend, s, checker.servers[s.name], live_sv[id(s)], rates, now)
            for s in backend.servers
        ]
        backends.append(_backend_row(backend, servers, rates))
    uptime = now - proxy.started_at
    return {
        "version": __version__,
        "implementation": IMPLEMENTATION,
        "pid": os.getpid(),
        "uptime_seconds": round(uptime, 3),
        "start_time_seconds": round(time.time() - uptime, 3),
        "current": proxy.current,
        "maxconn": proxy.config.global_.maxconn,
        "frontends": [_frontend_row(fe, live_fe[fe.name], rates) for fe in proxy.frontends],
        "backends": backends,
    }


def _rows(snap: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """HAProxy's row order: each frontend, then each backend's servers and the backend."""
    yield from snap["frontends"]
    for backend in snap["backends"]:
        yield from backend["servers"]
        yield backend


# -- CSV ----------------------------------------------------------------------------------


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


# -- Prometheus text format -----------------------------------------------------------------


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, labels: dict[str, object], value: float) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}"


class _Exposition:
    """Collects metric families; each family's samples are written together."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, object], float]],
    ) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [_sample(name, labels, value) for labels, value in samples]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# (metric suffix, type, help, row key) for frontends, backends and servers alike.
_COMMON = (
    ("current_sessions", "gauge", "Current connections", "scur"),
    ("max_sessions", "gauge", "Highest number of concurrent connections", "smax"),
    ("sessions_total", "counter", "Connections since the process started", "stot"),
    ("bytes_in_total", "counter", "Bytes from clients", "bin"),
    ("bytes_out_total", "counter", "Bytes to clients", "bout"),
    ("max_session_rate", "gauge", "Highest number of new connections per second", "rate_max"),
)
_UPSTREAM = (
    ("connection_errors_total", "counter", "Failed connects to brokers", "econ"),
    ("response_errors_total", "counter", "Brokers that sent no or a bad CONNACK", "eresp"),
    ("retry_warnings_total", "counter", "Connect retries", "wretr"),
    ("redispatch_warnings_total", "counter", "Retries sent to another server", "wredis"),
    ("weight", "gauge", "Weight (servers) or the sum of usable servers' weights", "weight"),
)
_SERVER_ONLY = (
    ("check_failures_total", "counter", "Failed health checks", "chkfail"),
    ("check_up_down_total", "counter", "Transitions from up to down", "chkdown"),
    ("check_last_change_seconds", "gauge", "Seconds since the last state change", "lastchg"),
    ("downtime_seconds_total", "counter", "Seconds spent down", "downtime"),
    ("current_throttle", "gauge", "Percent of its weight a slow-starting server gets", "throttle"),
)
_BACKEND_ONLY = (
    ("active_servers", "gauge", "Usable primary servers", "act"),
    ("backup_servers", "gauge", "Usable backup servers", "bck"),
    ("no_server_total", "counter", "Clients closed because no server could take them", "no_server"),
    ("sticky_hits_total", "counter", "Clients routed by the stick table", "sticky_hits"),
    (
        "sticky_misses_total",
        "counter",
        "Clients the stick table did not route (new, expired, server unusable)",
        "sticky_misses",
    ),
    ("learned_client_ids_total", "counter", "Broker-assigned client ids learned", "learned_ids"),
)


def _simple(
    out: _Exposition, prefix: str, table: tuple, rows: list[tuple[dict[str, object], dict]]
) -> None:
    for suffix, kind, help_text, key in table:
        samples = [(labels, row[key]) for labels, row in rows if row.get(key, "") != ""]
        out.family(f"{prefix}_{suffix}", kind, help_text, samples)


def _by_label(rows: list[tuple[dict[str, object], dict]], key: str, label: str) -> Iterator:
    for labels, row in rows:
        for value, count in row[key].items():
            yield {**labels, label: value}, count


def render_metrics(snap: dict[str, Any]) -> str:
    out = _Exposition()
    info = {"version": snap["version"], "implementation": snap["implementation"]}
    out.family("fastmqtt_build_info", "gauge", "Version and implementation", [(info, 1)])
    out.family(
        "fastmqtt_process_start_time_seconds",
        "gauge",
        "Start time (Unix seconds)",
        [({}, snap["start_time_seconds"])],
    )
    out.family(
        "fastmqtt_current_connections", "gauge", "Open client connections", [({}, snap["current"])]
    )
    out.family("fastmqtt_max_connections", "gauge", "Global maxconn", [({}, snap["maxconn"])])
    _frontend_metrics(out, [({"frontend": fe["pxname"]}, fe) for fe in snap["frontends"]])
    backends = [({"backend": be["pxname"]}, be) for be in snap["backends"]]
    servers = [
        ({"backend": be["pxname"], "server": sv["svname"]}, sv)
        for be in snap["backends"]
        for sv in be["servers"]
    ]
    _backend_metrics(out, backends)
    _server_metrics(out, servers)
    return out.text()


def _frontend_metrics(out: _Exposition, rows: list) -> None:
    p = "fastmqtt_frontend"
    _simple(out, p, _COMMON, rows)
    out.family(
        f"{p}_limit_sessions", "gauge", "Frontend maxconn", [(lb, r["slim"]) for lb, r in rows]
    )
    out.family(
        f"{p}_denied_connections_total",
        "counter",
        "Connections rejected before routing, by reason",
        _by_label(rows, "denied", "reason"),
    )
    out.family(
        f"{p}_invalid_forwarded_total",
        "counter",
        "Invalid CONNECTs forwarded anyway (reject_invalid = false), by reason",
        _by_label(rows, "invalid_forwarded", "reason"),
    )
    out.family(
        f"{p}_mqtt_connects_total",
        "counter",
        "Valid CONNECT packets, by MQTT protocol version",
        _by_label(rows, "connects_by_version", "protocol_version"),
    )
    out.family(
        f"{p}_accept_errors_total",
        "counter",
        "accept() failures (out of fds or memory)",
        [(lb, r["accept_errors"]) for lb, r in rows],
    )


def _backend_metrics(out: _Exposition, rows: list) -> None:
    p = "fastmqtt_backend"
    _simple(out, p, _COMMON + _UPSTREAM + _BACKEND_ONLY, rows)
    out.family(
        f"{p}_status",
        "gauge",
        "1 for the backend's state (UP: some server usable)",
        ((lb | {"state": s}, int(r["status"] == s)) for lb, r in rows for s in ("UP", "DOWN")),
    )
    name = f"{p}_connect_latency_seconds"
    out.lines += [
        f"# HELP {name} Time from a complete CONNECT to a connected broker",
        f"# TYPE {name} histogram",
    ]
    for labels, row in rows:
        h = row["connect_latency"]
        for le, count in zip(h["le"], h["cumulative"], strict=True):
            out.lines.append(_sample(f"{name}_bucket", labels | {"le": le}, count))
        out.lines += [
            _sample(f"{name}_sum", labels, h["sum"]),
            _sample(f"{name}_count", labels, h["count"]),
        ]


def _server_metrics(out: _Exposition, rows: list) -> None:
    p = "fastmqtt_server"
    _simple(out, p, _COMMON + _UPSTREAM + _SERVER_ONLY, rows)
    out.family(
        f"{p}_limit_sessions",
        "gauge",
        "Server maxconn (0: none)",
        [(lb, r["slim"] or 0) for lb, r in rows],
    )
    out.family(
        f"{p}_status",
        "gauge",
        "1 for the server's current state",
        ((lb | {"state": s}, int(r["state"] == s)) for lb, r in rows for s in SERVER_STATES),
    )
    out.family(
        f"{p}_check_duration_seconds",
        "gauge",
        "Duration of the last health check",
        [(lb, r["check_duration"] / 1000) for lb, r in rows if "check_duration" in r],
    )
    out.family(
        f"{p}_connack_total",
        "counter",
        "CONNACK reason codes brokers answered, by code",
        _by_label(rows, "connack", "code"),
    )


# -- HTML ------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 .5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:.4em 0}h2{font-size:1.1em;margin:1em 0 .3em}
.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;min-width:100%;background:#fff}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#eee}td.name,th.name{text-align:left;position:sticky;left:0;background:inherit}
tr.frontend,tr.backend{background:#e6eef8;font-weight:bold}
tr.UP{background:#c8f0c8}tr.DOWN{background:#f4b8b8}tr.DRAIN{background:#c8d8f8}
tr.MAINT{background:#d8c8b0}tr.going{background:#f8e8a0}
dl{display:flex;flex-wrap:wrap;gap:.2em 1.5em;margin:.3em 0}dt{font-weight:bold}dd{margin:0}
"""

_SERVER_HEADINGS = (
    "Server", "Status", "Admin", "Weight", "Cur", "Max", "Limit", "Total", "Rate",
    "Bytes in", "Bytes out", "Conn err", "Resp err", "Retries", "Redisp",
    "Check", "Last check", "Last change", "Downtime",
)  # fmt: skip
_FRONTEND_HEADINGS = (
    "Frontend", "Status", "Bind", "Cur", "Max", "Limit", "Total", "Rate",
    "Bytes in", "Bytes out", "Denied", "CONNECTs by version",
)  # fmt: skip


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}d{h}h" if d else f"{h}h{m}m" if h else f"{m}m{s}s"


def _tr(values: list[object], attrs: str) -> str:
    """A row whose first cell names it (kept in view when the table scrolls sideways)."""
    first, *rest = (html.escape(str(v)) for v in values)
    cells = "".join(f"<td>{v}</td>" for v in rest)
    return f"<tr {attrs}><td class=name>{first}</td>{cells}</tr>"


def _table(headings: tuple[str, ...], rows: str, attrs: str = "") -> str:
    head = "".join(f"<th{' class=name' if i == 0 else ''}>{h}</th>" for i, h in enumerate(headings))
    return f"<div class=wrap><table {attrs}><tr>{head}</tr>{rows}</table></div>"


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def _server_html(sv: dict[str, Any]) -> str:
    check = f"{sv['check_status']} {sv['check_duration']}ms" if "check_status" in sv else "-"
    values = [
        sv["svname"] + (" (backup)" if sv["backup"] else ""),
        sv["status"], sv["admin"], sv["weight"], sv["scur"], sv["smax"], sv["slim"] or "-",
        sv["stot"], sv["rate"], sv["bin"], sv["bout"], sv["econ"], sv["eresp"], sv["wretr"],
        sv["wredis"], check, sv.get("last_chk", "-"), _duration(sv["lastchg"]),
        _duration(sv["downtime"]),
    ]  # fmt: skip
    going = " going" if " " in sv["status"] else ""  # "UP 1/3": on its way down (or up)
    name, state = html.escape(sv["svname"]), sv["state"]
    return _tr(values, f'class="server {state}{going}" data-server="{name}" data-state="{state}"')


def _backend_html(be: dict[str, Any]) -> str:
    total = [
        "BACKEND", be["status"], be["algo"], be["weight"], be["scur"], be["smax"], "", be["stot"],
        be["rate"], be["bin"], be["bout"], be["econ"], be["eresp"], be["wretr"], be["wredis"],
        f"sticky {be['sticky_hits']}/{be['sticky_misses']}", f"no server: {be['no_server']}",
        "", "",
    ]  # fmt: skip
    rows = "".join(_server_html(sv) for sv in be["servers"]) + _tr(total, "class=backend")
    name = html.escape(be["pxname"])
    return f"<h2>backend {name}</h2>" + _table(_SERVER_HEADINGS, rows, f'data-backend="{name}"')


def _frontend_html(fe: dict[str, Any]) -> str:
    values = [
        fe["pxname"], fe["status"], fe["addr"], fe["scur"], fe["smax"], fe["slim"], fe["stot"],
        fe["rate"], fe["bin"], fe["bout"], _pairs(fe["denied"]),
        _pairs(fe["connects_by_version"]),
    ]  # fmt: skip
    return _tr(values, "class=frontend")


def render_html(snap: dict[str, Any], refresh: float, uri: str) -> str:
    about = {
        "version": snap["version"],
        "implementation": snap["implementation"],
        "pid": snap["pid"],
        "uptime": _duration(snap["uptime_seconds"]),
        "connections": f"{snap['current']} / {snap['maxconn']}",
        "refresh": f"{refresh:g}s",
    }
    facts = "".join(f"<dt>{k}</dt><dd id={k}>{html.escape(str(v))}</dd>" for k, v in about.items())
    links = " · ".join(
        f'<a href="{href}">{text}</a>'
        for href, text in ((f"{uri};csv", "CSV"), (f"{uri}.json", "JSON"), ("/metrics", "metrics"))
    )
    frontends = "".join(_frontend_html(fe) for fe in snap["frontends"])
    body = (
        f"<h1>fastmqtt statistics</h1><dl>{facts}</dl><p>{links}</p><h2>frontends</h2>"
        + _table(_FRONTEND_HEADINGS, frontends)
        + "".join(_backend_html(be) for be in snap["backends"])
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f'<meta http-equiv=refresh content="{refresh:g}"><title>fastmqtt stats</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


# -- HTTP ------------------------------------------------------------------------------------


class Request(NamedTuple):
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: str


class Response(NamedTuple):
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class _HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.response = Response(status, text + "\n")


def _json(status: int, data: object) -> Response:
    return Response(status, json.dumps(data, indent=1) + "\n", "application/json")


async def read_request(reader: asyncio.StreamReader, peer: str) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _HTTPError(431, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HTTPError(400, "bad request line")
    headers = {}
    for line in filter(None, lines[1:]):
        name, sep, value = line.partition(":")
        if not sep:
            raise _HTTPError(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY:
        raise _HTTPError(413, f"body must be at most {MAX_BODY} bytes")
    body = await reader.readexactly(int(length))
    path, _, query = parts[1].partition("?")
    return Request(parts[0], path, query, headers, body, peer)


class StatsServer:
    """The ``[stats]`` listener of one process."""

    def __init__(self, proxy: Proxy, config: StatsConfig) -> None:
        self.proxy = proxy
        self.config = config
        self.loop = proxy.loop
        self.rates = Rates()
        env = config.auth_password_env
        self.password = os.environ.get(env) if env else None
        if config.auth_user and not self.password:
            log.error(
                "stats: environment variable %s is not set: authenticated requests are refused", env
            )
        try:
            self.sock = open_listener(config.bind_host, config.bind_port, False, 128)
        except OSError as exc:
            where = f"{config.bind_host}:{config.bind_port}"
            raise OSError(exc.errno, f"stats: cannot bind {where}: {exc.strerror}") from None
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self.routes: dict[str, Callable[[Request], Response]] = {
            "/healthz": lambda r: Response(200, "ok\n"),
            config.uri: self._html,
            config.uri + ";csv": lambda r: Response(
                200, render_csv(self.snapshot()), "text/csv; charset=utf-8"
            ),
            config.uri + ".json": lambda r: _json(200, self.snapshot()),
            "/metrics": lambda r: Response(
                200, render_metrics(self.snapshot()), "text/plain; version=0.0.4; charset=utf-8"
            ),
        }

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> None:
        task = self.loop.create_task(self._start())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._ticker = self.loop.call_later(RATE_TICK, self._tick)
        log.info("stats on http://%s:%d%s", self.config.bind_host, self.port, self.config.uri)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, sock=self.sock, limit=MAX_HEAD)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        else:
            self.sock.close()

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.proxy, self.rates)

    def _tick(self) -> None:
        for fe in self.proxy.frontends:
            self.rates.sample(("frontend", fe.name), fe.counters.total)
        for backend in self.proxy.backends.values():
            self.rates.sample(
                ("backend", backend.name), sum(s.counters.total for s in backend.servers)
            )
            for s in backend.servers:
                self.rates.sample(("server", backend.name, s.name), s.counters.total)
        self._ticker = self.loop.call_later(RATE_TICK, self._tick)

    # -- one connection ----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            with Deadline(self.loop, REQUEST_DEADLINE):
                writer.write(_encode(await self._answer(reader, f"{peer[0]}:{peer[1]}")))
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to answer
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, peer: str) -> Response:
        try:
            return self.respond(await read_request(reader, peer))
        except _HTTPError as exc:
            return exc.response
        except (OSError, asyncio.IncompleteReadError):
            raise
        except Exception:  # a bug of ours must not take the listener down
            log.exception("stats: error answering %s", peer)
            return Response(500, "internal error\n")

    def respond(self, request: Request) -> Response:
        if request.path == "/healthz":
            return self.routes["/healthz"](request)
        if request.path == API or request.path.startswith(API + "/"):
            return self._admin(request)
        if self.config.auth_user and not self._authorized(request):
            return _unauthorized()
        route = self.routes.get(request.path)
        if route is None:
            return Response(404, "not found\n")
        if request.method != "GET":
            return Response(405, "use GET\n", headers=(("Allow", "GET"),))
        return route(request)

    def _html(self, request: Request) -> Response:
        page = render_html(self.snapshot(), self.config.refresh, self.config.uri)
        return Response(200, page, "text/html; charset=utf-8")

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not self.password or not self.config.auth_user:
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        same_user = hmac.compare_digest(user.encode(), self.config.auth_user.encode())
        return hmac.compare_digest(password.encode(), self.password.encode()) and same_user

    # -- admin API ---------------------------------------------------------------------

    def _admin(self, request: Request) -> Response:
        if not self.config.auth_user:
            return Response(403, "the admin API needs [stats] auth = { user, password_env }\n")
        if not self._authorized(request):
            return _unauthorized()
        names = [part for part in request.path[len(API) :].split("/") if part]
        if not names and request.method == "GET":
            return _json(200, [sv for be in self.snapshot()["backends"] for sv in be["servers"]])
        if len(names) != 2:
            return Response(404, f"use {API}/BACKEND/SERVER\n")
        checker = self.proxy.health.get(names[0])
        if checker is None or names[1] not in checker.servers:
            return Response(404, f"no server {names[0]}/{names[1]}\n")
        if request.method == "POST":
            self._change(request, names[0], names[1])
        elif request.method != "GET":
            return Response(405, "use GET or POST\n", headers=(("Allow", "GET, POST"),))
        return _json(200, self._server_data(names[0], names[1]))

    def _server_data(self, backend: str, server: str) -> dict[str, Any]:
        for be in self.snapshot()["backends"]:
            for sv in be["servers"]:
                if be["pxname"] == backend and sv["svname"] == server:
                    return sv
        raise KeyError(f"{backend}/{server}")

    def _change(self, request: Request, backend: str, server: str) -> None:
        """Apply ``{"state": ...}`` and/or ``{"weight": N}``; _HTTPError when invalid."""
        try:
            change = json.loads(request.body)
        except ValueError:
            raise _HTTPError(400, "body must be JSON") from None
        if not isinstance(change, dict) or not change or set(change) - {"state", "weight"}:
            raise _HTTPError(
                400, 'expected {"state": "drain"|"maint"|"ready"} and/or {"weight": N}'
            )
        state, weight = change.get("state"), change.get("weight")
        if state is not None and state not in {a.value for a in Admin}:
            raise _HTTPError(400, 'state must be "drain", "maint" or "ready"')
        if weight is not None and (type(weight) is not int or not 0 <= weight <= MAX_WEIGHT):
            raise _HTTPError(400, f"weight must be an integer 0..{MAX_WEIGHT}")
        who = f"admin API ({self.config.auth_user} from {request.peer})"
        checker = self.proxy.health[backend]
        if weight is not None:
            checker.set_weight(server, weight, who)
        if state is not None:
            checker.set_admin(server, Admin(state), who)


def _unauthorized() -> Response:
    return Response(
        401, "authentication required\n", headers=(("WWW-Authenticate", 'Basic realm="fastmqtt"'),)
    )


def _encode(response: Response) -> bytes:
    body = response.body.encode()
    head = [
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-cache",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
