"""Rebalance and evacuate (issue 14 items 1 and 2) with real brokers and real paho clients:
300 clients over 3 Mosquitto nodes, a 4th added by a reload, `fastmqtt ctl rebalance` moving
clients at a set rate; `ctl evacuate` emptying one node. The rate is read from the brokers'
own logs (whole-second timestamps)."""

from __future__ import annotations

import collections
import json
import re
import time

import pytest

from fastmqtt.tools.brokers import Mosquitto, free_port, wait_for_port
from tests.e2e.test_admin import PASSWORD, ctl
from tests.support.lb import lb_port, recipe, wait_until
from tests.support.paho_swarm import RECONNECT_DELAY, Device, Swarm
from tests.support.stats import Stats, stats_toml

pytestmark = pytest.mark.e2e

USE_ANOTHER_SERVER = 0x9C
# a short interval lets node4 come up fast; checks are not the subject: a long timeout
CHECK = 'check = { type = "tcp", interval = "200ms", timeout = "2s" }\n'
_LEFT = re.compile(r"^(\d+): Client (\S+) (?:closed its connection|disconnected)", re.M)
_JOINED = re.compile(r"^(\d+): New client connected from \S+ as (\S+) ", re.M)


def _config(
    nodes: list[Mosquitto],
    port: int,
    stats_port: int,
    rebalance: str = "",
    workers: int = 1,
    stick: str = "true",
) -> str:
    backend = (
        CHECK + f"stick = {stick}\n" + (f"rebalance = {{ {rebalance} }}\n" if rebalance else "")
    )
    config = recipe(nodes, port, backend=backend) + stats_toml(stats_port, "ops")
    return config.replace("[global]\n", f"[global]\nworkers = {workers}\n", 1)


def _left(node: Mosquitto) -> list[tuple[int, str]]:
    """(second, client id) of each client the broker saw go (not the health checks')."""
    return [(int(t), cid) for t, cid in _LEFT.findall(node.read_log()) if cid != "<unknown>"]


def _joined(node: Mosquitto) -> list[tuple[int, str]]:
    return [(int(t), cid) for t, cid in _JOINED.findall(node.read_log())]


def _current(stats: Stats) -> dict[str, int]:
    snap = json.loads(stats.get("/stats.json"))
    return {sv["svname"]: sv["scur"] for be in snap["backends"] for sv in be["servers"]}


def _start(
    brokers,
    fastmqtt,
    devices: list[Device],
    count: int,
    rebalance: str = "",
    workers: int = 1,
    stick: str = "true",
):
    nodes = brokers(count)
    port, stats_port = lb_port(), free_port()
    config = _config(nodes[:3], port, stats_port, rebalance, workers, stick)
    lb = fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    if workers > 1:  # every worker accepts (SO_REUSEPORT) before the clients come
        assert wait_until(lambda: f"{workers} workers serving" in lb.logs(), 10), lb.logs()
    swarm = Swarm(port, devices).start()
    return nodes, port, stats_port, lb, swarm


def _fleet(n: int, persistent_every: int = 0) -> list[Device]:
    """Half MQTT 5, half 3.1.1; every ``persistent_every``-th one keeps a session."""
    return [
        Device(
            f"dev-{i:03d}", 5 if i % 2 else 4, bool(persistent_every and i % persistent_every == 0)
        )
        for i in range(n)
    ]


def _assert_paced(moves: list[tuple[int, str]], rate: int) -> None:
    per_second = collections.Counter(t for t, _ in moves)
    assert max(per_second.values()) <= rate, sorted(per_second.items())


def test_rebalance_after_a_reload_adds_a_fourth_broker(brokers, fastmqtt, path) -> None:
    _rebalance_onto_a_fourth_broker(brokers, fastmqtt)


def test_rebalance_under_two_workers(brokers, fastmqtt) -> None:
    """The supervisor runs the plan: loads summed over the workers, each second's quota spread
    over the workers holding candidates, each move asked of the worker holding it."""
    moved, holders, batches = _rebalance_onto_a_fourth_broker(brokers, fastmqtt, workers=2)
    assert set(holders.values()) == {0, 1}, collections.Counter(holders.values())
    by_worker = collections.Counter(holders[cid] for cid in moved)
    # taken in turn from both workers: equal but for the odd one of each broker's candidates
    # in each second (the supervisor reads them again every second)
    print(f"moved per worker: {dict(by_worker)}, {batches} (broker, second) batches")
    assert abs(by_worker[0] - by_worker[1]) <= batches, (by_worker, batches)


