"""The stats listener of a real `fastmqtt serve`: the page in a real browser, Prometheus
metrics through prometheus_client's parser, the CSV against a real HAProxy's header."""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmqtt import IMPLEMENTATION, __version__
from fastmqtt.tools.brokers import free_port
from tests.support.haproxy import HAProxy
from tests.support.lb import closed_by_peer, lb_port, raw_connect, wait_until
from tests.support.stats import Stats, checked_recipe

pytestmark = pytest.mark.e2e

CHECK = 'type = "tcp", interval = "200ms", timeout = "2s", rise = 1, fall = 1'
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium once; its stdout (the DOM with --dump-dom)."""
    binary = shutil.which("chromium") or CHROMIUM
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class ServerRows(HTMLParser):
    """server name -> data-state of each server row, and the page's facts (<dd id=...>)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, str] = {}
        self.facts: dict[str, str] = {}
        self._fact: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-server"):
            self.states[a["data-server"]] = a["data-state"] or ""
        self._fact = a.get("id") if tag == "dd" else None

    def handle_data(self, data: str) -> None:
        if self._fact:
            self.facts[self._fact] = data


def test_stats_page_in_headless_chromium_shows_the_killed_broker_down(brokers, fastmqtt, tmp_path):
    nodes = brokers(3)
    port, stats_port = lb_port(), free_port()
    fastmqtt(checked_recipe(nodes, port, stats_port, CHECK), port=port)
    for i in range(5):
        raw_connect(port, f"page-{i}").close()
    nodes[2].kill()
    stats = Stats(stats_port)
    assert wait_until(lambda: stats.state("node3") == "DOWN")

    url = f"http://127.0.0.1:{stats_port}/stats"
    shot = tmp_path / "stats.png"  # a phone-sized window; one run gives the DOM too
    dom = chromium(
        tmp_path / "profile", "--window-size=412,915", f"--screenshot={shot}", "--dump-dom", url
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    print(f"\nscreenshot: {shot}")
    page = ServerRows()
    page.feed(dom)
    assert page.states == {"node1": "UP", "node2": "UP", "node3": "DOWN"}
    assert page.facts["implementation"] == IMPLEMENTATION
    assert page.facts["version"] == __version__


def _families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(family: object, **labels: str) -> float:
    matches = [
        s.value
        for s in family.samples  # type: ignore[attr-defined]
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created")
    ]
    assert len(matches) == 1, (labels, family)
    return matches[0]


def test_metrics_parse_and_count_mqtt_level_events(brokers, fastmqtt, path):
    """The same counts whichever path sets the connections up (the engine's are added in)."""
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    sticky = 'stick = { on = "client_id" }\n'
    fastmqtt(checked_recipe(nodes, port, stats_port, CHECK, backend=sticky), port=port)
    for i in range(3):
        raw_connect(port, f"v4-{i}").close()
    for i in range(2):
        raw_connect(port, f"v5-{i}", version=5).close()
    raw_connect(port, "v4-0").close()  # back to its server: a sticky hit
    with socket.create_connection(("127.0.0.1", port)) as http:
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_peer(http)

    # the engine's records reach Python in batches: the refusal is counted within moments of
    # the close the client saw, not necessarily before it
    stats = Stats(stats_port)
    assert wait_until(lambda: 'reason="http-request"' in stats.get("/metrics"))
    text = stats.get("/metrics")
    families = _families(text)
    fe, be = {"frontend": "mqtt"}, {"backend": "cluster"}
    connects = families["fastmqtt_frontend_mqtt_connects"]
    assert _value(connects, protocol_version="3.1.1", **fe) == 4
    assert _value(connects, protocol_version="5.0", **fe) == 2
    denied = families["fastmqtt_frontend_denied_connections"]
    assert _value(denied, reason="http-request", **fe) == 1
    assert _value(families["fastmqtt_backend_sticky_hits"], **be) == 1
    assert _value(families["fastmqtt_backend_sticky_misses"], **be) == 5  # first connects
    latency = families["fastmqtt_backend_connect_latency_seconds"]
    assert latency.type == "histogram"  # type: ignore[attr-defined]
    buckets = [s for s in latency.samples if s.name.endswith("_bucket")]  # type: ignore[attr-defined]
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)
    assert _value(latency, le="+Inf", **be) == 6
    status = families["fastmqtt_server_status"]
    assert _value(status, server="node1", state="UP", **be) == 1
    assert _value(status, server="node1", state="DOWN", **be) == 0
    sessions = families["fastmqtt_server_sessions"]  # round robin 3/2, then the sticky return
    assert (_value(sessions, server="node1", **be), _value(sessions, server="node2", **be)) == (
        4,
        2,
    )
    info = families["fastmqtt_build_info"]
    assert _value(info, implementation=IMPLEMENTATION, version=__version__) == 1
    for family in families.values():
        kind = family.type  # type: ignore[attr-defined]
        name = family.name  # type: ignore[attr-defined]
        assert name.startswith(("fastmqtt_", "process_")), name  # process_*: Prometheus's names
        assert kind != "counter" or f"{family.name}_total" in text  # type: ignore[attr-defined]
    [frontend] = Stats(stats_port).json()["frontends"]
    assert frontend["path"] == ("fast" if path == "fast" else "event-loop")


