"""Prometheus text exposition (format 0.0.4) of a stats snapshot: ``fastmqtt_*`` names,
``_total`` counters, ``_seconds`` durations, labels ``frontend`` / ``backend`` / ``server``.
Names follow HAProxy's own exporter (``haproxy_server_current_sessions`` ->
``fastmqtt_server_current_sessions``) so dashboards translate by prefix; the MQTT-level
families (CONNECTs by version, rejections by reason, sticky routing, CONNACK codes, the
latency histograms) are ours. Process resources use the names every Prometheus client
library exports (``process_open_fds``, ...), one series per process (label ``worker`` under
workers, with ``worker="supervisor"`` for the supervisor itself)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastmqtt.stats.rows import SERVER_STATES


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Exact integers (a byte counter must not turn into 1.23457e+06), shortest float repr."""
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def _sample(name: str, labels: dict[str, object], value: float) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"


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
# The backend's stick table (rows of sticky backends only); one table for every worker.
_STICK_TABLE = (
    ("entries", "gauge", "Entries in the stick table (expired ones not counted)", "stick_entries"),
    ("size", "gauge", "Entries the stick table holds at most (its size)", "stick_size"),
    ("bytes", "gauge", "Shared memory the stick table takes, fixed when made", "stick_bytes"),
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


# (metric name, type, help, row key): what one process has on its own.
_PROCESS = (
    ("process_open_fds", "gauge", "Number of open file descriptors.", "open_fds"),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors.", "max_fds"),
    (
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        "resident_memory_bytes",
    ),
    (
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        "virtual_memory_bytes",
    ),
    (
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        "cpu_seconds_total",
    ),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        "start_time_seconds",
    ),
    (
        "fastmqtt_last_reload_timestamp_seconds",
        "gauge",
        "Time of the last reload, applied or refused (Unix seconds; the start time before any)",
        "last_reload_time",
    ),
    (
        "fastmqtt_last_reload_success",
        "gauge",
        "1 if the last reload applied the file (or none was tried yet), 0 if it was refused",
        "last_reload_ok",
    ),
)


def _process_metrics(out: _Exposition, processes: list[dict[str, Any]]) -> None:
    rows = [({"worker": p["worker"]} if "worker" in p else {}, p) for p in processes]
    for name, kind, help_text, key in _PROCESS:
        out.family(name, kind, help_text, [(labels, row[key]) for labels, row in rows])
    out.family(
        "fastmqtt_reloads_total",
        "counter",
        "Reloads of the config file (SIGHUP, the admin API), by result",
        (
            (labels | {"result": result}, row[f"reloads_{result}"])
            for labels, row in rows
            for result in ("ok", "refused")
        ),
    )


def render_metrics(snap: dict[str, Any]) -> str:
    out = _Exposition()
    _process_metrics(out, snap["processes"])
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
    _move_metrics(out, snap["moves"])
    return out.text()


def _move_metrics(out: _Exposition, moves: dict[str, Any]) -> None:
    """Rebalances and evacuations (rebalance.py): each backend's last run, and totals."""
    runs = [({"backend": r["backend"], "kind": r["kind"]}, r) for r in moves["runs"]]
    out.family(
        "fastmqtt_rebalance_asked_total",
        "counter",
        "Clients asked to leave by rebalances and evacuations, since the process started",
        [({"backend": a["backend"], "kind": a["kind"]}, a["asked"]) for a in moves["asked"]],
    )
    out.family(
        "fastmqtt_rebalance_running",
        "gauge",
        "1 while a rebalance or evacuation of the backend runs",
        [(labels, int(r["state"] == "running")) for labels, r in runs],
    )
    out.family(
        "fastmqtt_rebalance_in_flight",
        "gauge",
        "Clients asked to leave that have not connected again yet",
        [(labels, r["in_flight"]) for labels, r in runs],
    )
    out.family(
        "fastmqtt_rebalance_share",
        "gauge",
        "A running rebalance's fair share of each usable server (clients)",
        (
            ({"backend": r["backend"], "server": name}, s["share"])
            for _, r in runs
            if r["state"] == "running"
            for name, s in r["servers"].items()
            if "share" in s
        ),
    )


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
    out.family(
        f"{p}_path_current_sessions",
        "gauge",
        "Current connections by the path that carries them (fast: the C engine, loop: Python)",
        _by_label(rows, "path_scur", "path"),
    )
    out.family(
        f"{p}_path_sessions_total",
        "counter",
        "Connections by the path that took them (fast: the C engine, loop: Python)",
        _by_label(rows, "path_stot", "path"),
    )


def _backend_metrics(out: _Exposition, rows: list) -> None:
    p = "fastmqtt_backend"
    _simple(out, p, _COMMON + _UPSTREAM + _BACKEND_ONLY, rows)
    _simple(out, "fastmqtt_stick_table", _STICK_TABLE, rows)
    out.family(
        f"{p}_status",
        "gauge",
        "1 for the backend's state (UP: some server usable)",
        ((lb | {"state": s}, int(r["status"] == s)) for lb, r in rows for s in ("UP", "DOWN")),
    )
    _histogram(
        out,
        f"{p}_connect_latency_seconds",
        "Time from a complete CONNECT to a connected broker",
        [(labels, row["connect_latency"]) for labels, row in rows],
    )
    _histogram(
        out,
        f"{p}_connack_latency_seconds",
        "Time from a complete CONNECT to the broker's CONNACK (retries included)",
        [(labels, row["connack_latency"]) for labels, row in rows],
    )


def _histogram(out: _Exposition, name: str, help_text: str, rows: list) -> None:
    out.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for labels, h in rows:
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
        "Duration of the last health check (0 until the first one ends)",
        [(lb, r.get("check_duration", 0) / 1000) for lb, r in rows if "check_type" in r],
    )
    out.family(
        f"{p}_connack_total",
        "counter",
        "CONNACK reason codes brokers answered, by code",
        _by_label(rows, "connack", "code"),
    )
