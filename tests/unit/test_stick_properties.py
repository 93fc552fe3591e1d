"""Differential properties: the compiled stick table ``_stick`` and its twin ``_stick_py``
agree. Same layout, the same digest (both equal hashlib's keyed BLAKE2b), and for the same
random sequence of operations the same answers and the same bytes in the table."""

from __future__ import annotations

import hashlib
import mmap
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.twins import Implementation, compiled, twin

from fastmqtt import stick_file

c = compiled("stick")
py = twin("stick")
both = pytest.mark.skipif(c is None, reason="FASTMQTT_NO_EXTENSIONS=1, no compiled module")
KEY = bytes(range(16))


@pytest.fixture(scope="module")
def impl(implementation: Implementation) -> ModuleType:
    """The stick table module under test (compiled, then the twin)."""
    return implementation.stick


def table(impl: ModuleType, size: int, workers: int = 1, expire_ms: int = 60_000):
    return stick_file.create(None, size, expire_ms, workers, 0, key=KEY, impl=impl)


@both
def test_layouts_agree() -> None:
    assert c.LAYOUT == py.LAYOUT
    assert (c.MAGIC, c.VERSION, c.BYTE_ORDER_MARK) == (py.MAGIC, py.VERSION, py.BYTE_ORDER_MARK)
    for size in (1, 2, 7, 8, 9, 100, 100_000, 10_000_000):
        for workers in (1, 2, 3, 64):
            assert c.geometry(size, workers) == py.geometry(size, workers)
            ways, nbuckets = c.geometry(size, workers)
            assert c.table_bytes(ways, nbuckets, workers) == py.table_bytes(ways, nbuckets, workers)
            assert ways * nbuckets >= size > ways * (nbuckets - 1)


@given(st.binary(max_size=700), st.binary(min_size=16, max_size=16))
def test_digest_is_keyed_blake2b(impl: ModuleType, key: bytes, secret: bytes) -> None:
    file = stick_file.create(None, 8, 1000, 1, 0, key=secret, impl=impl)
    try:
        want = hashlib.blake2b(key, key=secret, digest_size=16).digest()
        assert file.table.digest(key) == want
    finally:
        file.close()


@pytest.mark.parametrize("length", [0, 127, 128, 129, 256, 65_000])
def test_digest_block_edges(impl: ModuleType, length: int) -> None:
    file = table(impl, 8)
    key = bytes(i % 251 for i in range(length))
    assert file.table.digest(key) == hashlib.blake2b(key, key=KEY, digest_size=16).digest()
    file.close()


# One step of a random history: (operation, key index, server or worker, milliseconds later).
OPS = ("put",) * 5 + ("connected", "disconnected", "get") * 2  # the common ones, more often
OPS += ("remove", "peek", "forget", "purge", "count", "recover", "entries", "expire", "load")
steps = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.integers(0, 23),
        st.integers(0, 3),
        st.sampled_from([0] * 6 + [1, 999, 30_000, 59_999, 60_000, 100_000]),  # ties, expiry
    ),
    min_size=10,
    max_size=150,
)


def run(impl: ModuleType, size: int, workers: int, history: list) -> tuple[list, bytes]:
    """Play ``history`` on a new table; returns every answer and the table's bytes."""
    file = table(impl, size, workers)
    views = [impl.Table(file.mapping, file.fd, w) for w in range(workers)]
    digests = [file.table.digest(f"client-{i}".encode()) for i in range(24)]
    now = 1_000_000
    answers: list = []
    for op, k, arg, later in history:
        now += later
        t = views[arg % workers]
        d = digests[k]
        if op == "put":
            answers.append(t.put(d, arg, now))
        elif op == "connected":
            answers.append(t.connected(d, now))
        elif op == "disconnected":
            answers.append(t.disconnected(d, now))
        elif op == "remove":
            answers.append(t.remove(d))
        elif op == "get":
            answers.append(t.get(d, now))
        elif op == "peek":
            answers.append(t.peek(d, now))
        elif op == "forget":
            answers.append(t.forget_server(arg, now))
        elif op == "purge":
            answers.append(t.purge(now, k % 5, arg or None))
        elif op == "count":
            answers.append(t.count(now))
        elif op == "recover":
            answers.append(t.recover_worker(arg % workers, 0, now))
        elif op == "entries":
            answers.append(t.entries(now))
        elif op == "expire":
            file.set_expire(later * 3)
        elif op == "load":
            answers.append(t.load(d, arg, now - later, [k % 3] * workers, now))
    data = bytes(file.mapping)
    del views
    file.close()
    return answers, data


@both
@settings(max_examples=300)
@given(st.one_of(st.integers(1, 4), st.integers(1, 40)), st.integers(1, 3), steps)
def test_same_history_same_answers_same_bytes(size: int, workers: int, history: list) -> None:
    assert run(c, size, workers, history) == run(py, size, workers, history)


def test_bad_arguments(impl: ModuleType) -> None:
    file = table(impl, 8)
    t = file.table
    with pytest.raises(ValueError):
        t.get(b"short", 0)
    with pytest.raises(TypeError):
        t.digest("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.recover_worker(1, 0, 0)
    with pytest.raises(IndexError):
        t.hold_for_test(t.nbuckets)
    assert t.put(t.digest(b"x"), 0, 0) is False  # server 0 means "none"
    with pytest.raises(ValueError):
        impl.Table(file.mapping, file.fd, 1)  # one worker: column 0 only
    file.close()


def test_a_mapping_shorter_than_its_header_says_is_refused(impl: ModuleType) -> None:
    file = table(impl, 1000)
    with mmap.mmap(-1, file.length // 2) as short:
        short[:4096] = file.mapping[:4096]
        with pytest.raises(ValueError, match="holds"):
            impl.Table(short, file.fd, 0)
    file.close()