def _haproxy_csv_header() -> list[str]:
    port = free_port()
    config = (
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n"
        f"listen stats\n  bind 127.0.0.1:{port}\n  stats enable\n  stats uri /stats\n"
    )
    url = f"http://127.0.0.1:{port}/stats;csv"
    with HAProxy(config, wait_port=port), urllib.request.urlopen(url, timeout=5) as response:
        first = response.read().decode().splitlines()[0]
    return first.removeprefix("# ").rstrip(",").split(",")


def test_csv_has_haproxys_leading_columns_and_parses(brokers, fastmqtt):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    fastmqtt(checked_recipe(nodes, port, stats_port, CHECK), port=port)
    nodes[1].kill()
    stats = Stats(stats_port)
    assert wait_until(lambda: stats.state("node2") == "DOWN")

    text = stats.get("/stats;csv")
    header = text.splitlines()[0].removeprefix("# ").split(",")
    reference = _haproxy_csv_header()
    assert len(header) > 70
    assert header == reference[: len(header)]
    rows = list(csv.DictReader(io.StringIO(text.removeprefix("# "))))
    by_name = {(r["pxname"], r["svname"]): r for r in rows}
    assert set(by_name) == {
        ("mqtt", "FRONTEND"),
        ("cluster", "node1"),
        ("cluster", "node2"),
        ("cluster", "BACKEND"),
    }
    assert by_name["mqtt", "FRONTEND"]["status"] == "OPEN"
    node2 = by_name["cluster", "node2"]
    assert (node2["status"], node2["check_status"], node2["type"]) == ("DOWN", "L4CON", "2")
    assert node2["last_chk"] == "Connection refused"
    assert by_name["cluster", "node1"]["status"] == "UP"
    assert (by_name["cluster", "BACKEND"]["status"], by_name["cluster", "BACKEND"]["act"]) == (
        "UP",
        "1",
    )


def test_stats_auth(brokers, fastmqtt):
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK, user="ops")
    fastmqtt(config, port=port, env={"STATS_PW": "pa55"})
    for path in ("/stats", "/stats;csv", "/stats.json", "/metrics"):
        status, _ = Stats(stats_port).request(path)
        assert status == 401, path
        assert Stats(stats_port, "ops", "wrong").request(path)[0] == 401
        assert Stats(stats_port, "ops", "pa55").request(path)[0] == 200
    assert Stats(stats_port).request("/healthz") == (200, "ok\n")
    assert Stats(stats_port, "ops", "pa55").request("/nowhere")[0] == 404
