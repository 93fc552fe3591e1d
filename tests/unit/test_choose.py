"""The engine's server choice (_choose.pyx) against balance.py and backends.Backend.choose: the
same server for the same situation, whichever connection-setup path chooses."""

from __future__ import annotations

import collections
import socket
import time

from hypothesis import given
from hypothesis import strategies as st

from fastmqtt import _balance, _choose, _stick
from fastmqtt.balance import Consistent as _Consistent
from fastmqtt.balance import LeastConn, RoundRobin, server_id
from fastmqtt.fastpath import consistent_tables
from fastmqtt.stick_file import create as create_stick_file

UP, DOWN, DRAIN, MAINT = range(4)


class Consistent(_Consistent):
    """balance.Consistent over the compiled tables the engine copies (also in a run with
    FASTMQTT_NO_EXTENSIONS=1, where balance.py picks the twin)."""

    _hash = staticmethod(_balance.hash64)
    _build = staticmethod(_balance.maglev_build)


def make_pool(n: int, algorithm: str = "roundrobin", **kwargs: object):
    servers = [
        _choose.ServerRef(i + 1, socket.AF_INET, "127.0.0.1", 1000 + i, stick_id=server_id(f"s{i}"))
        for i in range(n)
    ]
    pool = _choose.PoolRef(1)
    pool.configure(algorithm, servers, **kwargs)
    return pool, servers


def update(pool, n: int, states=None, weights=None, maxconns=None, backups=None) -> None:
    pool.update(states or [UP] * n, weights or [1] * n, maxconns or [0] * n, backups or [False] * n)


def test_round_robin_lands_ten_clients_4_3_3() -> None:
    pool, _ = make_pool(3)
    assert collections.Counter(pool.pick(b"k") for _ in range(10)) == {0: 4, 1: 3, 2: 3}


@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=6).flatmap(
        lambda ws: st.tuples(
            st.just(ws), st.lists(st.lists(st.booleans(), min_size=len(ws), max_size=len(ws)))
        )
    )
)
def test_round_robin_is_balance_round_robin(case: tuple[list[int], list[list[bool]]]) -> None:
    """Same sequence as balance.RoundRobin, servers going down and up between picks."""
    weights, rounds = case
    n = len(weights)
    pool, _ = make_pool(n)
    update(pool, n, weights=weights)
    twin = RoundRobin(weights)
    for up in rounds:
        update(pool, n, states=[UP if ok else DOWN for ok in up], weights=weights)
        assert pool.pick(b"k") == twin.pick(None, up, [0] * n)


@given(
    st.lists(st.tuples(st.integers(1, 5), st.integers(0, 20)), min_size=1, max_size=6),
    st.integers(1, 20),
)
def test_least_conn_is_balance_least_conn(servers: list[tuple[int, int]], picks: int) -> None:
    """Same choices as balance.LeastConn, live counts coming from the event-loop path."""
    weights = [w for w, _ in servers]
    active = [a for _, a in servers]
    n = len(servers)
    pool, refs = make_pool(n, "leastconn")
    update(pool, n, weights=weights)
    twin = LeastConn(weights)
    for _ in range(picks):
        for ref, count in zip(refs, active, strict=True):
            ref.set_python_live(count)
        chosen = pool.pick(b"k")
        assert chosen == twin.pick(None, [True] * n, active)
        active[chosen] += 1


def test_random_spreads_by_weight_and_never_to_a_down_server() -> None:
    """Power of two choices as connections pile up: shares follow the weights."""
    pool, refs = make_pool(4, "random")
    update(pool, 4, states=[UP, UP, UP, DOWN], weights=[1, 2, 7, 9])
    live = [0] * 4
    for _ in range(3000):
        chosen = pool.pick(b"k")
        live[chosen] += 1
        refs[chosen].set_python_live(live[chosen])
    assert live[3] == 0
    for i, share in enumerate((0.1, 0.2, 0.7)):
        assert abs(live[i] / 3000 - share) < 0.03, live


@given(
    st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=5),
    st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=30),
)
def test_consistent_is_balance_consistent(
    servers: list[tuple[int, bool]], keys: list[bytes]
) -> None:
    """Maglev with the tables Python builds: every key maps to the server balance.Consistent
    gives it, with some servers down (the pushed tables match the eligible set)."""
    weights = [w for w, _ in servers]
    up = [ok for _, ok in servers]
    n = len(servers)
    names = [f"s{i}" for i in range(n)]
    twin = Consistent(names, weights, table_size=251)
    pool, _ = make_pool(n, "consistent")
    update(pool, n, states=[UP if ok else DOWN for ok in up], weights=weights)
    pool.set_tables(*consistent_tables(twin, weights, up, [False] * n, False))
    for key in keys:
        assert pool.pick(key) == twin.pick(key, up, [0] * n)


@given(st.lists(st.integers(0, 30), min_size=2, max_size=5), st.binary(min_size=1))
def test_bounded_loads_agree(active: list[int], key: bytes) -> None:
    n = len(active)
    names = [f"s{i}" for i in range(n)]
    twin = Consistent(names, [1] * n, balance_factor=1.25, table_size=251)
    pool, refs = make_pool(n, "consistent", factor=1.25)
    update(pool, n)
    pool.set_tables(*consistent_tables(twin, [1] * n, [True] * n, [False] * n, False))
    for ref, count in zip(refs, active, strict=True):
        ref.set_python_live(count)
    assert pool.pick(key) == twin.pick(key, [True] * n, active)


def test_backups_wait_for_every_primary_and_one_takes_over() -> None:
    pool, _ = make_pool(4)
    backups = [False, False, True, True]
    update(pool, 4, backups=backups)
    assert {pool.pick(b"k") for _ in range(10)} == {0, 1}
    update(pool, 4, states=[DOWN, MAINT, UP, UP], backups=backups)
    assert {pool.pick(b"k") for _ in range(10)} == {2}  # the first standby alone
    pool.configure("roundrobin", make_pool(4)[1], all_backups=True)
    update(pool, 4, states=[DOWN, DRAIN, UP, UP], backups=backups)
    assert {pool.pick(b"k") for _ in range(10)} == {2, 3}


def test_full_and_tried_servers_are_passed_over() -> None:
    pool, refs = make_pool(3)
    update(pool, 3, maxconns=[1, 0, 0])
    refs[0].set_python_live(1)  # the event-loop path holds node 0's one slot
    assert {pool.pick(b"k", tried=[1]) for _ in range(6)} == {2}
    assert pool.pick(b"k", tried=[1, 2]) is None
    assert pool.counters()[0] == 1  # no_server


def test_stick_table_entry_wins_while_its_server_can_take_the_client() -> None:
    pool, _ = make_pool(3)
    update(pool, 3)
    table = create_stick_file(None, 100, 60_000, workers=1, worker=0, impl=_stick).table
    pool.set_stick(table, "client_id")
    table.put(table.digest(b"dev-42"), server_id("s2"), time.monotonic_ns() // 1_000_000)
    assert [pool.pick(b"k", stick_key=b"dev-42") for _ in range(3)] == [2, 2, 2]
    update(pool, 3, states=[UP, UP, DOWN])
    assert pool.pick(b"k", stick_key=b"dev-42") != 2  # moved: the balancer chooses
    assert pool.pick(b"k", stick_key=b"") is not None  # empty ids are never stuck
    no_server, hits, misses, *_ = pool.counters()
    assert (no_server, hits, misses) == (0, 3, 1)
