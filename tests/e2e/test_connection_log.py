"""The connection log and the byte counters, through a running fastmqtt to a real Mosquitto:
one record per connection whatever the client id holds, and the same exact byte counts in the
log, the stats page (JSON and CSV) and /metrics, relayed by the C engine or the event loop."""

from __future__ import annotations

import csv
import io
import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmqtt import packets
from fastmqtt.tools.brokers import free_port, wait_for_port
from tests.support.hostile import read_until_closed
from tests.support.lb import lb_port, recipe, wait_until
from tests.support.stats import Stats, stats_toml

pytestmark = pytest.mark.e2e

# Characters that line-based collectors (and str.splitlines) take for the end of a record:
# U+2028, U+2029, NEL (U+0085), other C1 controls, and the C0 separators.
SPLITTERS = "\u2028\u2029\x85\x9b\x80\x9f\x7f\x1c\x1e\x0b\x0c\r\n"
IMPLEMENTATIONS = {"cython": "0", "python": "1"}


def _config(nodes, port: int, extra_global: str = "") -> str:
    return recipe(nodes, port).replace("[global]\n", f"[global]\n{extra_global}", 1)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_client_id_cannot_split_a_log_record(brokers, fastmqtt, log_format):
    nodes = brokers(1)
    port = lb_port()
    lb = fastmqtt(_config(nodes, port, f'log_format = "{log_format}"\n'), port=port)
    client_id = 'dev\u2028{"forged": "record"}\u2029' + "".join(f"{c}x" for c in SPLITTERS)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(packets.connect(client_id))
        read_until_closed(sock)  # Mosquitto refuses control characters: the id is logged anyway
    assert wait_until(lambda: "dev" in lb.read("stdout.log"))
    text = lb.read("stdout.log")  # also the line of the start-up probe's connection
    records = text.splitlines()
    assert len(records) == text.count("\n"), records  # nothing split a line
    assert not any(c in text.replace("\n", "") for c in SPLITTERS)
    [record] = [r for r in records if "dev" in r]
    if log_format == "json":
        assert json.loads(record)["client_id"] == client_id
    else:
        quoted = record.split(" cid=", 1)[1].split(" v=", 1)[0]
        assert json.loads(quoted) == client_id


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise KeyError((name, labels))


def _counted(stats: Stats) -> dict[str, tuple[int, int]]:
    """(bytes in, bytes out) of the frontend, the backend and the server, as the JSON, the
    CSV and /metrics each say; they must all agree."""
    snap = stats.json()
    backend = snap["backends"][0]
    rows = {"frontend": snap["frontends"][0], "backend": backend, "server": backend["servers"][0]}
    found = {f"json {k}": (row["bin"], row["bout"]) for k, row in rows.items()}
    for row in csv.DictReader(io.StringIO(stats.get("/stats;csv").lstrip("# "))):
        kind = {"FRONTEND": "frontend", "BACKEND": "backend"}.get(row["svname"], "server")
        found[f"csv {kind}"] = (int(row["bin"]), int(row["bout"]))
    metrics = stats.get("/metrics")
    labels = {
        "frontend": {"frontend": "mqtt"},
        "backend": {"backend": "cluster"},
        "server": {"backend": "cluster", "server": "node1"},
    }
    for kind, label in labels.items():
        found[f"metrics {kind}"] = tuple(
            int(_metric(metrics, f"fastmqtt_{kind}_bytes_{way}_total", **label))
            for way in ("in", "out")
        )
    return found


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_log_stats_and_metrics_count_the_same_bytes(brokers, fastmqtt, implementation):
    """A known exchange: CONNECT, CONNACK (4 bytes), PUBLISH, PINGREQ/PINGRESP, DISCONNECT.
    Counted while the connection is open (live) and once it has ended."""
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    lb = fastmqtt(
        _config(nodes, port) + stats_toml(stats_port),
        port=port,
        env={"FASTMQTT_NO_EXTENSIONS": IMPLEMENTATIONS[implementation]},
    )
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    assert wait_until(lambda: f"({implementation}) listening" in lb.logs())
    stats = Stats(stats_port)
    connect = packets.connect("counted", keepalive=0)
    publish = packets.publish("t/counted", b"p" * 300)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(connect)
        assert sock.recv(4) == packets.connack(0, 4)
        sock.sendall(publish + packets.PINGREQ)
        assert sock.recv(2) == b"\xd0\x00"  # PINGRESP
        live = (len(connect) + len(publish) + 2, 4 + 2)
        assert wait_until(lambda: set(_counted(stats).values()) == {live}), _counted(stats)
        sock.sendall(packets.DISCONNECT)
        assert read_until_closed(sock) == b""
    ended = (live[0] + len(packets.DISCONNECT), live[1])
    assert wait_until(lambda: any('cid="counted"' in line for line in lb.connection_log()))
    [line] = [line for line in lb.connection_log() if 'cid="counted"' in line]
    assert f" in={ended[0]} out={ended[1]} " in line, line
    assert set(_counted(stats).values()) == {ended}, _counted(stats)
