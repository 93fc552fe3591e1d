"""Brokers that move: servers given by name follow their DNS records while clients connect,
against a real DNS server on loopback (dnslib) and real Mosquitto brokers on 127.0.0.2-4
(one port, so the A record alone decides where a client goes)."""

from __future__ import annotations

import collections
import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from fastmqtt import packets
from fastmqtt.tools.brokers import Mosquitto, free_port
from fastmqtt.tools.convert import convert
from tests.support.dns import DnsServer
from tests.support.haproxy import HAProxy
from tests.support.lb import closed_by_peer, landed, lb_port, raw_connect, wait_until
from tests.support.stats import Stats

pytestmark = pytest.mark.e2e

PASSWORD = "dns-admin"


def lb_config(dns: DnsServer, port: int, stats_port: int, backend: str) -> str:
    return (
        '[global]\ngrace = "1s"\n[defaults]\ntimeout_connect = "2s"\ninspect_delay = "5s"\n'
        f'[resolvers.dns]\nnameservers = ["{dns.nameserver}"]\ninterval = "200ms"\n'
        'retry = "200ms"\ntimeout = "500ms"\n'
        f'[frontend.mqtt]\nbind = "127.0.0.1:{port}"\nbackend = "cluster"\n'
        f"[backend.cluster]\n{backend}\n"
        f'[stats]\nbind = "127.0.0.1:{stats_port}"\nauth = {{ user = "ops", '
        'password_env = "STATS_PW" }\n'
    )


def start(fastmqtt, dns: DnsServer, backend: str) -> tuple[int, Stats, object]:
    port, stats_port = lb_port(), free_port()
    lb = fastmqtt(lb_config(dns, port, stats_port, backend), port=port, env={"STATS_PW": PASSWORD})
    stats = Stats(stats_port, "ops", PASSWORD)
    assert wait_until(lambda: _ready(stats), 10), lb.logs()
    return port, stats, lb


def _ready(stats: Stats) -> bool:
    try:
        stats.json()
    except OSError:
        return False
    return True


def template(port: int, count: int = 3, extra: str = "") -> str:
    return (
        f'[[backend.cluster.server_template]]\nprefix = "emqx"\ncount = {count}\n'
        f'address = "emqx.test:{port}"\nresolvers = "dns"\n{extra}'
    )


def alive(sock: socket.socket) -> bool:
    """A PINGREQ through the balancer is answered: the connection still reaches its broker."""
    try:
        sock.settimeout(5)
        sock.sendall(packets.PINGREQ)
        return sock.recv(2) == b"\xd0\x00"
    except OSError:
        return False


def rows(stats: Stats) -> dict[str, tuple[str, str]]:
    return {name: (sv["state"], sv["addr"]) for name, sv in stats.servers().items()}


class Churn:
    """Clients connecting one after another through the balancer (each CONNECT, CONNACK, then
    close), counting those that failed, in a thread; bounded by ``limit`` seconds."""

    def __init__(self, port: int, limit: float = 30.0) -> None:
        self.port, self.limit = port, limit
        self.done: list[tuple[float, str]] = []
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            cid = f"churn-{i}"
            i += 1
            try:
                raw_connect(self.port, cid).close()
                self.done.append((time.monotonic(), cid))
            except (OSError, ConnectionError) as exc:
                self.failed.append(f"{cid}: {exc}")
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_new_clients_follow_a_name_to_its_new_address_and_none_fails(dns, nodes, fastmqtt):
    node1, node2, _ = nodes
    dns.a("mqtt.test", [node1.host])
    backend = (
        '[[backend.cluster.server]]\nname = "n1"\n'
        f'address = "mqtt.test:{node1.port}"\nresolvers = "dns"\n'
    )
    port, stats, lb = start(fastmqtt, dns, backend)
    assert rows(stats) == {"n1": ("UP", f"{node1.address}")}
    old = raw_connect(port, "old-client")
    churn = Churn(port)
    try:
        assert wait_until(lambda: len(churn.done) >= 10, 10)
        dns.a("mqtt.test", [node2.host])  # the broker moved (a pod was replaced)
        assert wait_until(lambda: rows(stats)["n1"] == ("UP", node2.address), 5)
        moved_at = time.monotonic()
        assert wait_until(lambda: sum(t > moved_at for t, _ in churn.done) >= 10, 10)
    finally:
        churn.finish()
    assert churn.failed == []  # no client failed while the address changed
    after = [cid for t, cid in churn.done if t > moved_at]
    assert wait_until(lambda: set(after) <= set(landed(nodes)))
    assert {landed(nodes)[cid] for cid in after} == {"node2"}
    assert landed(nodes)["old-client"] == "node1" and alive(old)  # it kept its socket
    log = lb.logs()
    assert f"server cluster/n1: now at {node2.address} (mqtt.test), was at {node1.address}" in log
    kept = re.search(r"established connections kept: (\d+)", log)  # churn clients too
    assert kept is not None and int(kept[1]) >= 1
    old.close()


