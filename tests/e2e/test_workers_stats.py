"""One stats endpoint for every worker: the supervisor adds up the workers' numbers and sends
admin changes to all of them, including a worker restarted after the change."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmqtt.tools.brokers import free_port
from tests.support.lb import landed, lb_port, raw_connect, wait_until
from tests.support.stats import Stats, checked_recipe

pytestmark = pytest.mark.e2e

CHECK = 'type = "tcp", interval = "200ms", timeout = "2s"'
PASSWORD = "w0rkers-pw"
CLIENTS = 100
MAXCONN = 5000


def _gauge(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def _land(port: int, prefix: str, count: int, nodes) -> dict[str, int]:
    held = [raw_connect(port, f"{prefix}-{i}") for i in range(count)]
    ids = {f"{prefix}-{i}" for i in range(count)}
    assert wait_until(lambda: ids <= set(landed(nodes)))
    for s in held:
        s.close()
    where = landed(nodes)
    return {b.name: sum(where[cid] == b.name for cid in ids) for b in nodes}


@pytest.fixture
def workers_lb(brokers, fastmqtt):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK, user="ops")
    config = config.replace("[global]\n", f"[global]\nworkers = 2\nmaxconn = {MAXCONN}\n")
    lb = fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    assert wait_until(lambda: "2 workers serving" in lb.logs())
    return nodes, port, Stats(stats_port, "ops", PASSWORD), lb


def test_stats_add_up_every_worker_and_leave_a_hung_one_out(workers_lb):
    _, port, stats, lb = workers_lb
    held = [raw_connect(port, f"held-{i}") for i in range(CLIENTS)]
    snap = stats.json()
    per_worker = [w["current"] for w in snap["per_worker"]]
    print(f"\nclients per worker: {per_worker}")
    assert snap["current"] == CLIENTS and snap["workers"] == 2
    assert len(set(snap["pids"])) == 2 and snap["pid"] == lb.proc.pid
    assert sum(per_worker) == CLIENTS and min(per_worker) > 0  # both workers contributed
    frontend, backend = snap["frontends"][0], snap["backends"][0]
    assert frontend["scur"] == CLIENTS and frontend["stot"] >= CLIENTS
    assert sum(sv["scur"] for sv in backend["servers"]) == backend["scur"] == CLIENTS
    assert backend["connect_latency"]["count"] >= CLIENTS
    assert snap["maxconn"] == 2 * MAXCONN  # each worker enforces its own

    metrics = stats.get("/metrics")
    assert _gauge(metrics, "fastmqtt_current_connections") == CLIENTS
    assert _gauge(metrics, "fastmqtt_frontend_current_sessions", frontend="mqtt") == CLIENTS
    page = stats.get("/stats")
    assert "<dd id=workers>2</dd>" in page and f"{CLIENTS} / " in page
    assert stats.get("/stats;csv").count("\n") == 1 + 1 + 2 + 1  # header, fe, 2 servers, be
    _a_hung_worker_is_left_out(stats)
    for s in held:
        s.close()
    assert wait_until(lambda: stats.json()["current"] == 0)


def _a_hung_worker_is_left_out(stats: Stats) -> None:
    hung, other = stats.json()["per_worker"]
    os.kill(hung["pid"], signal.SIGSTOP)
    try:
        started = time.monotonic()
        snap = stats.json()
        waited = time.monotonic() - started
    finally:
        os.kill(hung["pid"], signal.SIGCONT)
    print(f"answer with a stopped worker after {waited:.2f}s")
    assert waited < 4 and snap["workers"] == 1 and snap["current"] == other["current"]
    assert [w["current"] for w in snap["per_worker"]] == [None, other["current"]]
    assert stats.json()["current"] == CLIENTS  # back; its late answer confused nothing


def _restart_worker_0(stats: Stats) -> None:
    """SIGKILL worker 0 and wait until its replacement answers."""
    old = stats.json()["per_worker"][0]
    os.kill(old["pid"], signal.SIGKILL)

    def replaced() -> bool:
        now = stats.json()["per_worker"]
        return now[0]["worker"] == 0 and now[0]["pid"] != old["pid"] and len(now) == 2

    assert wait_until(replaced, timeout=10)


def test_admin_change_reaches_every_worker_and_a_restarted_one(workers_lb):
    nodes, port, stats, lb = workers_lb
    status, body = stats.request("/api/servers/cluster/node1", {"state": "drain"})
    assert status == 200 and json.loads(body)["state"] == "DRAIN"
    assert lb.logs().count("cluster/node1 is DRAIN (was UP): set to drain by admin API") == 2
    assert _land(port, "drained", 40, nodes) == {"node1": 0, "node2": 40}

    _restart_worker_0(stats)
    assert stats.state("node1") == "DRAIN"  # the new worker 0 took the change on start
    assert _land(port, "after-restart", 40, nodes) == {"node1": 0, "node2": 40}

    lb.reload(lb.config)  # a reload resets admin states in every worker...
    assert wait_until(lambda: lb.logs().count(" reloaded ") == 2)
    assert stats.state("node1") == "UP"
    _restart_worker_0(stats)
    assert stats.state("node1") == "UP"  # ...and the supervisor forgot the drain
    assert _land(port, "after-reload", 40, nodes)["node1"] > 0
