"""merge_snapshots: what the supervisor shows for several workers."""

from __future__ import annotations

import copy
from typing import Any

from fastmqtt.stats.prometheus import render_metrics
from fastmqtt.stats.rows import merge_snapshots, render_csv


def _server(name: str, scur: int, **extra: Any) -> dict[str, Any]:
    return {
        "pxname": "cluster", "svname": name, "type": 2, "status": "UP", "state": "UP",
        "admin": "ready", "backup": False, "act": 1, "bck": 0, "weight": 1, "throttle": 100,
        "scur": scur, "smax": scur, "slim": "", "stot": scur, "bin": 10, "bout": 20, "econ": 1,
        "eresp": 0, "wretr": 0, "wredis": 0, "rate": 1, "rate_max": 2, "chkfail": 1,
        "chkdown": 0, "connack": {"0": scur}, "lastchg": 5, "downtime": 0, **extra,
    }  # fmt: skip


def _snap(pid: int, servers: list[dict[str, Any]], denied: dict[str, int]) -> dict[str, Any]:
    scur = sum(s["scur"] for s in servers)
    histogram = {"le": [0.001, "+Inf"], "cumulative": [scur, scur], "sum": 0.5, "count": scur}
    return {
        "version": "0.1.0", "implementation": "python", "pid": pid, "uptime_seconds": pid,
        "start_time_seconds": 1000 - pid, "current": scur, "maxconn": 100,
        "frontends": [{
            "pxname": "mqtt", "svname": "FRONTEND", "type": 0, "status": "OPEN", "scur": scur,
            "smax": scur, "slim": 50, "stot": scur, "bin": 1, "bout": 2, "dreq": len(denied),
            "denied": denied, "invalid_forwarded": {}, "connects_by_version": {"3.1.1": scur},
            "accept_errors": 0, "rate": 0, "rate_max": 3,
            "path_scur": {"fast": 0, "loop": scur}, "path_stot": {"fast": 0, "loop": scur},
        }],
        "backends": [{
            "pxname": "cluster", "svname": "BACKEND", "type": 1, "status": "UP", "scur": scur,
            "smax": scur, "stot": scur, "bin": 10, "bout": 20, "econ": 0, "eresp": 0, "wretr": 0,
            "wredis": 0, "act": 2, "bck": 0, "weight": 2, "no_server": 1, "sticky_hits": 2,
            "sticky_misses": 3, "learned_ids": 0, "connect_latency": histogram,
            "connack_latency": copy.deepcopy(histogram), "servers": servers, "rate": 0,
            "rate_max": 1,
        }],
        "processes": [_process(str(pid - 11), open_fds=pid)],
        "moves": {"runs": [], "asked": []},
    }  # fmt: skip


def _process(worker: str, **values: float) -> dict[str, Any]:
    return {
        "worker": worker, "open_fds": 10, "max_fds": 1024, "resident_memory_bytes": 1 << 20,
        "virtual_memory_bytes": 1 << 24, "cpu_seconds_total": 0.5, "start_time_seconds": 1e9,
        "reloads_ok": 0, "reloads_refused": 0, "last_reload_time": 1e9, "last_reload_ok": 1,
        **values,
    }  # fmt: skip


def test_counters_add_up_and_descriptions_come_from_the_first_worker():
    one = _snap(11, [_server("node1", 3), _server("node2", 4, slim=10)], {"acl": 1})
    two = _snap(12, [_server("node1", 5, status="DOWN 1/2"), _server("node2", 6, slim=10)], {})
    two["frontends"][0]["denied"] = {"rate-limit": 2, "acl": 3}
    merged = merge_snapshots([one, two])

    assert (merged["workers"], merged["pids"], merged["current"]) == (2, [11, 12], 18)
    assert merged["maxconn"] == 200  # each worker enforces its own
    assert (merged["uptime_seconds"], merged["start_time_seconds"]) == (12, 988)
    fe = merged["frontends"][0]
    assert (fe["scur"], fe["slim"], fe["rate_max"]) == (18, 100, 6)
    assert fe["denied"] == {"acl": 4, "rate-limit": 2}
    assert fe["connects_by_version"] == {"3.1.1": 18}
    be = merged["backends"][0]
    assert (be["scur"], be["no_server"], be["sticky_misses"], be["weight"]) == (18, 2, 6, 2)
    assert be["connect_latency"] == be["connack_latency"] == {
        "le": [0.001, "+Inf"], "cumulative": [18, 18], "sum": 1.0, "count": 18
    }  # fmt: skip
    assert fe["path_scur"] == fe["path_stot"] == {"fast": 0, "loop": 18}
    node1, node2 = be["servers"]
    assert (node1["scur"], node1["stot"], node1["chkfail"], node1["connack"]) == (8, 8, 2, {"0": 8})
    assert node1["status"] == "UP" and node1["lastchg"] == 5  # each worker checks on its own
    assert (node1["slim"], node2["slim"]) == ("", 20)  # no limit stays no limit