def test_a_template_grows_and_shrinks_and_a_removed_server_drains(dns, nodes, fastmqtt):
    node1, node2, node3 = nodes
    dns.a("emqx.test", [node1.host, node2.host])
    port, stats, lb = start(fastmqtt, dns, template(node1.port))
    assert rows(stats) == {
        "emqx1": ("UP", node1.address),
        "emqx2": ("UP", node2.address),
        "emqx3": ("MAINT", ""),  # no record for it: HAProxy's "MAINT (resolution)"
    }
    assert stats.servers()["emqx3"]["last_chk"] == "no address: emqx.test gave 2 for 3 servers"
    first = [raw_connect(port, f"first-{i}") for i in range(2)]
    assert wait_until(lambda: {"first-0", "first-1"} <= set(landed(nodes)))
    on_node2 = next(s for i, s in enumerate(first) if landed(nodes)[f"first-{i}"] == "node2")

    dns.a("emqx.test", [node1.host, node2.host, node3.host])  # a pod joined
    assert wait_until(lambda: rows(stats)["emqx3"] == ("UP", node3.address), 5)
    for i in range(6):
        raw_connect(port, f"grown-{i}").close()
    grown = {f"grown-{i}" for i in range(6)}
    assert wait_until(lambda: grown <= set(landed(nodes)))
    assert sorted(landed(nodes)[cid] for cid in grown) == ["node1", "node1", "node2", "node2",
                                                           "node3", "node3"]  # fmt: skip

    dns.a("emqx.test", [node1.host, node3.host])  # node2's pod left
    assert wait_until(lambda: rows(stats)["emqx2"] == ("MAINT", ""), 5)
    assert rows(stats)["emqx1"] == ("UP", node1.address)  # the others did not move
    assert rows(stats)["emqx3"] == ("UP", node3.address)
    assert stats.servers()["emqx2"]["scur"] == 1  # its client is still counted there...
    assert alive(on_node2)  # ...and still talks to its broker
    for i in range(4):
        raw_connect(port, f"shrunk-{i}").close()
    shrunk = {f"shrunk-{i}" for i in range(4)}
    assert wait_until(lambda: shrunk <= set(landed(nodes)))
    assert {landed(nodes)[cid] for cid in shrunk} == {"node1", "node3"}
    assert "server cluster/emqx2: no address (no address: emqx.test gave 2 for 3 servers)" in (
        lb.logs()
    )
    for sock in first:
        sock.close()


def test_an_added_server_is_checked_at_once_and_a_dead_one_taken_out(dns, nodes, fastmqtt):
    """As HAProxy 2.6 starts a template server that got an address: up, checked at once (not
    after `interval`), down at the first failed check; no client fails meanwhile."""
    node1 = nodes[0]
    dns.a("emqx.test", [node1.host])
    check = 'check = { interval = "30s", timeout = "1s" }\n'
    port, stats, lb = start(fastmqtt, dns, check + template(node1.port, count=2))
    assert wait_until(lambda: stats.servers()["emqx1"].get("check_status") == "L4OK", 5)
    churn = Churn(port)
    try:
        dns.a("emqx.test", [node1.host, "127.0.0.5"])  # an address where no broker listens
        assert wait_until(lambda: rows(stats)["emqx2"] == ("DOWN", "127.0.0.5:" + str(node1.port)))
        row = stats.servers()["emqx2"]
        assert (row["check_status"], row["last_chk"]) == ("L4CON", "Connection refused")
        done = len(churn.done)
        assert wait_until(lambda: len(churn.done) >= done + 5)
    finally:
        churn.finish()
    assert churn.failed == []  # a connect refused by emqx2 went to emqx1 (redispatch)
    assert "server cluster/emqx2 is DOWN (was UP): Layer4 connection problem" in lb.logs()


