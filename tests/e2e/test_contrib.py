"""contrib/grafana/fastmqtt.json and contrib/prometheus/alerts.yml against real tools: promtool
checks and unit-tests the rules and lints a live scrape; every metric the dashboard and the
rules read is exported by a fresh `fastmqtt serve` with real brokers (# HELP and # TYPE from
the start); a real Prometheus scrapes it and runs every dashboard query."""

from __future__ import annotations

import re
import shutil
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmqtt.tools.brokers import free_port
from tests.support.lb import closed_by_peer, lb_port, raw_connect, wait_until
from tests.support.promql import (
    ALERTS,
    ALERTS_TEST,
    Prometheus,
    as_plain_promql,
    contrib_queries,
    metric_names,
    promtool,
)
from tests.support.stats import Stats, checked_recipe

pytestmark = pytest.mark.e2e

CHECK = 'type = "tcp", interval = "200ms", timeout = "2s"'
STICKY = "stick = true\n"
# Families labelled by what happened (a reason, a CONNACK code): no sample until it happens.
BY_EVENT = {"fastmqtt_frontend_denied_connections_total"}


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0 and "SUCCESS: 5 rules found" in checked.stdout, checked
    tested = promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("for: 1m", "for: 3m"),  # FastmqttServerDown
        ('state="DOWN"} == 1\n        for: 30s', 'state="DOWN"} == 1\n        for: 1m'),
        ("> 0.1 *", "> 0.3 *"),  # the share of rejections
        ("[5m])) > 1\n", "[5m])) > 0\n"),  # the floor of one a second
        ("> 0.8)", "> 0.95)"),  # file descriptors
        ("and on (instance, job) fastmqtt_build_info", "or on (instance, job) fastmqtt_build_info"),
        ("fastmqtt_last_reload_success == 0", "fastmqtt_last_reload_success == 1"),
    ],
)
def test_the_rule_tests_catch_a_changed_rule(tmp_path, old, new):
    text = ALERTS.read_text()
    assert text.count(old) == 1, old
    (tmp_path / ALERTS.name).write_text(text.replace(old, new))
    shutil.copy(ALERTS_TEST, tmp_path)
    tested = promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert tested.returncode == 1, tested.stdout


def _traffic(port: int) -> None:
    """A little of everything: MQTT 3.1.1 and 5, a sticky return, a refused HTTP client."""
    for i in range(3):
        raw_connect(port, f"lint-{i}").close()
    raw_connect(port, "lint-v5", version=5).close()
    raw_connect(port, "lint-0").close()
    with socket.create_connection(("127.0.0.1", port)) as http:
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_peer(http)


@pytest.mark.parametrize("workers", [1, 2])
def test_promtool_finds_nothing_to_lint_in_a_live_scrape(brokers, fastmqtt, workers):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK, backend=STICKY)
    lb = fastmqtt(config.replace("[global]\n", f"[global]\nworkers = {workers}\n"), port=port)
    assert wait_until(lambda: workers == 1 or f"{workers} workers serving" in lb.logs())
    _traffic(port)
    text = Stats(stats_port).get("/metrics")
    assert 'fastmqtt_frontend_denied_connections_total{frontend="mqtt"' in text
    linted = promtool("check", "metrics", stdin=text)
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")


def _declared(text: str) -> dict[str, str]:
    """family -> type, for families with both a # HELP and a # TYPE line."""
    helps = set(re.findall(r"^# HELP (\S+) \S", text, re.MULTILINE))
    return {
        name: kind
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
        if name in helps
    }


def _family(name: str, declared: dict[str, str]) -> str | None:
    """The family a series name belongs to (a histogram's _bucket, _sum, _count)."""
    if name in declared:
        return name
    base, _, suffix = name.rpartition("_")
    if suffix in ("bucket", "sum", "count") and declared.get(base) == "histogram":
        return base
    return None


def test_every_metric_the_dashboard_and_alerts_read_is_exported_from_the_start(brokers, fastmqtt):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    fastmqtt(checked_recipe(nodes, port, stats_port, CHECK, backend=STICKY), port=port)
    text = Stats(stats_port).get("/metrics")  # before any client
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    declared = _declared(text)
    used = set().union(*map(metric_names, contrib_queries()))
    assert len(used) > 30

    missing = {name for name in used if _family(name, declared) is None}
    assert not missing, f"read by contrib/ but not exported: {sorted(missing)}"
    silent = {name for name in used - BY_EVENT if name not in samples}
    assert not silent, f"exported without a sample at start: {sorted(silent)}"


def test_a_real_prometheus_scrapes_fastmqtt_and_runs_every_dashboard_query(brokers, fastmqtt):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    fastmqtt(checked_recipe(nodes, port, stats_port, CHECK, backend=STICKY), port=port)
    prometheus = Prometheus([f"127.0.0.1:{stats_port}"])
    try:
        target = prometheus.wait_for('fastmqtt_build_info{job="fastmqtt"}')
        assert target[0]["metric"]["instance"] == f"127.0.0.1:{stats_port}"
        _traffic(port)
        prometheus.wait_for('fastmqtt_frontend_sessions_total{frontend="mqtt"} > 5')
        names = set(prometheus.api("label/__name__/values"))
        for expr in contrib_queries():
            query = as_plain_promql(expr)
            prometheus.api("query", query=query)  # evaluates, or the assertion names it
            assert metric_names(query) <= names, query
        scraped = prometheus.api("targets")["activeTargets"]
        assert [t["health"] for t in scraped] == ["up"], scraped
        # The panels show numbers, not just "no data": a few that must have some by now.
        for expr in (
            'sum by (path) (fastmqtt_frontend_path_current_sessions{instance=~".+"})',
            "histogram_quantile(0.5, sum by (le) "
            "(rate(fastmqtt_backend_connack_latency_seconds_bucket[15s])))",
            'fastmqtt_server_status{state="UP"} == 1',
            "max by (instance, worker) (process_open_fds / process_max_fds)",
        ):
            assert prometheus.wait_for(expr), expr
    finally:
        prometheus.close()
