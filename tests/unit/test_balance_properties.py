"""Differential properties: the Cython ``_balance`` and its twin ``_balance_py`` agree.

Same hashes (and both equal the xxhash package), same tables, same lookups and walks,
and the same exception type for bad input.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_balance import compiled

from fastmqtt import _balance_py as py

c = compiled()
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
