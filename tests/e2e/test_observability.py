"""The observability pack on a real `fastmqtt serve` with real brokers: process resources as
Prometheus's own client reads them, reloads, connections by path, CONNECT -> CONNACK latency,
one series per process under workers."""

from __future__ import annotations

import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from fastmqtt.tools.brokers import free_port
from tests.support.lb import lb_port, raw_connect, recipe, wait_until
from tests.support.stats import Stats, checked_recipe, stats_toml

pytestmark = pytest.mark.e2e

# Checks run, but no test here is about them: a timeout a busy machine does not miss (with
# 150 ms, both loopback brokers went DOWN under load and clients were closed: no-server).
CHECK = 'type = "tcp", interval = "200ms", timeout = "5s"'
HELD = 60


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, from an exposition parsed by prometheus_client."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[name, frozenset(labels.items())]


def oracle(pid: int) -> dict[str, float]:
    """What prometheus_client's own ProcessCollector reads for ``pid``."""
    collector = ProcessCollector(pid=lambda: pid, registry=None)
    return {s.name: s.value for family in collector.collect() for s in family.samples}


def test_process_metrics_are_what_prometheus_client_reads_for_the_process(brokers, fastmqtt):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    # No health checks: their sockets come and go, and the fd counts below are exact.
    lb = fastmqtt(recipe(nodes, port) + stats_toml(stats_port), port=port)
    stats = Stats(stats_port)
    before = _scrape_when_idle(stats)
    held = [raw_connect(port, f"held-{i}") for i in range(HELD)]
    try:  # memory and fds move while we look: readings right before and after the scrape
        around = [oracle(lb.proc.pid)]
        during = stats.get("/metrics")
        around.append(oracle(lb.proc.pid))
    finally:  # a failure below must not leave sockets for the garbage collector to warn about
        for sock in held:
            sock.close()

    def lowest(name: str) -> float:
        return min(reading[name] for reading in around)

    def highest(name: str) -> float:
        return max(reading[name] for reading in around)

    reference = around[-1]
    for name in ("process_max_fds", "process_start_time_seconds"):
        assert value(during, name) == pytest.approx(reference[name], rel=0.05), name
    assert value(during, "process_start_time_seconds") == pytest.approx(time.time(), abs=60)
    for name in ("process_virtual_memory_bytes", "process_resident_memory_bytes"):
        assert lowest(name) <= value(during, name) <= highest(name), (name, around)
    assert 10 << 20 < value(during, "process_resident_memory_bytes") < 500 << 20
    cpu = value(during, "process_cpu_seconds_total")
    assert 0 < value(before, "process_cpu_seconds_total") <= cpu
    # the same clock ticks: (utime + stime) / hz here, utime / hz + stime / hz there (floats)
    assert cpu <= reference["process_cpu_seconds_total"] + 1e-9
    # fastmqtt also counts its own listing of /proc/self/fd and the scrape's connection (which
    # the reading after may still see, or not).
    fds = value(during, "process_open_fds")
    assert lowest("process_open_fds") <= fds - 2 <= highest("process_open_fds"), around
    # Each held client costs a client socket and a broker socket in fastmqtt.
    grown = fds - value(before, "process_open_fds")
    assert 2 * HELD <= grown <= 2 * HELD + 10, grown


def _scrape_when_idle(stats: Stats) -> str:
    """/metrics once no session holds a socket (the start-up probe's may still be open)."""
    for _ in range(100):
        text = stats.get("/metrics")
        if value(text, "fastmqtt_frontend_current_sessions", frontend="mqtt") == 0:
            return text
        time.sleep(0.05)
    raise AssertionError(f"sessions still open:\n{text}")