def test_each_process_keeps_its_own_series_labelled_by_worker():
    one = _snap(11, [_server("node1", 3)], {})
    two = _snap(12, [_server("node1", 5)], {})
    two["processes"][0] |= {"reloads_refused": 1, "last_reload_ok": 0}
    merged = merge_snapshots([one, two])
    assert [(p["worker"], p["open_fds"]) for p in merged["processes"]] == [("0", 11), ("1", 12)]
    text = render_metrics(merged)
    assert 'process_open_fds{worker="0"} 11\nprocess_open_fds{worker="1"} 12\n' in text
    assert 'fastmqtt_reloads_total{worker="1",result="refused"} 1\n' in text
    assert 'fastmqtt_last_reload_success{worker="1"} 0\n' in text
    del one["processes"][0]["worker"]  # a single process: no label
    assert "process_max_fds 1024\n" in render_metrics(one)


def test_rows_some_workers_lack_are_merged_over_those_that_have_them():
    before = _snap(11, [_server("node1", 3)], {})
    after = _snap(12, [_server("node1", 1), _server("node3", 7)], {})
    after["backends"].append({**copy.deepcopy(after["backends"][0]), "pxname": "other"})
    merged = merge_snapshots([before, after])
    assert [be["pxname"] for be in merged["backends"]] == ["cluster", "other"]
    cluster, other = merged["backends"]
    assert [(s["svname"], s["scur"]) for s in cluster["servers"]] == [("node1", 4), ("node3", 7)]
    assert other["scur"] == 8 and other["servers"][1]["scur"] == 7


def test_one_worker_merges_to_itself_and_every_renderer_takes_the_result():
    snap = _snap(11, [_server("node1", 3), _server("node2", 4)], {"acl": 1})
    merged = merge_snapshots([copy.deepcopy(snap)])
    assert merged == {**snap, "workers": 1, "pids": [11]}
    assert render_csv(merged).count("\n") == 5
    assert 'fastmqtt_server_current_sessions{backend="cluster",server="node2"} 4' in (
        render_metrics(merged)
    )


def test_the_shared_stick_table_is_shown_once_not_summed():
    one = _snap(11, [_server("node1", 3)], {})
    two = _snap(12, [_server("node1", 5)], {})
    for snap, entries in ((one, 70), (two, 71)):  # one table, read a moment apart
        snap["backends"][0].update(stick_entries=entries, stick_size=1000, stick_bytes=49152)
    merged = merge_snapshots([one, two])
    be = merged["backends"][0]
    assert (be["stick_entries"], be["stick_size"], be["stick_bytes"]) == (70, 1000, 49152)
    assert be["sticky_hits"] == 4  # lookups are counted per worker, and add up
    text = render_metrics(merged)
    assert 'fastmqtt_stick_table_entries{backend="cluster"} 70' in text
    assert 'fastmqtt_stick_table_size{backend="cluster"} 1000' in text
    assert 'fastmqtt_stick_table_bytes{backend="cluster"} 49152' in text
    bare = render_metrics(merge_snapshots([_snap(13, [_server("node1", 1)], {})]))
    assert "# TYPE fastmqtt_stick_table_entries gauge" in bare  # declared even with no table
    assert "fastmqtt_stick_table_entries{" not in bare
