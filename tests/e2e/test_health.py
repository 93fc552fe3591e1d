"""Health checks against real brokers and real misbehaving servers: failover without failed
clients, recovery after `rise` checks, MQTT-level vs TCP-level checks, HTTP checks and
closing the sessions of a server marked down."""

from __future__ import annotations

import base64
import socket
import threading
import time

import pytest

from fastmqtt.proxy_protocol import encode_v2_local
from fastmqtt.tools.brokers import free_port, wait_for_port
from tests.support.haproxy import HAProxy
from tests.support.lb import (
    Client,
    closed_by_peer,
    landed,
    lb_port,
    raw_connect,
    recipe,
    wait_until,
)
from tests.support.stats import HealthEndpoint, SilentServer, Stats, checked_recipe, stats_toml

pytestmark = pytest.mark.e2e

# 1 s: a refused connect decides at once, a silent broker within a second, and a busy
# machine's slow answer from a live one does not count as a failure
FAST_CHECK = 'interval = "200ms", fastinter = "100ms", timeout = "1s"'


class ConnectStream:
    """New MQTT clients through the balancer, one after another, in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts = 0
        self.failures: list[tuple[float, str]] = []  # (when the attempt started, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.attempts < 20_000:
            self.attempts += 1
            started = time.monotonic()
            try:
                raw_connect(self.port, f"stream-{self.attempts}").close()
            except OSError as exc:
                self.failures.append((started, str(exc)))

    def failed_after(self, moment: float) -> list[str]:
        return [error for started, error in self.failures if started >= moment]

    def __enter__(self) -> ConnectStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _watch(stats: Stats, server: str, until: str, timeout: float) -> tuple[float, list[str]]:
    """Poll the server's status until its state is ``until``: (seconds taken, statuses seen)."""
    started = time.monotonic()
    seen: list[str] = []
    while time.monotonic() - started < timeout:
        row = stats.servers()[server]
        if not seen or seen[-1] != row["status"]:
            seen.append(row["status"])
        if row["state"] == until:
            return time.monotonic() - started, seen
        time.sleep(0.01)
    raise AssertionError(f"{server} not {until} after {timeout}s; statuses seen: {seen}")


def _all_checked(stats: Stats) -> bool:
    return all(s.get("check_status", "").endswith("OK") for s in stats.servers().values())


# Passive observation is shown with a slow 2 s interval: real traffic finds the dead node first.
OBSERVE = (
    'interval = "2s", fastinter = "100ms", downinter = "100ms", timeout = "1s", '
    "observe = true, error_limit = 1"
)


@pytest.mark.parametrize(
    ("timing", "reason"),
    [(FAST_CHECK, "Layer4 connection problem"), (OBSERVE, "Connection errors on real traffic")],
    ids=["checks", "observe"],
)
def test_killed_broker_fails_no_client_and_returns_after_rise_checks(
    brokers, fastmqtt, timing, reason, path
):
    nodes = brokers(3)
    port, stats_port = lb_port(), free_port()
    check = f'type = "mqtt", {timing}, rise = 3, fall = 2'
    lb = fastmqtt(checked_recipe(nodes, port, stats_port, check), port=port)
    stats = Stats(stats_port)
    assert wait_until(lambda: _all_checked(stats), timeout=5)

    with ConnectStream(port) as stream:
        time.sleep(0.3)
        nodes[1].kill()
        killed = time.monotonic()
        to_down, _ = _watch(stats, "node2", "DOWN", timeout=5)
        # an attempt the engine's thread started just before DOWN reached it fails a moment
        # later; from then on none goes there
        time.sleep(0.2)
        errors_at_down = stats.servers()["node2"]["econ"]
        time.sleep(0.5)  # the stream goes on with node2 marked down
        assert stats.servers()["node2"]["econ"] == errors_at_down  # no client was sent there
        nodes[1].start()
        to_up, statuses = _watch(stats, "node2", "UP", timeout=5)
        time.sleep(0.2)
    print(
        f"\n{'observe' if 'observe' in timing else 'checks only'}: {stream.attempts} connects, "
        f"{len(stream.failures)} failed; DOWN {to_down * 1000:.0f} ms after the kill; "
        f"UP {to_up * 1000:.0f} ms after the restart via {statuses}"
    )
    # A client whose CONNECT was already with node2 when it died loses that attempt (it
    # is not retried once the broker accepted it); every client after the kill connects.
    assert len(stream.failures) <= 1, stream.failures
    assert stream.failed_after(killed) == []
    assert stream.attempts > 50
    # fall = 2: the first failure marks the server "UP 1/2", the second takes it down
    assert to_down < 1.5  # ~0.1-0.3 s on an idle machine (printed above)
    assert f"node2 is DOWN (was UP): {reason}" in lb.logs()
    assert statuses[-3:] == ["DOWN 1/3", "DOWN 2/3", "UP"], statuses  # rise = 3
    row = stats.servers()["node2"]
    assert row["chkdown"] == 1
    assert "node2 is UP (was DOWN)" in lb.logs()

    before = len(nodes[1].connected_client_ids())  # the log started afresh with the restart
    for i in range(6):
        raw_connect(port, f"after-{i}").close()
    assert wait_until(lambda: len(nodes[1].connected_client_ids()) - before >= 2)