def test_a_name_that_does_not_resolve_at_start_is_down_then_comes_up(dns, nodes, fastmqtt):
    node1 = nodes[0]
    backend = (
        '[[backend.cluster.server]]\nname = "n1"\n'
        f'address = "late.test:{node1.port}"\nresolvers = "dns"\n'
    )
    port, stats, lb = start(fastmqtt, dns, backend)  # starts: no crash, no exit
    row = stats.servers()["n1"]
    assert (row["state"], row["status"], row["addr"]) == ("DOWN", "DOWN", "")
    assert row["last_chk"] == "resolution failed: late.test: no such name (NXDOMAIN)"
    assert "late.test: no such name" in stats.get("/stats")  # on the page, with the name
    assert "server cluster/n1: cannot resolve late.test: no such name (NXDOMAIN); DOWN" in (
        lb.logs()
    )
    with pytest.raises(ConnectionError):  # no server: the client is turned away, not hung
        raw_connect(port, "too-early")
    asked = dns.queries_for("late.test")
    assert wait_until(lambda: dns.queries_for("late.test") > asked)  # retried

    dns.a("late.test", [node1.host])
    assert wait_until(lambda: rows(stats)["n1"] == ("UP", node1.address), 5)
    raw_connect(port, "in-time").close()
    assert wait_until(lambda: landed(nodes).get("in-time") == "node1")
    assert "server cluster/n1: late.test resolves again" in lb.logs()
    assert "resolution" not in stats.servers()["n1"]


def test_srv_records_give_each_server_its_target_and_port(dns, brokers, fastmqtt):
    b1, b2 = brokers(2)  # 127.0.0.1, two ports
    dns.srv("_mqtt._tcp.emqx.test", [("b1.test", b1.port), ("b2.test", b2.port)])
    dns.a("b1.test", [b1.host])
    dns.a("b2.test", [b2.host])
    backend = (
        '[[backend.cluster.server_template]]\nprefix = "emqx"\ncount = 3\n'
        'address = "_mqtt._tcp.emqx.test"\nresolvers = "dns"\n'
    )
    port, stats, _ = start(fastmqtt, dns, backend)
    servers = stats.servers()
    assert [(servers[n]["addr"], servers[n].get("fqdn")) for n in ("emqx1", "emqx2")] == [
        (b1.address, "b1.test"),
        (b2.address, "b2.test"),
    ]
    assert servers["emqx3"]["state"] == "MAINT"
    for i in range(4):
        raw_connect(port, f"srv-{i}").close()
    ids = {f"srv-{i}" for i in range(4)}
    assert wait_until(lambda: ids <= set(landed([b1, b2])))
    assert sorted(landed([b1, b2])[cid] for cid in ids) == ["node1", "node1", "node2", "node2"]


def test_aaaa_records_reach_a_broker_on_ipv6_loopback(dns, fastmqtt):
    with Mosquitto(host="::1", name="v6node") as broker:
        dns.aaaa("v6.test", ["::1"])
        backend = (
            '[[backend.cluster.server_template]]\nprefix = "v6-"\ncount = 1\ntype = "aaaa"\n'
            f'address = "v6.test:{broker.port}"\nresolvers = "dns"\n'
        )
        port, stats, _ = start(fastmqtt, dns, backend)
        assert rows(stats) == {"v6-1": ("UP", f"[::1]:{broker.port}")}
        raw_connect(port, "over-v6").close()
        assert wait_until(lambda: "over-v6" in broker.connected_client_ids())


def test_server_names_keep_stats_stick_entries_and_admin_states(dns, nodes, fastmqtt):
    node1, node2, node3 = nodes
    dns.a("emqx.test", [node1.host, node2.host])
    backend = 'stick = { on = "client_id" }\n' + template(node1.port)
    port, stats, _ = start(fastmqtt, dns, backend)
    raw_connect(port, "device-1").close()
    assert wait_until(lambda: landed(nodes).get("device-1") == "node1")
    status, _ = stats.request("/api/servers/cluster/emqx2", {"state": "drain"})
    assert status == 200

    dns.a("emqx.test", [node3.host, node1.host])  # reordered; node2 left, node3 joined
    assert wait_until(lambda: rows(stats)["emqx2"] == ("DRAIN", node3.address), 5)
    servers = stats.servers()  # emqx2 holds node3 now, and is still drained by the admin
    assert (servers["emqx1"]["addr"], servers["emqx1"]["stot"]) == (node1.address, 1)
    assert servers["emqx2"]["admin"] == "drain"

    raw_connect(port, "device-1").close()  # its stick entry still names emqx1: node1
    raw_connect(port, "device-2").close()  # emqx2 drained, emqx3 empty: emqx1
    assert wait_until(lambda: "device-2" in landed(nodes))
    assert node1.connected_client_ids() == ["device-1", "device-1", "device-2"]
    # the engine's counts reach the stats within a sync (0.25 s), not before the CONNACK
    assert wait_until(lambda: stats.servers()["emqx1"]["stot"] == 3)
    assert stats.json()["backends"][0]["sticky_hits"] == 1


