"""Differential properties: the Cython ``_balance`` and its twin ``_balance_py`` agree.

Same hashes (and both equal the xxhash package), same tables, same lookups and walks,
the same picks from the consistent-hash policy, and the same exception type for bad input.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.twins import compiled, twin

from fastmqtt.balance import Consistent

c = compiled("balance")
py = twin("balance")
pytestmark = pytest.mark.skipif(c is None, reason="FASTMQTT_NO_EXTENSIONS=1, no compiled module")

PRIMES = [2, 3, 5, 7, 13, 31, 101, 257, 1009, 4099]
u64 = st.integers(0, 2**64 - 1)
servers = st.lists(st.tuples(u64, st.integers(0, 12)), max_size=8)


def outcome(fn: Callable[[], object]) -> object:
    """The result, or the exception type: what both implementations must share."""
    try:
        return fn()
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        return type(exc)


@given(st.binary(max_size=300))
def test_hash64_same_everywhere(key: bytes) -> None:
    assert c.hash64(key) == py.hash64(key) == xxhash.xxh64_intdigest(key)


@settings(max_examples=200)
@given(servers, st.sampled_from(PRIMES))
def test_tables_identical(spec: list[tuple[int, int]], size: int) -> None:
    hashes, weights = [h for h, _ in spec], [w for _, w in spec]
    tc, tp = c.maglev_build(hashes, weights, size), py.maglev_build(hashes, weights, size)
    assert tc.to_list() == tp.to_list()
    assert tc.counts() == tp.counts()
    assert (tc.size, tc.servers) == (tp.size, tp.servers)


@given(servers, st.sampled_from(PRIMES), st.lists(st.binary(max_size=40), max_size=20))
def test_lookups_identical(spec: list[tuple[int, int]], size: int, keys: list[bytes]) -> None:
    hashes, weights = [h for h, _ in spec], [w for _, w in spec]
    tc, tp = c.maglev_build(hashes, weights, size), py.maglev_build(hashes, weights, size)
    assert [tc.lookup(k) for k in keys] == [tp.lookup(k) for k in keys]


@given(
    servers,
    st.sampled_from(PRIMES),
    st.integers(-3, 5000),
    st.binary(max_size=10),
)
def test_walks_and_entries_identical(
    spec: list[tuple[int, int]], size: int, slot: int, allowed: bytes
) -> None:
    hashes, weights = [h for h, _ in spec], [w for _, w in spec]
    tc, tp = c.maglev_build(hashes, weights, size), py.maglev_build(hashes, weights, size)
    assert outcome(lambda: tc.walk(slot, allowed)) == outcome(lambda: tp.walk(slot, allowed))
    assert outcome(lambda: tc.entry(slot)) == outcome(lambda: tp.entry(slot))


@given(
    st.lists(st.one_of(u64, st.integers(-5, -1), st.just(2**64)), max_size=4),
    st.lists(st.one_of(st.integers(-2, 3), st.just(2**21), st.just(1.0)), max_size=4),
    st.integers(-2, 200),
)
def test_bad_builds_fail_alike(hashes: list, weights: list, size: int) -> None:
    def build(m: object) -> Callable[[], object]:
        return lambda: m.maglev_build(hashes, weights, size).to_list()

    assert outcome(build(c)) == outcome(build(py))


@given(st.one_of(st.none(), st.text(max_size=5), st.binary().map(bytearray), st.integers()))
def test_non_bytes_keys_fail_alike(key: object) -> None:
    assert outcome(lambda: c.hash64(key)) is outcome(lambda: py.hash64(key)) is TypeError


class PyConsistent(Consistent):
    _hash = staticmethod(py.hash64)
    _build = staticmethod(py.maglev_build)


class CConsistent(Consistent):
    _hash = staticmethod(c.hash64) if c is not None else None
    _build = staticmethod(c.maglev_build) if c is not None else None


@settings(max_examples=150)
@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(0, 6)), max_size=6).filter(
        lambda s: len({n for n, _ in s}) == len(s)
    ),
    st.sampled_from([101, 1009]),
    st.one_of(st.none(), st.floats(1.0, 3.0)),
    st.data(),
)
def test_picks_identical(
    spec: list[tuple[str, int]], size: int, factor: float | None, data: st.DataObject
) -> None:
    names, weights = [n for n, _ in spec], [w for _, w in spec]
    pc = CConsistent(names, weights, factor, size)
    pp = PyConsistent(names, weights, factor, size)
    for _ in range(5):
        eligible = data.draw(st.lists(st.booleans(), min_size=len(spec), max_size=len(spec)))
        active = data.draw(st.lists(st.integers(0, 50), min_size=len(spec), max_size=len(spec)))
        key = data.draw(st.one_of(st.none(), st.binary(max_size=24)))
        assert pc.pick(key, eligible, active) == pp.pick(key, eligible, active)