def test_mqtt_check_catches_a_silent_broker_that_a_tcp_check_misses(fastmqtt):
    """One hung broker (accepts TCP, never answers) behind three backends: an `mqtt` check,
    a `tcp` check, and a `tcp` check that sends a PROXY v2 LOCAL header first."""
    silent, proxied = SilentServer(), SilentServer()
    port, stats_port = lb_port(), free_port()
    backends = ""
    for name, kind, target in (
        ("mqttcheck", 'type = "mqtt"', silent),
        ("tcpcheck", 'type = "tcp"', silent),
        ("proxycheck", 'type = "tcp", send_proxy = true', proxied),
    ):
        backends += (
            f"[backend.{name}]\ncheck = {{ {kind}, {FAST_CHECK}, rise = 1, fall = 1 }}\n"
            f'[[backend.{name}.server]]\nname = "silent"\naddress = "{target.address}"\n\n'
        )
    config = f'[frontend.a]\nbind = "127.0.0.1:{port}"\nbackend = "mqttcheck"\n\n{backends}'
    try:
        fastmqtt(config + stats_toml(stats_port), port=port)
        stats = Stats(stats_port)
        assert wait_until(lambda: stats.servers("mqttcheck")["silent"]["state"] == "DOWN")
        time.sleep(0.5)  # a few more rounds of every check
        by_mqtt, by_tcp = stats.servers("mqttcheck")["silent"], stats.servers("tcpcheck")["silent"]
        assert by_mqtt["state"] == "DOWN" and by_mqtt["check_status"] == "L7TOUT"
        assert by_tcp["state"] == "UP" and by_tcp["check_status"] == "L4OK"
        assert by_tcp["chkfail"] == 0
        assert silent.accepted >= 4  # both checks really reached it
        assert any(data.startswith(b"\x10") for data in silent.received)  # the mqtt CONNECT
        assert proxied.received and set(proxied.received) == {encode_v2_local()}
    finally:
        silent.close()
        proxied.close()


def test_http_check_marks_down_and_shuts_its_sessions(brokers, fastmqtt, path):
    """EMQX's availability check answers 503 while a node drains: fastmqtt marks the node
    down and, with on_marked_down = "shutdown-sessions", closes its clients at once."""
    nodes = brokers(2)
    endpoint = HealthEndpoint()
    port, stats_port = lb_port(), free_port()
    path = "/api/v5/load_rebalance/availability_check"
    backend = (
        f'check = {{ type = "http", path = "{path}", username = "probe", password_env = "CHECK_PW",'
        f' {FAST_CHECK}, rise = 1, fall = 1, on_marked_down = "shutdown-sessions" }}\n'
    )
    servers = {"node1": {"check.port": endpoint.port}, "node2": {"check": False}}  # overrides
    config = recipe(nodes, port, backend=backend, servers=servers) + stats_toml(stats_port)
    try:
        fastmqtt(config, port=port, env={"CHECK_PW": "s3cret"})
        stats = Stats(stats_port)
        assert wait_until(lambda: stats.servers()["node1"].get("check_status") == "L7OK")
        device = Client("device-1", port)
        assert landed(nodes)["device-1"] == "node1"

        endpoint.status = 503
        assert device.disconnected.wait(3), "the session on node1 was not closed"
        row = stats.servers()["node1"]
        assert (row["state"], row["check_status"], row["check_code"]) == ("DOWN", "L7STS", 503)
        assert stats.servers()["node2"]["status"] == "no check"
        device.close()
        Client("device-1", port).close()
        assert landed(nodes)["device-1"] == "node2"
        expected = "Basic " + base64.b64encode(b"probe:s3cret").decode()
        assert endpoint.requests[0] == (path, expected)
    finally:
        endpoint.close()


def _haproxy_maint_closes_sessions(broker, on_marked_down: str) -> bool:
    """HAProxy 2.6 itself: a relayed client, then `set server be/s1 state maint` on the stats
    socket. True when HAProxy closed the client within 3 s."""
    port = free_port()
    sock_path = f"/tmp/fastmqtt-haproxy-{port}.sock"
    config = (
        f"global\n  stats socket {sock_path} level admin\n"
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n"
        f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend be\n"
        f"backend be\n  server s1 {broker.address} check inter 500ms {on_marked_down}\n"
    )
    with HAProxy(config, wait_port=port):
        client = raw_connect(port, "haproxy-maint")
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(sock_path)
            admin.sendall(b"set server be/s1 state maint\n")
            assert admin.recv(256) in (b"", b"\n")  # empty answer: done
        closed = closed_by_peer(client, timeout=3)
        client.close()
    return closed


@pytest.mark.parametrize("on_marked_down", ["none", "shutdown-sessions"])
def test_maint_closes_sessions_as_haproxy_does(brokers, fastmqtt, on_marked_down):
    """HAProxy closes a server's sessions when it enters maintenance with `on-marked-down
    shutdown-sessions`, and keeps them without it; fastmqtt's admin `maint` does the same."""
    [node] = brokers(1)
    keyword = "on-marked-down shutdown-sessions" if on_marked_down != "none" else ""
    haproxy_closed = _haproxy_maint_closes_sessions(node, keyword)
    assert haproxy_closed is (on_marked_down != "none")  # checked on Debian's HAProxy 2.6

    port, stats_port = lb_port(), free_port()
    check = f'type = "tcp", interval = "500ms", on_marked_down = "{on_marked_down}"'
    config = checked_recipe([node], port, stats_port, check, user="ops")
    lb = fastmqtt(config, port=port, env={"STATS_PW": "pw"})
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    client = raw_connect(port, "fastmqtt-maint")
    admin = Stats(stats_port, "ops", "pw")
    assert admin.request("/api/servers/cluster/node1", {"state": "maint"})[0] == 200
    assert closed_by_peer(client, timeout=3) is haproxy_closed
    client.close()
    if haproxy_closed:
        ends = lambda: [line.rsplit(" ", 1)[1] for line in lb.connection_log() if "-maint" in line]  # noqa: E731
        assert wait_until(lambda: ends() == ["server-maint"])