def test_check_warns_and_serve_names_the_host_at_start_and_on_reload(brokers, fastmqtt, tmp_path):
    """The libc's resolver (no [resolvers]): a `.invalid` name (RFC 6761) never resolves; the
    lookup goes to the machine's resolver, as HAProxy's start-up lookup would."""
    (node1,) = brokers(1)
    port, stats_port = lb_port(), free_port()
    config = (
        f'[frontend.mqtt]\nbind = "127.0.0.1:{port}"\nbackend = "cluster"\n[backend.cluster]\n'
        f'[[backend.cluster.server]]\nname = "node1"\naddress = "{node1.address}"\n'
        f'[[backend.cluster.server]]\nname = "ghost"\naddress = "broker.invalid:{node1.port}"\n'
        f'[stats]\nbind = "127.0.0.1:{stats_port}"\n'
    )
    path = tmp_path / "lb.toml"
    path.write_text(config)
    check = subprocess.run(
        [sys.executable, "-m", "fastmqtt", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert (
        f"warning: {path}: backend.cluster.server[1].address: broker.invalid: "
        "Name or service not known: serve starts this server DOWN and keeps trying"
    ) in check.stderr

    lb = fastmqtt(config, port=port)  # on main it exited: "Name or service not known"
    stats = Stats(stats_port)
    assert wait_until(lambda: _ready(stats), 10)
    ghost = stats.servers()["ghost"]
    assert (ghost["state"], ghost["fqdn"]) == ("DOWN", "broker.invalid")
    assert ghost["last_chk"] == "resolution failed: broker.invalid: Name or service not known"
    raw_connect(port, "served").close()  # node1 serves meanwhile
    assert "cannot resolve broker.invalid: Name or service not known" in lb.logs()

    reloaded = config.replace("broker.invalid", "other.invalid")
    assert " reloaded " in lb.reload(reloaded)  # accepted: the server is DOWN, not the reload
    assert wait_until(lambda: "cannot resolve other.invalid" in lb.logs(), 5)
    assert stats.servers()["ghost"]["fqdn"] == "other.invalid"
    sock = raw_connect(port, "after-reload")
    assert not closed_by_peer(sock, 0.2)
    sock.close()
    assert json.loads(stats.get("/stats.json"))["backends"][0]["status"] == "UP"


HAPROXY_TEMPLATE = """\
resolvers dns
    nameserver ns1 {nameserver}
    timeout resolve 200ms
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend mqtt
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content reject unless {{ req.payload(0,0),mqtt_is_valid }}
    default_backend emqx
backend emqx
    server-template emqx 3 emqx.test:{broker_port} resolvers dns init-addr none
"""


def test_a_converted_haproxy_config_follows_dns_as_haproxy_does(dns, nodes, fastmqtt):
    """HAProxy 2.6 and fastmqtt run the same resolvers + server-template config (fastmqtt's
    through `fastmqtt convert`) against one DNS server: both follow the records alike."""
    node1, node2, node3 = nodes
    dns.a("emqx.test", [node1.host, node2.host])
    ports = {"hap": lb_port(), "fmq": lb_port()}
    texts = {
        lb: HAPROXY_TEMPLATE.format(nameserver=dns.nameserver, port=port, broker_port=node1.port)
        for lb, port in ports.items()
    }
    toml, report = convert(texts["fmq"])
    assert report.skipped == []
    fastmqtt(toml, port=ports["fmq"])
    with HAProxy(texts["hap"], ports["hap"]):

        def spread(prefix: str, count: int) -> dict[str, dict[str, int]]:
            out = {}
            for lb, port in ports.items():
                ids = [f"{lb}-{prefix}-{i}" for i in range(count)]
                for cid in ids:
                    raw_connect(port, cid).close()
                assert wait_until(lambda ids=ids: set(ids) <= set(landed(nodes)))
                out[lb] = collections.Counter(landed(nodes)[cid] for cid in ids)
            return out

        assert wait_until(lambda: _reaches(ports["hap"], "hap-probe", nodes, "node2"), 10)
        before = spread("before", 4)
        assert before["hap"] == before["fmq"] == {"node1": 2, "node2": 2}

        dns.a("emqx.test", [node2.host, node3.host])  # node1's pod left, node3's joined
        for lb, port in ports.items():
            assert wait_until(lambda lb=lb, port=port: _reaches(port, lb, nodes, "node3"), 10)
        after = spread("after", 4)
        assert after["hap"] == after["fmq"] == {"node2": 2, "node3": 2}


_probes = iter(range(10**6))


def _reaches(port: int, lb: str, nodes: list[Mosquitto], broker: str) -> bool:
    """One more client through the balancer: did it land on ``broker``?"""
    cid = f"{lb}-probe-{next(_probes)}"
    try:
        raw_connect(port, cid).close()
    except (OSError, ConnectionError):
        return False
    return wait_until(lambda: cid in landed(nodes), 5) and landed(nodes)[cid] == broker
