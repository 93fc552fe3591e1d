"""fastmqtt's own log lines from a real `fastmqtt serve`: JSON objects in UTC with
`log_format = "json"`, the classic text otherwise, one record per line in both."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from fastmqtt import IMPLEMENTATION, __version__
from tests.support.lb import lb_port, raw_connect, recipe, wait_until

pytestmark = pytest.mark.e2e

CHECK = 'check = { type = "tcp", interval = "200ms", timeout = "2s", fall = 1, rise = 1 }\n'
# A value that line-based collectors would split three times: NEL, LINE SEPARATOR, a newline.
HOSTILE_BIND = 'bind = "a\u0085b\u2028c\\nd"'


def stderr_lines(lb) -> list[str]:
    """stderr split at newlines only (str.splitlines would also split at U+2028, U+0085)."""
    with open(os.path.join(lb.workdir, "stderr.log"), "rb") as f:
        return [line.decode() for line in f.read().split(b"\n") if line]


def _write(lb, config: str) -> None:
    with open(os.path.join(lb.workdir, "lb.toml"), "w") as f:
        f.write(config)


def _run_through_a_life(fastmqtt, brokers, log_format: str):
    """Start, a health change, a reload, a refused reload with a hostile value, a stop."""
    nodes = brokers(2)
    port = lb_port()
    config = recipe(nodes, port, backend=CHECK).replace(
        "[global]\n", f'[global]\nlog_format = "{log_format}"\n'
    )
    lb = fastmqtt(config, port=port)
    raw_connect(port, "before").close()
    nodes[1].kill()
    assert wait_until(lambda: "is DOWN" in lb.read("stderr.log"))
    lb.signal(signal.SIGHUP)
    assert wait_until(lambda: "reloaded" in lb.read("stderr.log"))
    _write(lb, config + f'\n[frontend.hostile]\n{HOSTILE_BIND}\nbackend = "cluster"\n')
    lb.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in lb.read("stderr.log"))
    lb.signal(signal.SIGTERM)
    assert lb.proc.wait(timeout=15) == 0
    return lb


def test_json_lines_in_utc_with_structured_fields(brokers, fastmqtt):
    started = time.time()
    lb = _run_through_a_life(fastmqtt, brokers, "json")
    entries = [json.loads(line) for line in stderr_lines(lb)]  # every line is one object
    for entry in entries:
        assert list(entry)[:4] == ["time", "level", "logger", "message"]
        stamp = time.mktime(time.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ"))
        assert started - 2 <= stamp - time.timezone <= time.time() + 1  # UTC
    start = next(e for e in entries if " listening: " in e["message"])
    assert (start["level"], start["logger"]) == ("info", "fastmqtt")
    assert (start["version"], start["implementation"]) == (__version__, IMPLEMENTATION)
    down = next(e for e in entries if e["logger"] == "fastmqtt.health")
    assert (down["level"], down["backend"], down["server"]) == ("warning", "cluster", "node2")
    assert (down["state"], down["previous_state"]) == ("DOWN", "UP")
    assert "Connection refused" in down["reason"]
    reloaded = next(e for e in entries if e["message"].startswith("reloaded "))
    assert reloaded["path"] == os.path.join(lb.workdir, "lb.toml")
    refused = [e for e in entries if e["message"].startswith("reload refused: ")]
    assert refused and refused[0]["level"] == "error"
    assert 'got "a\u0085b\u2028c\\nd"' in refused[0]["error"]  # intact once parsed
    raw = next(line for line in stderr_lines(lb) if "reload refused" in line)
    assert "\\u0085" in raw and "\\u2028" in raw and "\u2028" not in raw
    draining = next(e for e in entries if "draining" in e["message"])
    assert (draining["signal"], draining["connections"]) == ("SIGTERM", 0)
    assert entries[-1]["message"] == "stopped"


def test_text_lines_stay_as_they_were_but_cannot_be_split(brokers, fastmqtt):
    lb = _run_through_a_life(fastmqtt, brokers, "text")
    lines = stderr_lines(lb)
    for line in lines:
        assert len(line.splitlines()) == 1, line
        date, clock, level, logger = line.split(" ")[:4]
        time.strptime(f"{date} {clock}", "%Y-%m-%d %H:%M:%S,%f")  # local time, as before
        assert level in ("INFO", "WARNING", "ERROR") and logger.endswith(":")
    refused = next(line for line in lines if "frontend.hostile.bind" in line)
    assert refused.endswith('got "a\\u0085b\\u2028c\\nd"')
    assert any(
        " WARNING fastmqtt.health: server cluster/node2 is DOWN (was UP): " in line
        for line in lines
    )


def test_workers_say_whose_line_it_is(brokers, fastmqtt):
    nodes = brokers(1)
    port = lb_port()
    config = recipe(nodes, port).replace(
        "[global]\n", '[global]\nworkers = 2\nlog_format = "json"\n'
    )
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.read("stderr.log"))
    entries = [json.loads(line) for line in stderr_lines(lb)]
    listening = sorted(e["worker"] for e in entries if " listening: " in e["message"])
    assert listening == [0, 1]
    serving = next(e for e in entries if "workers serving" in e["message"])
    assert serving["workers"] == 2 and "worker" not in serving  # the supervisor's own line
