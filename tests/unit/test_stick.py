"""Stick table semantics, driven by a hand-advanced clock, over the compiled table and its
plain-Python twin."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from tests.support.twins import Implementation

from fastmqtt import stick_file
from fastmqtt.stick import StickTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def impl(implementation: Implementation) -> ModuleType:
    """The stick table module under test (compiled, then the twin)."""
    return implementation.stick


Make = Callable[..., StickTable]


@pytest.fixture
def make(impl: ModuleType) -> Make:
    """``make(size, expire, clock)``: a private table of the implementation under test."""

    def new(size: int, expire: float, clock: Clock) -> StickTable:
        file = stick_file.create(None, size, round(expire * 1000), 1, 0, impl=impl)
        return StickTable(size, expire, clock, file=file)

    return new


def test_put_get_and_follow_the_client(make: Make, clock: Clock) -> None:
    t = make(10, 60, clock)
    assert t.get("dev") is None
    t.put("dev", "node1")
    assert t.get("dev") == "node1"
    t.put("dev", "node2")  # node1 was down: the entry follows the client
    assert t.get("dev") == "node2"
    assert len(t) == 1


def test_full_client_id_is_the_key(make: Make, clock: Clock) -> None:
    t = make(10, 60, clock)
    prefix = "x" * 32
    t.put(prefix + "-sensor-a", "node1")
    t.put(prefix + "-sensor-b", "node2")
    assert t.get(prefix + "-sensor-a") == "node1"
    assert t.get(prefix + "-sensor-b") == "node2"
    assert t.get(prefix) is None


def test_empty_client_id_is_never_stuck(make: Make, clock: Clock) -> None:
    t = make(10, 60, clock)
    with pytest.raises(ValueError):
        t.put("", "node1")
    assert t.get("") is None
    t.connected("")
    t.disconnected("")
    assert len(t) == 0


def test_idle_entry_expires_after_expire(make: Make, clock: Clock) -> None:
    t = make(10, 60, clock)
    t.put("dev", "node1")
    clock.now += 59.9
    assert t.get("dev") == "node1"  # get does not refresh the expiry...
    clock.now += 0.1
    assert t.get("dev") is None  # ...so it expires 60 s after the put
    assert len(t) == 0


def test_never_expires_while_connected_and_counts_from_disconnect(make: Make, clock: Clock) -> None:
    t = make(10, 60, clock)
    t.put("dev", "node1")
    t.connected("dev")
    clock.now += 10 * 3600  # HAProxy would have expired a 30 s..30 min entry long ago
    assert t.purge() == 0
    assert t.get("dev") == "node1"
    t.disconnected("dev")
    clock.now += 59
    assert t.get("dev") == "node1"
    clock.now += 1
    assert t.get("dev") is None


def test_live_connections_are_counted(make: Make, clock: Clock) -> None:
    t = make(10, 60, clock)
    t.put("dev", "node1")
    t.connected("dev")
    t.connected("dev")  # a takeover: the new connection arrives before the old one closes
    t.disconnected("dev")
    clock.now += 3600
    assert t.get("dev") == "node1"  # one connection still live
    t.disconnected("dev")
    clock.now += 60
    assert t.get("dev") is None


def test_unknown_keys_are_ignored(make: Make, clock: Clock) -> None:
    t = make(10, 60, clock)
    t.connected("ghost")
    t.disconnected("ghost")
    t.put("dev", "node1")
    t.disconnected("dev")  # no connection was live: nothing to decrement
    assert len(t) == 1


def test_size_evicts_least_recently_used(make: Make, clock: Clock) -> None:
    t = make(3, 60, clock)
    for key in ("a", "b", "c"):
        t.put(key, "node1")
        clock.now += 1
    t.put("a", "node2")  # refreshes a
    t.put("d", "node1")  # b is now the least recently used
    assert t.get("b") is None
    assert [t.get(k) for k in "acd"] == ["node2", "node1", "node1"]
    assert len(t) == 3


def test_size_spares_entries_with_live_connections(make: Make, clock: Clock) -> None:
    t = make(2, 60, clock)
    t.put("old", "node1")
    t.connected("old")
    t.put("mid", "node1")
    t.put("new", "node2")  # "old" is older, but its client is connected
    assert t.get("old") == "node1"
    assert t.get("mid") is None
    t.connected("new")
    t.put("newest", "node3")  # the only entry without a live connection is the new one
    assert t.get("newest") is None
    assert (t.get("old"), t.get("new")) == ("node1", "node2")
    assert len(t) == 2


def test_purge_drops_only_expired(make: Make, clock: Clock) -> None:
    t = make(100, 60, clock)
    for i in range(10):
        t.put(f"k{i}", "node1")
        if i == 0:
            t.connected("k0")
        clock.now += 10
    assert t.purge() == 4  # k1..k4 are 60 s or more past their put; k0 is connected
    assert len(t) == 6
    assert t.purge(clock.now + 1000) == 5
    assert [t.get(f"k{i}") for i in range(10)].count("node1") == 1


def test_forget_server(make: Make, clock: Clock) -> None:
    t = make(100, 60, clock)
    t.put("a", "node1")
    t.put("b", "node2")
    t.put("c", "node1")
    t.connected("c")
    assert t.forget_server("node1") == 2
    assert (t.get("a"), t.get("b"), t.get("c")) == (None, "node2", None)
    t.disconnected("c")  # the old connection ends later: harmless
    assert len(t) == 1


@pytest.mark.parametrize(("size", "expire"), [(0, 60), (10, -1)])
def test_rejects_bad_settings(size: int, expire: float) -> None:
    with pytest.raises(ValueError):
        StickTable(size, expire)