def _holders(stats: Stats) -> dict[str, tuple[int | None, str]]:
    """client id -> (the worker holding it, its server), from the admin API."""
    found = json.loads(stats.get("/api/clients?prefix=dev-&limit=1000"))["connections"]
    return {c["client_id"]: (c["worker"], c["server"]) for c in found}


def _rebalance_onto_a_fourth_broker(
    brokers, fastmqtt, workers: int = 1
) -> tuple[list[str], dict[str, int | None], int]:
    """300 clients on 3 brokers, a reload adds a 4th, `ctl rebalance --rate 50/s --wait`:
    the moved client ids, which worker held each client before, and in how many (broker,
    second) batches they left (the brokers' logs)."""
    devices = _fleet(300)
    nodes, port, stats_port, lb, swarm = _start(brokers, fastmqtt, devices, 4, workers=workers)
    stats = Stats(stats_port, "ops", PASSWORD)
    try:
        assert wait_until(lambda: sum(_current(stats).values()) == 300, 20), _current(stats)
        before = _holders(stats)
        assert len(before) == 300
        assert lb.reload(_config(nodes, port, stats_port, workers=workers))
        assert wait_until(lambda: "node4" in _current(stats), 10)
        time.sleep(0.6)  # node4's health check: up after rise = 2 checks of 200 ms
        started = time.monotonic()
        done = ctl(stats_port, "rebalance", "cluster", "--rate", "50/s", "--wait")
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        print(f"rebalance: {took:.1f}s for the run, {done.stdout.splitlines()[-2]}")
        current = _current(stats)
        assert all(67.5 <= n <= 82.5 for n in current.values()), current
        moved = [cid for node in nodes[:3] for _, cid in _left(node)]
        assert len(moved) == len(set(moved)), "a client was moved twice"
        assert 68 <= len(moved) <= 75 + 8, len(moved)
        # at 50/s the ~70 moves take 1.5 s, then the last ones reconnect (1 s) and are found,
        # by the run's own clock (ctl's start and its polling once a second are not the run's)
        seconds = json.loads(stats.get("/api/rebalance/cluster"))[0]["seconds"]
        assert seconds < len(moved) / 50 + RECONNECT_DELAY + 4, (seconds, took, done.stdout)
        for node in nodes[:3]:
            _assert_paced(_left(node), 50)
        _assert_paced([m for node in nodes[:3] for m in _left(node)], 50)
        by_id = {d.client_id: d for d in devices}
        assert wait_until(swarm.all_connected, 5)
        for cid in moved:
            device = by_id[cid]
            assert device.connects == 2, (cid, device)
            if device.version == 5:
                assert device.disconnects == [USE_ANOTHER_SERVER], (cid, device.disconnects)
        assert {cid for _, cid in _joined(nodes[3])} <= set(moved)
        assert sum(d.connects for d in devices) == 300 + len(moved)
        progress = json.loads(stats.get("/api/rebalance/cluster"))[0]
        assert progress["state"] == "done" and progress["asked"] == len(moved)
        metrics = stats.get("/metrics")
        assert (
            f'fastmqtt_rebalance_asked_total{{backend="cluster",kind="rebalance"}} {len(moved)}'
            in metrics
        )
        log = lb.connection_log()
        assert sum(" moved" in line for line in log) == len(moved)
        after = _holders(stats)
        assert {cid: after[cid][1] for cid in moved} == {cid: "node4" for cid in moved}
        batches = len({(i, t) for i, node in enumerate(nodes[:3]) for t, _ in _left(node)})
        return moved, {cid: worker for cid, (worker, _) in before.items()}, batches
    finally:
        swarm.stop()