def test_connections_by_path_and_connack_latency(brokers, fastmqtt, path):
    nodes = brokers(2)
    other = "fast" if path == "loop" else "loop"
    port, stats_port = lb_port(), free_port()
    fastmqtt(checked_recipe(nodes, port, stats_port, CHECK), port=port)
    stats = Stats(stats_port)
    first = stats.get("/metrics")
    fe, be = {"frontend": "mqtt"}, {"backend": "cluster"}
    for each in ("fast", "loop"):  # both series exist before any client
        assert value(first, "fastmqtt_frontend_path_current_sessions", path=each, **fe) == 0
    assert value(first, "fastmqtt_backend_connack_latency_seconds_count", **be) == 0
    # the fixture's port probe (closed before a CONNECT) is counted once its record reaches
    # Python: the baseline is read after that
    probe = 'reason="client-closed-early"'
    assert wait_until(lambda: probe in stats.get("/metrics"))
    accepted = value(
        stats.get("/metrics"), "fastmqtt_frontend_path_sessions_total", path=path, **fe
    )

    held, waited = [], []  # waited: CONNECT sent -> CONNACK read, as each client saw it
    try:
        for i in range(5):
            started = time.monotonic()
            held.append(raw_connect(port, f"path-{i}"))
            waited.append(time.monotonic() - started)
        text = stats.get("/metrics")
    finally:
        for sock in held:
            sock.close()
    assert value(text, "fastmqtt_frontend_path_current_sessions", path=path, **fe) == 5
    assert value(text, "fastmqtt_frontend_path_current_sessions", path=other, **fe) == 0
    assert value(text, "fastmqtt_frontend_path_sessions_total", path=path, **fe) == accepted + 5
    assert value(text, "fastmqtt_frontend_path_sessions_total", path=other, **fe) == 0
    # Every CONNACK is timed, within the time its client waited: one the client had within 1 s
    # is in the 1 s bucket (all five, unless the machine is very busy).
    assert value(text, "fastmqtt_backend_connack_latency_seconds_count", **be) == 5
    within = value(text, "fastmqtt_backend_connack_latency_seconds_bucket", le="1.0", **be)
    assert sum(w < 1.0 for w in waited) <= within <= 5, waited
    connack_sum = value(text, "fastmqtt_backend_connack_latency_seconds_sum", **be)
    connect_sum = value(text, "fastmqtt_backend_connect_latency_seconds_sum", **be)
    assert 0 < connect_sum < connack_sum < sum(waited)  # the CONNACK comes after the connect
    name = "fastmqtt_frontend_path_current_sessions"
    assert wait_until(lambda: value(stats.get("/metrics"), name, path=path, **fe) == 0)


def _reloads(text: str, **labels: str) -> tuple[float, float, float, float]:
    return (
        value(text, "fastmqtt_reloads_total", result="ok", **labels),
        value(text, "fastmqtt_reloads_total", result="refused", **labels),
        value(text, "fastmqtt_last_reload_success", **labels),
        value(text, "fastmqtt_last_reload_timestamp_seconds", **labels),
    )


def test_reloads_are_counted_with_the_last_ones_time_and_result(brokers, fastmqtt):
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK)
    lb = fastmqtt(config, port=port)
    stats = Stats(stats_port)
    ok, refused, success, at_start = _reloads(stats.get("/metrics"))
    assert (ok, refused, success) == (0, 0, 1)  # the load at start counts as the last one
    assert at_start == pytest.approx(time.time(), abs=30)

    assert " reloaded " in lb.reload(config)
    ok, refused, success, applied_at = _reloads(stats.get("/metrics"))
    assert (ok, refused, success) == (1, 0, 1) and applied_at > at_start
    assert "reload refused" in lb.reload(config + "\n[nonsense]\n")
    ok, refused, success, refused_at = _reloads(stats.get("/metrics"))
    assert (ok, refused, success) == (1, 1, 0) and refused_at > applied_at
    assert " reloaded " in lb.reload(config)
    assert _reloads(stats.get("/metrics"))[:3] == (2, 1, 1)


def test_under_workers_each_process_has_its_own_series(brokers, fastmqtt):
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK)
    config = config.replace("[global]\n", "[global]\nworkers = 2\n")
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())
    stats = Stats(stats_port)
    text = stats.get("/metrics")
    pids = {"supervisor": lb.proc.pid} | {
        str(w["worker"]): w["pid"] for w in stats.json()["per_worker"]
    }
    started = {w: value(text, "process_start_time_seconds", worker=w) for w in pids}
    for worker, pid in pids.items():
        reference = oracle(pid)
        assert started[worker] == pytest.approx(reference["process_start_time_seconds"], abs=0.05)
        assert value(text, "process_max_fds", worker=worker) == reference["process_max_fds"]
    assert {labels for (name, labels) in samples(text) if name == "process_open_fds"} == {
        frozenset({("worker", w)}) for w in pids
    }

    # The supervisor refuses a broken file alone; a good one is applied by every worker.
    lb.reload(config + "\n[nonsense]\n")
    text = stats.get("/metrics")
    assert _reloads(text, worker="supervisor")[:3] == (0, 1, 0)
    assert _reloads(text, worker="0")[:3] == _reloads(text, worker="1")[:3] == (0, 0, 1)
    lb.reload(config)
    assert wait_until(lambda: lb.logs().count(" reloaded ") == 2)
    text = stats.get("/metrics")
    for worker in pids:
        assert _reloads(text, worker=worker)[:3] == (1, 1 if worker == "supervisor" else 0, 1)

    # A restarted worker starts its own series again; the others keep theirs.
    os.kill(pids["0"], signal.SIGKILL)
    assert wait_until(lambda: stats.json()["per_worker"][0]["pid"] != pids["0"], timeout=10)
    assert wait_until(lambda: 'process_open_fds{worker="0"}' in stats.get("/metrics"))
    text = stats.get("/metrics")
    assert value(text, "process_start_time_seconds", worker="0") > started["0"]
    assert _reloads(text, worker="0")[:3] == (0, 0, 1)
    assert _reloads(text, worker="1")[:3] == (1, 0, 1)
