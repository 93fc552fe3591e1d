"""The shared stick table end to end, proved by what the brokers logged: every worker routes a
client to one broker, a restart with ``stick_dir`` keeps where it goes, and client ids of any
length cost the process nothing beyond the table's fixed size."""

from __future__ import annotations

import collections
import os
import re
import signal

import pytest

from fastmqtt.tools.brokers import free_port
from tests.support.hostile import rss_kib
from tests.support.lb import (
    Client,
    landed,
    lb_port,
    raw_connect,
    recipe,
    returning_device,
    wait_until,
)
from tests.support.stats import Stats

pytestmark = pytest.mark.e2e

STICK = 'stick = { on = "client_id", size = 100000, expire = "30m" }'


def _with_global(config: str, lines: str) -> str:
    return config.replace("[global]\n", f"[global]\n{lines}\n", 1)


def _homes(nodes, ids) -> dict[str, collections.Counter]:
    """client id -> how often each broker logged it connecting."""
    seen: dict[str, collections.Counter] = {cid: collections.Counter() for cid in ids}
    for node in nodes:
        for cid in node.connected_client_ids():
            if cid in seen:
                seen[cid][node.name] += 1
    return seen


def test_two_workers_send_a_client_to_one_broker_100_times_out_of_100(brokers, fastmqtt):
    nodes = brokers(3)
    port = lb_port()
    config = _with_global(recipe(nodes, port, backend=STICK), "workers = 2")
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())
    devices = [f"device-{i}" for i in range(6)]
    for _ in range(100):  # interleaved, so each worker's round robin moves between them
        for cid in devices:
            raw_connect(port, cid).close()
    assert wait_until(lambda: sum(map(len, map(list, _homes(nodes, devices).values()))) > 0)
    assert wait_until(
        lambda: all(sum(c.values()) == 100 for c in _homes(nodes, devices).values()), timeout=10
    )
    homes = _homes(nodes, devices)
    for cid, counts in homes.items():
        assert list(counts.values()) == [100], f"{cid} landed on {dict(counts)}"
    assert len({next(iter(c)) for c in homes.values()}) > 1  # still balanced between ids


def test_two_workers_keep_a_persistent_session(brokers, fastmqtt):
    """Through the brokers' state: the queued QoS 1 message reaches each device on every one of
    its returns, whichever worker each lands on."""
    nodes = brokers(3)
    port = lb_port()
    config = _with_global(recipe(nodes, port, backend=STICK), "workers = 2")
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())
    for i in range(6):
        raw_connect(port, f"passer-by-{i}").close()  # moves one worker's round robin on
        cid = f"device-{i}"
        for _ in range(2):
            device, got = returning_device(
                lambda cid=cid: Client(cid, port, clean=False), nodes, wait=3
            )
            assert got and device.messages == [("devices/42/cmd", b"reboot")], cid


def _first_off_node1(nodes, port: int) -> tuple[str, str]:
    """A new client id that round robin sent somewhere other than node1 (the first pick of
    a fresh process), and where."""
    for i in range(20):
        cid = f"restart-{i}"
        raw_connect(port, cid).close()
        assert wait_until(lambda cid=cid: cid in landed(nodes))
        if landed(nodes)[cid] != "node1":
            return cid, landed(nodes)[cid]
    raise AssertionError("round robin never left node1")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_restart_with_stick_dir_keeps_a_clients_broker(brokers, fastmqtt, tmp_path, workers):
    nodes = brokers(3)
    port = lb_port()
    stick_dir = tmp_path / "sticks"
    config = _with_global(
        recipe(nodes, port, backend=STICK), f'workers = {workers}\nstick_dir = "{stick_dir}"'
    )
    lb = fastmqtt(config, port=port)
    assert workers == 1 or wait_until(lambda: "2 workers serving" in lb.logs())  # signals set
    cid, home = _first_off_node1(nodes, port)
    lb.signal(signal.SIGTERM)
    assert lb.proc.wait(timeout=15) == 0
    assert os.path.exists(stick_dir / "cluster.stick")

    lb = fastmqtt(config, port=port)  # a fresh process: its round robin starts at node1
    assert re.search(r"cluster\.stick: [1-9]\d* entries kept from the last run", lb.logs())
    before = collections.Counter(
        n.name for n in nodes for c in n.connected_client_ids() if c == cid
    )
    raw_connect(port, cid).close()
    assert wait_until(
        lambda: (
            sum(1 for n in nodes for c in n.connected_client_ids() if c == cid)
            == sum(before.values()) + 1
        )
    )
    assert landed(nodes)[cid] == home


def test_a_second_fastmqtt_on_the_same_stick_dir_is_refused(brokers, fastmqtt, tmp_path):
    nodes = brokers(1)
    stick_dir = tmp_path / "sticks"
    port = lb_port()
    config = _with_global(recipe(nodes, port, backend=STICK), f'stick_dir = "{stick_dir}"')
    fastmqtt(config, port=port)
    other = fastmqtt(config.replace(str(port), str(lb_port())))
    assert other.proc.wait(timeout=15) == 1
    assert "in use by another process" in other.logs()


def test_a_flood_of_65000_byte_client_ids_grows_nothing_but_the_fixed_table(brokers, fastmqtt):
    """Issue 11 item 3: the table keys on a 16-byte digest, so 1,000 ids of 65,000 bytes cost
    the bytes of the table, which were mapped and populated at start."""
    nodes = brokers(2)
    port, stats_port = lb_port(), free_port()
    config = recipe(nodes, port, backend=STICK) + (f'\n[stats]\nbind = "127.0.0.1:{stats_port}"\n')
    lb = fastmqtt(config, port=port)
    warm = "w" * 64_990
    for i in range(50):  # buffers and allocator pools reach their steady size first
        raw_connect(port, f"{i:04d}{warm}").close()
    before = rss_kib(lb.proc.pid)
    flood = "f" * 64_990
    for i in range(1000):
        raw_connect(port, f"{i:04d}{flood}").close()
    growth = rss_kib(lb.proc.pid) - before
    assert growth < 6 * 1024, f"grew {growth} KiB for 1000 ids of 65 kB"
    stats = Stats(stats_port)
    be = stats.json()["backends"][0]
    assert be["stick_entries"] == 1050  # every id is in the table...
    assert be["stick_bytes"] <= 100_000 * 48  # ...whose size was fixed at start
    metrics = stats.get("/metrics")
    assert 'fastmqtt_stick_table_entries{backend="cluster"} 1050' in metrics
    assert f'fastmqtt_stick_table_bytes{{backend="cluster"}} {be["stick_bytes"]}' in metrics
    assert "stick table: 1050 of 100000 entries" in stats.get("/stats")


def test_a_reload_that_resizes_the_table_keeps_where_clients_go(brokers, fastmqtt):
    nodes = brokers(3)
    port = lb_port()
    small = 'stick = { on = "client_id", size = 1000, expire = "30m" }'
    config = _with_global(recipe(nodes, port, backend=small), "workers = 2")
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())
    cid, home = _first_off_node1(nodes, port)
    answer = lb.reload(config.replace("size = 1000", "size = 5000"))
    assert " reloaded " in answer, answer
    assert "stick table cluster: size 1000 -> 5000, kept" in lb.logs()
    for _ in range(20):  # through both workers, each on the new table
        raw_connect(port, cid).close()
    assert wait_until(lambda: sum(_homes(nodes, [cid])[cid].values()) >= 21)
    assert set(_homes(nodes, [cid])[cid]) == {home}