def test_rebalance_sticking_on_usernames(brokers, fastmqtt, path) -> None:
    """stick on = "username": a moved client's entry is its username (ConnInfo.username, on
    every path), re-pointed to node4 before it is asked, so its reconnect lands there."""
    devices = [
        Device(f"dev-{i:03d}", 5 if i % 2 else 4, False, username=f"user-{i:03d}")
        for i in range(120)
    ]
    stick = '{ on = "username" }'
    nodes, port, stats_port, lb, swarm = _start(brokers, fastmqtt, devices, 4, stick=stick)
    stats = Stats(stats_port, "ops", PASSWORD)
    try:
        assert wait_until(lambda: sum(_current(stats).values()) == 120, 20), _current(stats)
        assert lb.reload(_config(nodes, port, stats_port, stick=stick))
        assert wait_until(lambda: "node4" in _current(stats), 10)
        time.sleep(0.6)  # node4's health check: up after rise = 2 checks of 200 ms
        done = ctl(stats_port, "rebalance", "cluster", "--rate", "100/s", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        moved = [cid for node in nodes[:3] for _, cid in _left(node)]
        assert len(moved) == len(set(moved)) and 27 <= len(moved) <= 33, moved
        assert wait_until(swarm.all_connected, 5)
        assert all(27 <= n <= 33 for n in _current(stats).values()), _current(stats)
        assert sorted(cid for _, cid in _joined(nodes[3])) == sorted(moved)
        where = _holders(stats)
        assert {where[cid][1] for cid in moved} == {"node4"}
    finally:
        swarm.stop()


def test_automatic_rebalance_with_only_clean_sessions(brokers, fastmqtt) -> None:
    """The reload that adds node4 starts the rebalance; persistent sessions stay put."""
    devices = _fleet(120, persistent_every=2)  # the 3.1.1 half keeps a session
    settings = "only_clean_sessions = true, rate = 100, automatic = true"
    nodes, port, stats_port, lb, swarm = _start(brokers, fastmqtt, devices, 4, settings)
    stats = Stats(stats_port, "ops", PASSWORD)
    try:
        assert wait_until(lambda: sum(_current(stats).values()) == 120, 20), _current(stats)
        assert lb.reload(_config(nodes, port, stats_port, settings))
        # node4 comes up after its health checks, then the run starts by itself
        assert wait_until(lambda: stats.request("/api/rebalance/cluster")[0] == 200, 10)
        done = ctl(stats_port, "rebalance", "cluster", "--status", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "automatic: node4 added" in lb.logs()
        moved = {cid for node in nodes[:3] for _, cid in _left(node)}
        persistent = {d.client_id for d in devices if d.persistent}
        assert moved and not moved & persistent
        assert all(27 <= n <= 33 for n in _current(stats).values()), _current(stats)
    finally:
        swarm.stop()


def test_evacuate_empties_a_broker_at_the_rate(brokers, fastmqtt, path) -> None:
    devices = _fleet(300)
    nodes, _, stats_port, _, swarm = _start(brokers, fastmqtt, devices, 3)
    stats = Stats(stats_port, "ops", PASSWORD)
    try:
        assert wait_until(lambda: sum(_current(stats).values()) == 300, 20), _current(stats)
        joined_before, on_node2 = len(_joined(nodes[1])), _current(stats)["node2"]
        started = time.monotonic()
        done = ctl(stats_port, "evacuate", "cluster/node2", "--rate", "40/s", "--wait")
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        print(f"evacuate: {took:.1f}s for the run, {done.stdout.splitlines()[-2]}")
        assert "evacuate of cluster: done" in done.stdout
        assert _current(stats)["node2"] == 0
        # the last ones asked come back within a reconnect delay, to the other two
        assert wait_until(lambda: sum(_current(stats).values()) == 300, 5), _current(stats)
        assert _current(stats)["node2"] == 0
        assert len(_joined(nodes[1])) == joined_before  # nobody new landed on it
        left = _left(nodes[1])
        assert len(left) == on_node2 and len({cid for _, cid in left}) == on_node2
        _assert_paced(left, 40)
        seconds = json.loads(stats.get("/api/rebalance/cluster"))[0]["seconds"]  # the run's
        assert on_node2 / 40 - 1 <= seconds < on_node2 / 40 + 4, (seconds, took)
        assert wait_until(swarm.all_connected, 5)
        row = next(
            sv
            for be in json.loads(stats.get("/stats.json"))["backends"]
            for sv in be["servers"]
            if sv["svname"] == "node2"
        )
        assert row["admin"] == "drain"  # stays drained for the maintenance that follows
    finally:
        swarm.stop()


def test_rebalance_refusals_and_stop(brokers, fastmqtt) -> None:
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    config = recipe(nodes, port, backend=CHECK) + stats_toml(stats_port, "ops")
    lb = fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    done = ctl(stats_port, "rebalance", "cluster")
    assert done.returncode == 1 and "without a stick table cannot send" in done.stderr
    done = ctl(stats_port, "rebalance", "nope")
    assert done.returncode == 1 and "no backend nope" in done.stderr
    done = ctl(stats_port, "evacuate", "cluster/node9")
    assert done.returncode == 1 and "no server cluster/node9" in done.stderr
    done = ctl(stats_port, "rebalance", "cluster", "--rate", "0/s")
    assert done.returncode == 1 and "whole clients per second" in done.stderr
    done = ctl(stats_port, "evacuate", "cluster/node1", "--stop")
    assert done.returncode == 1 and "no rebalance or evacuation" in done.stderr
