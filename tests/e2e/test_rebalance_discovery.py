"""Automatic rebalance when DNS discovery adds a server (issue 14 item 1 with issue 15 section
1): paho clients on two Mosquitto brokers reached through a server template, then the real DNS
server on loopback (dnslib) returns a third address; the rebalance starts by itself and the
new broker ends up with its share. An address change of a server that holds clients, or a
backend without ``automatic``, starts nothing."""

from __future__ import annotations

import json
import time

import pytest

from fastmqtt.tools.brokers import free_port, wait_for_port
from tests.e2e.test_admin import PASSWORD, ctl
from tests.support.dns import HOSTS, DnsServer
from tests.support.lb import lb_port, wait_until
from tests.support.paho_swarm import Device, Swarm
from tests.support.stats import Stats, stats_toml

pytestmark = pytest.mark.e2e

CLIENTS = 90
STARTED = "rebalance of cluster started by automatic"


def _config(
    dns: DnsServer, broker_port: int, port: int, stats_port: int, automatic: bool, workers: int
) -> str:
    return (
        f'[global]\nworkers = {workers}\ngrace = "1s"\n'
        '[defaults]\ntimeout_connect = "2s"\ninspect_delay = "5s"\n'
        f'[resolvers.dns]\nnameservers = ["{dns.nameserver}"]\ninterval = "200ms"\n'
        'retry = "200ms"\ntimeout = "500ms"\n'
        f'[frontend.mqtt]\nbind = "127.0.0.1:{port}"\nbackend = "cluster"\n'
        "[backend.cluster]\nstick = true\n"
        'check = { type = "tcp", interval = "200ms", timeout = "2s" }\n'  # not the subject
        f"rebalance = {{ automatic = {str(automatic).lower()}, rate = 100 }}\n"
        '[[backend.cluster.server_template]]\nprefix = "emqx"\ncount = 3\n'
        f'address = "emqx.test:{broker_port}"\nresolvers = "dns"\n'
    ) + stats_toml(stats_port, "ops")


def _servers(stats: Stats) -> dict[str, tuple[str, str, int]]:
    """server -> (state, address, clients now)."""
    return {n: (sv["state"], sv["addr"], sv["scur"]) for n, sv in stats.servers().items()}


def _run_state(stats: Stats) -> str | None:
    status, body = stats.request("/api/rebalance/cluster")
    return json.loads(body)[0]["state"] if status == 200 else None


def _start(dns, nodes, fastmqtt, automatic: bool = True, workers: int = 1):
    """The LB on a template of 3 servers whose name gives the first two brokers, and the
    clients on those two."""
    dns.a("emqx.test", HOSTS[:2])
    port, stats_port = lb_port(), free_port()
    config = _config(dns, nodes[0].port, port, stats_port, automatic, workers)
    lb = fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    if workers > 1:  # every worker accepts (SO_REUSEPORT) before the clients come
        assert wait_until(lambda: f"{workers} workers serving" in lb.logs(), 10), lb.logs()
    stats = Stats(stats_port, "ops", PASSWORD)
    assert wait_until(lambda: _servers(stats)["emqx2"][0] == "UP", 10), _servers(stats)
    devices = [Device(f"dev-{i:03d}", 5 if i % 2 else 4, False) for i in range(CLIENTS)]
    swarm = Swarm(port, devices).start()
    counts = lambda: [s[2] for s in _servers(stats).values()]  # noqa: E731
    assert wait_until(lambda: sum(counts()) == CLIENTS, 20), _servers(stats)
    # (under workers not always half and half: one worker may see emqx2 up later)
    assert counts()[2] == 0, _servers(stats)
    return lb, stats, stats_port, swarm, devices


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pod_that_joins_the_name_gets_its_share_by_itself(dns, nodes, fastmqtt, workers):
    """Under workers every worker finds the new address (and tells the supervisor): one run."""
    lb, stats, stats_port, swarm, devices = _start(dns, nodes, fastmqtt, workers=workers)
    try:
        assert _run_state(stats) is None and STARTED not in lb.logs()
        dns.a("emqx.test", HOSTS)  # a third pod
        assert wait_until(lambda: _run_state(stats) is not None, 10), lb.logs()
        done = ctl(stats_port, "rebalance", "cluster", "--status", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _run_state(stats) == "done", done.stdout
        servers = _servers(stats)
        assert servers["emqx3"][1] == f"{HOSTS[2]}:{nodes[2].port}", servers
        # within the default tolerance (10%) of 30 each; moved clients came back to emqx3
        assert all(27 <= n <= 33 for _, _, n in servers.values()), servers
        assert wait_until(swarm.all_connected, 5)
        progress = json.loads(stats.get("/api/rebalance/cluster"))[0]
        assert progress["lost"] == 0 and servers["emqx3"][2] <= progress["asked"], progress
        assert sum(d.connects for d in devices) == CLIENTS + progress["asked"]
        time.sleep(1.0)  # a worker that told it later must not start a second run
        assert lb.logs().count(STARTED) == 1, lb.logs()
        assert "automatic: emqx3 added" in lb.logs()
    finally:
        swarm.stop()


@pytest.mark.parametrize("case", ["address change", "not automatic"])
def test_no_run_for_an_address_change_or_without_automatic(dns, nodes, fastmqtt, case):
    """A record replaced by another in one answer moves a server that holds clients: not a
    new node. Without ``automatic``, a new one starts nothing either."""
    lb, stats, _, swarm, _ = _start(dns, nodes, fastmqtt, automatic=case != "not automatic")
    before = [s[2] for s in _servers(stats).values()]
    try:
        if case == "address change":  # 127.0.0.3 gives way to 127.0.0.4 in emqx2
            dns.a("emqx.test", [HOSTS[0], HOSTS[2]])
            moved, up = "emqx2", f"{HOSTS[2]}:{nodes[2].port}"
        else:
            dns.a("emqx.test", HOSTS)
            moved, up = "emqx3", f"{HOSTS[2]}:{nodes[2].port}"
        assert wait_until(lambda: _servers(stats)[moved][:2] == ("UP", up), 10), _servers(stats)
        time.sleep(1.5)  # an automatic run would start within a few health checks
        assert _run_state(stats) is None and STARTED not in lb.logs(), lb.logs()
        # established connections kept their brokers
        assert [s[2] for s in _servers(stats).values()] == before, _servers(stats)
    finally:
        swarm.stop()
