"""The runtime admin API and `fastmqtt ctl` against a real `fastmqtt serve` and real brokers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from fastmqtt.tools.brokers import free_port, wait_for_port
from tests.support.hostile import read_until_closed
from tests.support.lb import Client, landed, lb_port, raw_connect, wait_until
from tests.support.stats import Stats, checked_recipe

pytestmark = pytest.mark.e2e

CHECK = 'type = "tcp", interval = "200ms", timeout = "2s"'
PASSWORD = "adm1n-pw"


def ctl(
    stats_port: int, *args: str, password: str | None = PASSWORD
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CTL_PW"}
    if password is not None:
        env["CTL_PW"] = password
    url = f"http://127.0.0.1:{stats_port}"
    command = ["ctl", "--url", url, "--user", "ops", "--password-env", "CTL_PW", *args]
    return subprocess.run(
        [sys.executable, "-m", "fastmqtt", *command],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def _new_clients(port: int, prefix: str, count: int, nodes) -> dict[str, int]:
    for i in range(count):
        raw_connect(port, f"{prefix}-{i}").close()
    ids = {f"{prefix}-{i}" for i in range(count)}
    assert wait_until(lambda: ids <= set(landed(nodes)))
    where = landed(nodes)
    return {b.name: sum(where[cid] == b.name for cid in ids) for b in nodes}


@pytest.fixture
def cluster(brokers, fastmqtt):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK, user="ops")
    lb = fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)  # bound just after the frontends
    return nodes, port, stats_port, lb


@pytest.fixture
def cluster_slowstart(brokers, fastmqtt):
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK + ', slowstart = "2s"', user="ops")
    fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    return nodes, port, stats_port


def test_drain_keeps_existing_clients_and_steers_new_ones_away(cluster):
    nodes, port, stats_port, lb = cluster
    old1, old2 = Client("old-1", port), Client("old-2", port)
    assert landed(nodes) == {"old-1": "node1", "old-2": "node2"}

    done = ctl(stats_port, "drain", "cluster/node1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "DRAIN"
    assert _new_clients(port, "during-drain", 6, nodes) == {"node1": 0, "node2": 6}

    old1.subscribe("still/here")  # the drained server's client still talks to its broker
    old1.publish("still/here", b"yes")
    assert old1.wait_message() and not old1.disconnected.is_set()
    assert "cluster/node1 is DRAIN (was UP): set to drain by admin API (ops from" in lb.logs()
    assert Stats(stats_port, "ops", PASSWORD).state("node1") == "DRAIN"

    assert ctl(stats_port, "ready", "cluster/node1").returncode == 0
    assert _new_clients(port, "after-ready", 4, nodes) == {"node1": 2, "node2": 2}

    assert ctl(stats_port, "weight", "cluster/node2", "0").returncode == 0
    assert _new_clients(port, "weight0", 4, nodes) == {"node1": 4, "node2": 0}
    shown = json.loads(ctl(stats_port, "show", "cluster/node2").stdout)
    assert (shown["weight"], shown["state"]) == (0, "UP")
    for client in (old1, old2):
        client.close()


def test_admin_api_refuses_without_auth_and_rejects_bad_requests(cluster):
    stats_port = cluster[2]
    path = "/api/servers/cluster/node1"
    assert Stats(stats_port).request(path, {"state": "drain"})[0] == 401
    assert Stats(stats_port, "ops", "guess").request(path, {"state": "drain"})[0] == 401
    refused = ctl(stats_port, "maint", "cluster/node1", password="")
    assert refused.returncode == 1 and "401" in refused.stderr
    unset = ctl(stats_port, "maint", "cluster/node1", password=None)  # told before any request
    assert unset.returncode == 2 and "CTL_PW is not set" in unset.stderr
    admin = Stats(stats_port, "ops", PASSWORD)
    assert admin.state("node1") == "UP"  # none of the above changed anything

    for body in ({"state": "down"}, {"weight": 300}, {"weight": True}, {"colour": "red"}, []):
        assert admin.request(path, body)[0] == 400, body
    assert admin.request("/api/servers/cluster/node9", {"state": "drain"})[0] == 404
    form = Stats(stats_port, "ops", PASSWORD)
    form.headers["Content-Type"] = "text/plain"  # what a cross-site HTML form can send
    assert form.request(path, {"state": "drain"})[0] == 415
    assert admin.request(path, {"state": "maint", "weight": 3})[0] == 200
    assert (admin.servers()["node1"]["state"], admin.servers()["node1"]["weight"]) == ("MAINT", 3)
    assert {row["svname"] for row in json.loads(admin.get("/api/servers"))} == {"node1", "node2"}
    assert ctl(stats_port, "weight", "cluster/node1").returncode == 2  # no N: usage error


def test_admin_api_is_off_without_auth(brokers, fastmqtt):
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    fastmqtt(checked_recipe(nodes, port, stats_port, CHECK), port=port)
    status, text = Stats(stats_port).request("/api/servers/cluster/node1", {"state": "drain"})
    assert status == 403 and "auth" in text
    assert Stats(stats_port).state("node1") == "UP"


def test_slowstart_ramps_a_returning_server_up(cluster_slowstart):
    nodes, port, stats_port = cluster_slowstart
    admin = Stats(stats_port, "ops", PASSWORD)
    path = "/api/servers/cluster/node1"
    assert admin.request(path, {"state": "maint"})[0] == 200
    assert admin.request(path, {"state": "ready"})[0] == 200
    shares, throttles = [], []
    for batch in range(40):  # about 0.17 s each, until the 2 s ramp is over
        counts = _new_clients(port, f"ramp{batch}", 10, nodes)
        shares.append(counts["node1"])
        throttles.append(admin.servers()["node1"]["throttle"])
        if throttles[-1] == 100:
            break
        time.sleep(0.15)
    print(f"\nnode1 of 10 per batch while ramping: {shares}; throttle %: {throttles}")
    assert throttles == sorted(throttles) and throttles[0] < 30 and throttles[-1] == 100
    assert sum(shares[:2]) <= 3  # no reconnect storm onto the returning server
    third = len(shares) // 3
    assert sum(shares[:third]) < sum(shares[-third:])  # its share grows with its weight
    # Smooth round robin carries its running counters across the weight change at the end
    # of the ramp, which skews the next ~16 picks; after that the split is even again (within
    # one pick: the last weight step may reach the engine a tick after the page showed 100 %).
    _new_clients(port, "settle", 20, nodes)
    assert 9 <= _new_clients(port, "even", 20, nodes)["node1"] <= 11


def test_ctl_reload_applies_a_new_config_and_refuses_a_broken_one(cluster):
    _nodes, port, stats_port, lb = cluster
    path = os.path.join(lb.workdir, "lb.toml")
    extra = lb_port()
    with open(path, "a") as f:
        f.write(f'\n[frontend.extra]\nbind = "127.0.0.1:{extra}"\nbackend = "cluster"\n')
    assert ctl(stats_port, "reload", password="wrong").returncode == 1  # needs auth
    done = ctl(stats_port, "reload")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reloaded": True, "errors": []}
    raw_connect(extra, "via-extra").close()  # the new listener serves

    with open(path, "w") as f:
        f.write("[frontend.broken]\nbind = 5\n")
    refused = ctl(stats_port, "reload")
    assert refused.returncode == 1
    assert "frontend.broken.bind" in refused.stderr
    raw_connect(port, "after-refusal").close()  # the old config still runs
    raw_connect(extra, "extra-after-refusal").close()


def _post(stats_port: int, path: str, content_type: str | None, body: bytes) -> int:
    """An authenticated POST with the given Content-Type (None: without the header), as a
    browser sends an HTML form riding the operator's cached basic-auth login."""
    headers = dict(Stats(stats_port, "ops", PASSWORD).headers)
    headers.pop("Content-Type")
    if content_type is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(
        f"http://127.0.0.1:{stats_port}{path}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain", None]
)
def test_reload_refuses_what_a_cross_site_form_can_post(cluster, content_type):
    _nodes, _port, stats_port, lb = cluster
    extra = lb_port()
    with open(os.path.join(lb.workdir, "lb.toml"), "a") as f:
        f.write(f'\n[frontend.extra]\nbind = "127.0.0.1:{extra}"\nbackend = "cluster"\n')
    assert _post(stats_port, "/api/reload", content_type, b"x=1") == 415
    assert _post(stats_port, "/api/servers/cluster/node1", content_type, b"x=1") == 415
    time.sleep(0.3)
    assert " reloaded " not in lb.logs()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", extra), timeout=2)
    done = ctl(stats_port, "reload")  # what ctl sends is still accepted
    assert done.returncode == 0, done.stderr
    raw_connect(extra, "via-extra").close()


@pytest.mark.parametrize("length", [b"\xb2", b"\xb9", b"1\xb3", b"-1", b"+5", b" ", b"0x10"])
def test_a_content_length_that_is_not_ascii_digits_is_a_400(cluster, length):
    """`Content-Length: ²` (a digit to str.isdigit, not to int) was a 500 and a traceback."""
    _nodes, _port, stats_port, lb = cluster
    with socket.create_connection(("127.0.0.1", stats_port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/reload HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert "Traceback" not in lb.logs() and "error answering" not in lb.logs()
