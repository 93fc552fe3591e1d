"""The PromQL in contrib/ (the Grafana dashboard, the alert rules) and the metric names it
reads, and a real Prometheus server to run it against."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from fastmqtt.tools.brokers import free_port, wait_for_port

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
DASHBOARD = CONTRIB / "grafana" / "fastmqtt.json"
ALERTS = CONTRIB / "prometheus" / "alerts.yml"
ALERTS_TEST = CONTRIB / "prometheus" / "alerts_test.yml"

# Words that are PromQL syntax, not series names (functions are told apart by their "(").
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2",
})  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([^,{]+(?:\{[^}]*\})?)\s*,\s*\w+\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: what is left once strings, label matchers,
    ranges, label lists and Grafana variables are taken out, minus functions and keywords."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    text = _VARIABLE.sub("", text)
    names = set()
    for match in _WORD.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":  # the exponent of 1e3, the unit of 5m
            continue
        if text[match.end() :].lstrip().startswith("(") or match[0].lower() in KEYWORDS:
            continue
        names.add(match[0])
    return names


def grafana_query(query: str) -> str:
    """A Grafana template query as PromQL: ``label_values(expr, label)`` reads ``expr``."""
    match = _LABEL_VALUES.match(query)
    return match[1] if match else query


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (rows included), annotations,
    template variables."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    queries = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    queries += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(grafana_query(query["query"] if isinstance(query, dict) else query))
    return queries


def alert_queries(rules: dict[str, Any]) -> list[str]:
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def contrib_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return dashboard_queries(dashboard) + alert_queries(yaml.safe_load(ALERTS.read_text()))


def as_plain_promql(expr: str) -> str:
    """Grafana's variables replaced, so Prometheus itself can run a dashboard query."""
    for variable, value in (
        ("$__rate_interval", "15s"),
        ("$__range", "1m"),
        ("$instance", ".+"),
        ("$backend", ".+"),
    ):
        expr = expr.replace(variable, value)
    return expr


class Prometheus:
    """A real Prometheus server (Debian's `prometheus`) scraping ``targets`` every second."""

    def __init__(self, targets: list[str]) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fastmqtt-prometheus-"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "fastmqtt", "static_configs": [{"targets": targets}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, 30, self.proc)
        deadline = time.monotonic() + 30  # the port opens before the storage is ready (503)
        while not self._ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"prometheus is not ready:\n{self.logs()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5):
                return True
        except urllib.error.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                reply = json.load(answer)
        except urllib.error.HTTPError as exc:  # 400 for a query that does not parse
            reply = json.load(exc)
        assert reply["status"] == "success", reply
        return reply["data"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first non-empty answer to ``expr`` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.api("query", query=expr)["result"]
            if result:
                return result
            time.sleep(0.25)
        raise TimeoutError(f"{expr}: no data after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def promtool(*args: str, stdin: str | None = None, cwd: str | os.PathLike | None = None):
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install prometheus (see .ci/run)"
    return subprocess.run(
        [binary, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )
