"""Balancing: the hash and Maglev table (both implementations) and every policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from types import ModuleType

import pytest
import xxhash
from tests.support.twins import Implementation

from fastmqtt import _accel, balance
from fastmqtt.balance import Balancer, make_balancer

EQUAL3 = ["node1", "node2", "node3"]
IDS = [f"device-{i:05d}".encode() for i in range(1500)]


@pytest.fixture
def impl(implementation: Implementation) -> ModuleType:
    return implementation.balance


def picks(b: Balancer, n: int, eligible: Sequence[bool] | None = None) -> list[int | None]:
    size = len(b.weights)
    ok = list(eligible) if eligible is not None else [True] * size
    return [b.pick(None, ok, [0] * size) for _ in range(n)]


def route(b: Balancer, keys: Sequence[bytes], eligible: Sequence[bool] | None = None) -> list:
    size = len(b.weights)
    ok = list(eligible) if eligible is not None else [True] * size
    return [b.pick(k, ok, [0] * size) for k in keys]


# -- the hash and the table, both implementations -----------------------------------


def test_selection_follows_accel() -> None:
    expected = "fastmqtt._balance_py" if _accel.NO_EXTENSIONS else "fastmqtt._balance"
    assert balance.hash64.__module__ == expected


@pytest.mark.parametrize("length", [0, 1, 3, 4, 7, 8, 31, 32, 33, 63, 64, 100, 1000])
def test_hash64_is_xxh64_seed0(impl: ModuleType, length: int) -> None:
    data = bytes((i * 37 + 11) & 0xFF for i in range(length))
    assert impl.hash64(data) == xxhash.xxh64_intdigest(data, seed=0)


def test_hash64_known_vector(impl: ModuleType) -> None:
    assert impl.hash64(b"") == 0xEF46DB3751D8E999  # xxHash's published empty-input value


def test_hash64_wants_bytes(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.hash64(bytearray(b"abc"))
    with pytest.raises(TypeError):
        impl.hash64(None)


@pytest.mark.parametrize(
    ("hashes", "weights", "size"),
    [
        ([1, 2], [1], 13),  # lengths differ
        ([1], [1], 12),  # not prime
        ([1], [1], 1),
        ([1], [-1], 13),
        ([1], [1.5], 13),
        ([-1], [1], 13),
        ([2**64], [1], 13),
    ],
)
def test_maglev_build_rejects(impl: ModuleType, hashes: list, weights: list, size: int) -> None:
    with pytest.raises(ValueError):
        impl.maglev_build(hashes, weights, size)


def test_maglev_table_is_built_not_constructed(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.MaglevTable()


def test_maglev_weights_fill_slots_in_proportion(impl: ModuleType) -> None:
    hashes = [impl.hash64(n.encode()) for n in EQUAL3]
    counts = impl.maglev_build(hashes, [5, 2, 3], 65537).counts()
    assert sum(counts) == 65537
    for got, weight in zip(counts, [5, 2, 3], strict=True):
        assert abs(got - 65537 * weight / 10) <= 2


def test_maglev_zero_weight_gets_no_slot_and_empty_table_finds_nothing(impl: ModuleType) -> None:
    hashes = [impl.hash64(n.encode()) for n in EQUAL3]
    assert impl.maglev_build(hashes, [1, 0, 1], 1009).counts()[1] == 0
    empty = impl.maglev_build(hashes, [0, 0, 0], 1009)
    assert empty.lookup(b"x") == -1
    assert empty.walk(5, b"\x01\x01\x01") == -1


def test_maglev_walk_skips_disallowed(impl: ModuleType) -> None:
    hashes = [impl.hash64(n.encode()) for n in EQUAL3]
    table = impl.maglev_build(hashes, [1, 1, 1], 101)
    entries = table.to_list()
    for slot in range(101):
        assert table.walk(slot, b"\x01\x01\x01") == entries[slot]
        assert table.walk(slot, b"\x00\x01\x00") == 1
        assert table.walk(slot, b"\x00") == -1  # positions beyond `allowed` are not allowed
    with pytest.raises(IndexError):
        table.walk(101, b"\x01")
    with pytest.raises(IndexError):
        table.entry(-1)


# -- roundrobin -----------------------------------------------------------------------


def test_roundrobin_quick_start_lands_4_3_3_in_order() -> None:
    got = picks(make_balancer("roundrobin", EQUAL3, [1, 1, 1]), 10)
    assert got == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert Counter(got) == {0: 4, 1: 3, 2: 3}


def test_roundrobin_weights_exact_per_cycle() -> None:
    b = make_balancer("roundrobin", EQUAL3, [5, 2, 3])
    got = picks(b, 1000)
    for cycle in range(0, 1000, 10):
        assert Counter(got[cycle : cycle + 10]) == {0: 5, 1: 2, 2: 3}
    assert got[:10] != sorted(got[:10])  # smooth: interleaved, not 5 in a row


def test_roundrobin_skips_ineligible_without_disturbing_others() -> None:
    b = make_balancer("roundrobin", EQUAL3, [5, 2, 3])
    got = picks(b, 800, eligible=[True, False, True])
    assert Counter(got) == {0: 500, 2: 300}
    # Back to eligible: proportions are exact again over whole cycles.
    assert Counter(picks(b, 1000)) == {0: 500, 1: 200, 2: 300}


def test_roundrobin_weight_zero_and_nothing_eligible() -> None:
    b = make_balancer("roundrobin", EQUAL3, [1, 1, 1])
    b.set_weights([1, 0, 1])
    assert set(picks(b, 10)) == {0, 2}
    assert picks(b, 2, eligible=[False, True, False]) == [None, None]


# -- leastconn ------------------------------------------------------------------------


def test_leastconn_picks_least_loaded() -> None:
    b = make_balancer("leastconn", EQUAL3, [1, 1, 1])
    assert b.pick(None, [True] * 3, [5, 2, 7]) == 1
    assert b.pick(None, [True, False, True], [5, 2, 7]) == 0


def test_leastconn_ties_rotate() -> None:
    b = make_balancer("leastconn", EQUAL3, [1, 1, 1])
    assert picks(b, 6) == [0, 1, 2, 0, 1, 2]


def test_leastconn_is_weighted() -> None:
    b = make_balancer("leastconn", ["a", "b"], [3, 1])
    active = [0, 0]
    for _ in range(400):
        active[b.pick(None, [True, True], active)] += 1
    assert active == [300, 100]


# -- random (power of two choices) --------------------------------------------------


def test_random_is_seeded_and_prefers_the_lighter() -> None:
    a = make_balancer("random", EQUAL3, [1, 1, 1], seed=7)
    b = make_balancer("random", EQUAL3, [1, 1, 1], seed=7)
    assert picks(a, 50) == picks(b, 50)
    # Server 0 loses against whichever other server it is drawn with.
    assert {a.pick(None, [True] * 3, [9, 0, 0]) for _ in range(50)} == {1, 2}


def test_random_shares_load_by_weight() -> None:
    b = make_balancer("random", ["a", "b", "c", "d"], [3, 1, 1, 1], seed=1)
    active = [0, 0, 0, 0]
    for _ in range(600):
        active[b.pick(None, [True] * 4, active)] += 1
    for got, want in zip(active, [300, 100, 100, 100], strict=True):
        assert abs(got - want) <= want * 0.15


def test_random_with_one_or_no_server() -> None:
    b = make_balancer("random", EQUAL3, [1, 1, 1], seed=1)
    assert set(picks(b, 10, eligible=[False, True, False])) == {1}
    assert picks(b, 1, eligible=[False] * 3) == [None]


# -- consistent -------------------------------------------------------------------------


def test_consistent_independent_instances_agree() -> None:
    a = make_balancer("consistent", EQUAL3, [1, 1, 1])
    b = make_balancer("consistent", EQUAL3, [1, 1, 1])
    first = route(a, IDS)
    assert first == route(b, IDS)
    assert set(first) == {0, 1, 2}


def test_consistent_ignores_server_list_order() -> None:
    a = make_balancer("consistent", EQUAL3, [1, 1, 1])
    b = make_balancer("consistent", EQUAL3[::-1], [1, 1, 1])
    names_a = [EQUAL3[i] for i in route(a, IDS)]
    names_b = [EQUAL3[::-1][i] for i in route(b, IDS)]
    assert names_a == names_b


_CHILD = """
import json, sys
from fastmqtt.balance import make_balancer
b = make_balancer("consistent", ["node1", "node2", "node3"], [1, 1, 1])
ids = [f"device-{i:05d}".encode() for i in range(1500)]
print(json.dumps([b.pick(k, [True] * 3, [0] * 3) for k in ids]))
"""


@pytest.mark.parametrize("seed", ["0", "4242"])
def test_consistent_same_in_another_process(seed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == route(make_balancer("consistent", EQUAL3, [1, 1, 1]), IDS)


def test_consistent_down_server_moves_only_its_keys() -> None:
    b = make_balancer("consistent", EQUAL3, [1, 1, 1])
    before = route(b, IDS)
    after = route(b, IDS, eligible=[True, False, True])
    moved = [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
    assert all(before[i] == 1 for i in moved)  # nobody else moved
    assert 1 not in after
    assert 0.25 < len(moved) / len(IDS) < 0.42  # about 1/3
    assert Counter(after[i] for i in moved).keys() == {0, 2}  # spread, not dumped on one
    assert route(b, IDS) == before  # back up: everyone returns


def test_consistent_removed_from_config_moves_about_a_third() -> None:
    before = route(make_balancer("consistent", EQUAL3, [1, 1, 1]), IDS)
    two = ["node1", "node3"]
    after = [two[i] for i in route(make_balancer("consistent", two, [1, 1]), IDS)]
    names = [EQUAL3[i] for i in before]
    others_moved = sum(1 for x, y in zip(names, after, strict=True) if x != "node2" and x != y)
    assert others_moved <= 3  # Maglev: near-minimal (~0.01% of keys expected)
    assert 0.25 < names.count("node2") / len(IDS) < 0.42


def test_consistent_is_weighted() -> None:
    b = make_balancer("consistent", EQUAL3, [5, 2, 3])
    keys = [f"client-{i}".encode() for i in range(20000)]
    got = Counter(route(b, keys))
    for server, weight in enumerate([5, 2, 3]):
        assert abs(got[server] / 20000 - weight / 10) < 0.02


def test_consistent_bounded_loads_cap_a_hot_key() -> None:
    factor = 1.25
    b = make_balancer("consistent", EQUAL3, [1, 1, 1], balance_factor=factor)
    active = [0, 0, 0]
    for _ in range(300):
        cap = -(-factor * (sum(active) + 1) // 3)
        server = b.pick(b"the-same-hot-id", [True] * 3, active)
        assert active[server] < cap
        active[server] += 1
    assert max(active) == 125 and min(active) > 0  # the home server stops at 1.25 x average
    unbounded = make_balancer("consistent", EQUAL3, [1, 1, 1])
    assert len(set(route(unbounded, [b"the-same-hot-id"] * 20))) == 1


def test_consistent_bounded_loads_are_deterministic() -> None:
    a = make_balancer("consistent", EQUAL3, [1, 1, 1], balance_factor=1.1)
    b = make_balancer("consistent", EQUAL3, [1, 1, 1], balance_factor=1.1)
    active = [40, 3, 3]
    assert [a.pick(k, [True] * 3, active) for k in IDS[:300]] == [
        b.pick(k, [True] * 3, active) for k in IDS[:300]
    ]
    assert 0 not in {a.pick(k, [True] * 3, active) for k in IDS[:300]}


def test_consistent_without_key_spreads_round_robin() -> None:
    b = make_balancer("consistent", EQUAL3, [1, 1, 1])
    assert picks(b, 6) == [0, 1, 2, 0, 1, 2]


def test_consistent_caches_tables_per_eligible_set() -> None:
    b = make_balancer("consistent", EQUAL3, [1, 1, 1], table_size=1009)
    down = [[True, True, True], [False, True, True], [True, False, True], [True, True, False]]
    for ok in down * 3:
        route(b, IDS[:50], eligible=ok)
    assert len(b._tables) == 4  # the full set plus one per down server, reused
    route(b, IDS[:50], eligible=[True, False, False])
    assert len(b._tables) == 5
    assert b.pick(b"x", [False] * 3, [0] * 3) is None


# -- construction errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("nope", EQUAL3, [1, 1, 1]), {}),
        (("roundrobin", EQUAL3, [1, 1]), {}),
        (("roundrobin", EQUAL3, [1, -1, 1]), {}),
        (("consistent", ["a", "a"], [1, 1]), {}),
        (("consistent", EQUAL3, [1, 1, 1]), {"balance_factor": 0.9}),
        (("consistent", EQUAL3, [1, 1, 1]), {"balance_factor": float("nan")}),
        (("consistent", EQUAL3, [1, 1, 1]), {"balance_factor": float("inf")}),
        (("consistent", EQUAL3, [1, 1, 1]), {"table_size": 1000}),
    ],
)
def test_make_balancer_rejects(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_balancer(*args, **kwargs).pick(b"k", [True] * len(args[1]), [0] * len(args[1]))


def test_pick_and_set_weights_check_lengths() -> None:
    b = make_balancer("leastconn", EQUAL3, [1, 1, 1])
    with pytest.raises(ValueError):
        b.pick(None, [True, True], [0, 0, 0])
    with pytest.raises(ValueError):
        b.set_weights([1, 1])
