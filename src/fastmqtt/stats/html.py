"""The stats page: a self-refreshing HTML rendering of a stats snapshot, colour-coded by
state, readable on a phone (tables scroll sideways, the name column stays in view). Server
rows carry ``data-server`` / ``data-state`` attributes for scripts and tests."""

from __future__ import annotations

import html
from typing import Any

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
    "Frontend", "Status", "Bind", "Path", "Cur", "Max", "Limit", "Total", "Rate",
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
    table = _table(_SERVER_HEADINGS, rows, f'data-backend="{name}"')
    return f"<h2>backend {name}</h2>{_stick_html(be)}{table}"


def _stick_html(be: dict[str, Any]) -> str:
    """One line on the backend's stick table: how full, how big, how often it routed."""
    if "stick_entries" not in be:
        return ""
    lookups = be["sticky_hits"] + be["sticky_misses"]
    rate = f"{100 * be['sticky_hits'] / lookups:.1f}%" if lookups else "-"
    return (
        f"<p class=stick>stick table: {be['stick_entries']} of {be['stick_size']} entries, "
        f"{be['stick_bytes'] / 2**20:.1f} MiB shared; hits {be['sticky_hits']}, "
        f"misses {be['sticky_misses']} (hit rate {rate})</p>"
    )


def _frontend_html(fe: dict[str, Any]) -> str:
    path = fe.get("path", "event-loop")
    reason = fe.get("path_reason")
    values = [
        fe["pxname"], fe["status"], fe["addr"], f"{path} ({reason})" if reason else path,
        fe["scur"], fe["smax"], fe["slim"], fe["stot"],
        fe["rate"], fe["bin"], fe["bout"], _pairs(fe["denied"]),
        _pairs(fe["connects_by_version"]),
    ]  # fmt: skip
    return _tr(values, "class=frontend")


_MOVE_HEADINGS = ("backend", "kind", "state", "rate", "asked", "back", "in flight", "lost", "time")


def _moves_html(runs: list[dict[str, Any]]) -> str:
    """Each backend's last rebalance or evacuation (``ctl rebalance ... --stop`` stops one)."""
    if not runs:
        return ""
    rows = "".join(
        _tr(
            [
                r["backend"] + (f"/{r['server']}" if "server" in r else ""),
                r["kind"],
                f"{r['state']}: {r['why']}" if r["why"] else r["state"],
                f"{r['rate']}/s",
                r["asked"],
                r["arrived"],
                r["in_flight"],
                r["lost"],
                _duration(r["seconds"]),
            ],
            f"class={'running' if r['state'] == 'running' else 'ended'}",
        )
        for r in runs
    )
    return "<h2>rebalance</h2>" + _table(_MOVE_HEADINGS, rows, "id=moves")


def render_html(snap: dict[str, Any], refresh: float, uri: str) -> str:
    about = {
        "version": snap["version"],
        "implementation": snap["implementation"],
        "pid": snap["pid"],
        "workers": snap.get("workers", 1),
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
        + _moves_html(snap["moves"]["runs"])
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f'<meta http-equiv=refresh content="{refresh:g}"><title>fastmqtt stats</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
