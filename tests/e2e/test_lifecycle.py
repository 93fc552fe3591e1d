"""Limits, timeouts, signals and the demo: the balancer as an operator runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from fastmqtt import packets
from tests.support.lb import Client, closed_by_peer, lb_port, raw_connect, recipe, wait_until

pytestmark = pytest.mark.e2e


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_global_maxconn_holds_excess_in_backlog_without_spinning(brokers, fastmqtt, path):
    nodes = brokers(1)
    port = lb_port()
    lb = fastmqtt(recipe(nodes, port).replace("[global]\n", "[global]\nmaxconn = 2\n"), port=port)
    held = [raw_connect(port, "one"), raw_connect(port, "two")]
    waiting = socket.create_connection(("127.0.0.1", port), timeout=5)  # kernel backlog
    waiting.sendall(packets.connect("three"))
    waiting.settimeout(1.0)
    cpu_before = _cpu_seconds(lb.proc.pid)
    with pytest.raises(TimeoutError):
        waiting.recv(4)  # not accepted while two connections are open
    assert _cpu_seconds(lb.proc.pid) - cpu_before < 0.3  # paused, not polling
    held[0].close()
    waiting.settimeout(5)
    assert waiting.recv(4)[:1] == b"\x20"  # CONNACK once a slot frees up
    for s in (held[1], waiting):
        s.close()


def _connack_server(stop: threading.Event) -> tuple[socket.socket, list[socket.socket]]:
    """A backend that answers every CONNECT with a CONNACK and then stays silent."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"\x20\x02\x00\x00")
            conns.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return server, conns


def test_timeout_client_auto_follows_each_clients_keepalive(fastmqtt, path):
    stop = threading.Event()
    backend, conns = _connack_server(stop)
    port = lb_port()
    lb = fastmqtt(
        f'[defaults]\ntimeout_client = "auto"\ntimeout_client_min = "500ms"\n'
        f'[frontend.mqtt]\nbind = "127.0.0.1:{port}"\nbackend = "b"\n'
        f'[backend.b]\n[[backend.b.server]]\nname = "silent"\n'
        f'address = "127.0.0.1:{backend.getsockname()[1]}"\n',
        port=port,
    )
    try:
        short = raw_connect(port, "ka1", keepalive=1)
        long = raw_connect(port, "ka20", keepalive=20)
        started = time.monotonic()
        assert closed_by_peer(short, timeout=5)
        assert 1.3 <= time.monotonic() - started <= 3.0  # 1.5 x keepalive
        assert not closed_by_peer(long, timeout=0.5)
        assert wait_until(lambda: any("client-timeout" in x for x in lb.connection_log()))
        short.close()
        long.close()
    finally:
        stop.set()
        backend.close()
        for c in conns:
            c.close()


def test_sigterm_drains_established_connections_then_exits_zero(brokers, fastmqtt, path):
    nodes = brokers(1)
    port = lb_port()
    lb = fastmqtt(recipe(nodes, port).replace('grace = "2s"', 'grace = "20s"'), port=port)
    client = Client("stays", port)
    client.subscribe("t/drain")
    lb.signal(signal.SIGTERM)
    assert wait_until(lambda: _refused(port), timeout=5)  # no new clients
    client.publish("t/drain", b"still here")
    assert client.wait_message(3)  # the established connection keeps working
    client.close()
    assert lb.proc.wait(timeout=10) == 0  # exits once its last client is gone


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_bind_conflict_is_a_clear_error(brokers, tmp_path):
    nodes = brokers(1)
    taken = socket.create_server(("127.0.0.1", 0))
    config = tmp_path / "lb.toml"
    config.write_text(recipe(nodes, taken.getsockname()[1]))
    result = subprocess.run(
        [sys.executable, "-m", "fastmqtt", "serve", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    taken.close()
    assert result.returncode == 1
    assert "frontend mqtt: cannot bind 127.0.0.1:" in result.stderr


def test_demo_shows_ten_clients_over_three_brokers_and_its_stats():
    port, stats_port = lb_port(), lb_port()
    demo = [sys.executable, "-m", "fastmqtt", "demo", "--port", str(port)]
    with subprocess.Popen(
        [*demo, "--stats-port", str(stats_port), "--duration", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            lines = []
            while not lines or not lines[-1].startswith("Ctrl+C"):  # bounded by --duration
                lines.append(proc.stdout.readline())  # type: ignore[union-attr]
                assert lines[-1], proc.stderr.read()  # type: ignore[union-attr]
            out = "".join(lines)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/metrics", timeout=10)
            page = urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats", timeout=10)
            assert b"fastmqtt_frontend_current_sessions" in metrics.read()
            assert b"<html" in page.read().lower()
        finally:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    counts = [int(n) for n in re.findall(r"node\d \(127\.0\.0\.1:\d+\): (\d+) clients", out)]
    assert counts == [4, 3, 3]
    assert f"mosquitto_sub -h 127.0.0.1 -p {port} " in out and "mosquitto-clients" in out
    assert f"Stats page: http://127.0.0.1:{stats_port}/stats\n" in out
    assert f"Prometheus: http://127.0.0.1:{stats_port}/metrics\n" in out


def test_json_connection_log_has_one_object_per_connection(brokers, fastmqtt, path):
    nodes = brokers(2)
    port = lb_port()
    config = recipe(nodes, port, backend='stick = { on = "client_id" }')
    lb = fastmqtt(config.replace("[global]\n", '[global]\nlog_format = "json"\n'), port=port)
    raw_connect(port, "json-client", version=5).close()
    assert wait_until(lambda: any("json-client" in line for line in lb.connection_log()))
    [entry] = [json.loads(x) for x in lb.connection_log() if "json-client" in x]
    assert entry["client_id"] == "json-client" and entry["mqtt_version"] == 5
    assert entry["backend"] == "cluster" and entry["server"] in {"node1", "node2"}
    assert entry["connack"] == 0 and entry["end"] == "client-closed"
    assert entry["bytes_in"] > 0 and entry["bytes_out"] > 0
    assert 0 <= entry["wait_ms"] <= entry["connect_ms"] <= entry["total_ms"]
