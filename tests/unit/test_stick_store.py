"""Where the stick tables live: kept, resized and re-attached across reloads, taken over after a
restart (with the live counts of the dead run cleared), refused while another process maps the
file, and replaced with a log line when a file is not a table this version can use."""

from __future__ import annotations

import logging
import os

import pytest

from fastmqtt import stick_file
from fastmqtt.config import StickConfig
from fastmqtt.stick import StickStore


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def owner(directory: str | None, clock: Clock, workers: int = 2) -> StickStore:
    return StickStore(directory, workers, 0, owner=True, clock=clock)


def test_a_reload_keeps_the_table_and_applies_a_new_expire() -> None:
    clock = Clock()
    store = owner(None, clock)
    table = store.table("cluster", StickConfig(size=100, expire=60), None)
    table.put("dev", "node1")
    same = store.table("cluster", StickConfig(size=100, expire=10), table)
    assert same is table and table.expire == 10
    clock.now += 10
    assert table.get("dev") is None  # every process reads expire from the table's header
    store.close()


def test_a_resize_copies_the_entries_newest_last_and_keeps_live_counts() -> None:
    clock = Clock()
    store = owner(None, clock)
    table = store.table("cluster", StickConfig(size=100, expire=60), None)
    for i in range(40):
        table.put(f"dev{i}", "node1" if i % 2 else "node2")
        clock.now += 1
    table.connected("dev0")
    bigger = store.table("cluster", StickConfig(size=1000, expire=60), table)
    assert bigger is not table and len(bigger) == 40
    assert [bigger.get(f"dev{i}") for i in range(4)] == ["node2", "node1", "node2", "node1"]
    assert bigger.entry("dev0").live == 1  # still connected: it must not expire
    smaller = store.table("cluster", StickConfig(size=8, expire=60), bigger)
    assert len(smaller) == 8
    assert smaller.get("dev0") == "node2"  # live entries are never the ones dropped
    assert sum(smaller.get(f"dev{i}") is not None for i in range(33, 40)) >= 4  # newest stay
    store.close()


def test_files_survive_a_restart_whose_live_counts_are_gone(tmp_path, caplog) -> None:
    clock = Clock()
    store = owner(str(tmp_path), clock)
    table = store.table("cluster", StickConfig(size=100, expire=60), None)
    table.put("idle", "node1")
    table.put("online", "node2")
    table.connected("online")
    clock.now += 3600  # ``online`` is still connected when the process dies
    store.close()  # as exiting does: the file stays, and so do the live counts in it
    caplog.set_level(logging.INFO, "fastmqtt.stick")

    clock.now += 1
    again = owner(str(tmp_path), clock)
    table = again.table("cluster", StickConfig(size=100, expire=60), None)
    assert "cluster.stick: 1 entries kept from the last run" in caplog.text
    entry = table.entry("online")
    assert (entry.live, entry.expires_in) == (0, 60.0)  # idle from the restart on
    assert table.get("idle") is None  # it had expired meanwhile
    again.close()


def test_a_second_owner_of_the_same_file_is_refused(tmp_path) -> None:
    first = owner(str(tmp_path), Clock())
    first.table("cluster", StickConfig(size=10, expire=60), None)
    with pytest.raises(stick_file.InUse, match="in use by another process"):
        owner(str(tmp_path), Clock()).table("cluster", StickConfig(size=10, expire=60), None)
    first.close()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b"NOTSTICK" + b[8:], "not a fastmqtt stick table"),
        (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], "layout version 99"),
        (lambda b: b[: len(b) // 2], "its header describes another size"),
    ],
    ids=["magic", "version", "truncated"],
)
def test_a_file_that_is_no_usable_table_is_replaced_with_a_log_line(
    tmp_path, caplog, damage, why
) -> None:
    path = tmp_path / "cluster.stick"
    first = owner(str(tmp_path), Clock())
    first.table("cluster", StickConfig(size=10, expire=60), None).put("dev", "node1")
    first.close()
    path.write_bytes(damage(path.read_bytes()))
    caplog.set_level(logging.WARNING, "fastmqtt.stick")

    again = owner(str(tmp_path), Clock())
    table = again.table("cluster", StickConfig(size=10, expire=60), None)
    assert why in caplog.text and "starting an empty stick table" in caplog.text
    assert len(table) == 0 and table.get("dev") is None
    again.close()


def test_a_worker_follows_the_supervisors_file_across_a_resize(tmp_path) -> None:
    clock = Clock()
    supervisor = owner(str(tmp_path), clock)
    supervisor._own("cluster", StickConfig(size=100, expire=60))
    worker = StickStore(str(tmp_path), 2, 1, owner=False, clock=clock)
    table = worker.table("cluster", StickConfig(size=100, expire=60), None)
    table.put("dev", "node1")
    table.connected("dev")
    assert worker.table("cluster", StickConfig(size=100, expire=60), table) is table

    supervisor._own("cluster", StickConfig(size=500, expire=60))  # a reload resized it
    moved = worker.table("cluster", StickConfig(size=500, expire=60), table)
    assert moved is not table and moved.get("dev") == "node1"
    moved.disconnected("dev")  # its column came along: worker 1's connection ends here
    assert moved.entry("dev").live == 0
    supervisor.close()


def test_the_supervisor_takes_back_a_dead_workers_connections(tmp_path) -> None:
    clock = Clock()
    supervisor = owner(str(tmp_path), clock)
    supervisor.sync(_config({"cluster": StickConfig(size=100, expire=60), "plain": None}))
    assert sorted(os.listdir(tmp_path)) == ["cluster.stick"]
    worker = StickStore(str(tmp_path), 2, 1, owner=False, clock=clock)
    table = worker.table("cluster", StickConfig(size=100, expire=60), None)
    table.put("dev", "node1")
    table.connected("dev")
    supervisor.recover_worker(1, 0)
    assert table.entry("dev").live == 0
    supervisor.sync(_config({}))  # stickiness switched off: its file goes
    assert os.listdir(tmp_path) == []
    supervisor.close()


def test_a_worker_without_its_supervisors_file_keeps_a_table_of_its_own(tmp_path, caplog) -> None:
    worker = StickStore(str(tmp_path), 2, 1, owner=False, clock=Clock())
    table = worker.table("cluster", StickConfig(size=10, expire=60), None)
    table.put("dev", "node1")
    assert table.get("dev") == "node1"
    assert "not shared" in caplog.text


def _config(sticks: dict[str, StickConfig | None]):
    from fastmqtt.config import BackendConfig, Config, Defaults, GlobalConfig

    backends = {name: BackendConfig(name=name, stick=stick) for name, stick in sticks.items()}
    return Config("lb.toml", GlobalConfig(workers=2), Defaults(), (), backends, None)
