"""Micro-benchmarks of the shared stick table, Cython against its plain-Python twin.

    pytest bench/bench_stick.py --benchmark-only --benchmark-group-by=group

Each group holds the C and the Python version of one operation on a populated table of the
recipe's size (100k entries, 2 workers), so the table shows the ratio directly. The C figures
include one Python call (about 40 ns); the engine calls the same functions from C.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest

from fastmqtt import _stick_py, stick_file
from fastmqtt.stick import StickTable

CLIENT_ID = b"factory-7/line-3/plc-000123-4f9a"  # a realistic 32-byte MQTT client id
LONG_ID = b"x" * 65_000  # the longest a CONNECT of max_connect_size carries
NOW = 10_000_000
SIZE = 100_000


@pytest.fixture(params=[importlib.import_module("fastmqtt._stick"), _stick_py], ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


@pytest.fixture
def table(impl: ModuleType) -> Iterator:
    """A table of SIZE entries, 80% full, as after a day of devices coming and going."""
    file = stick_file.create(None, SIZE, 1_800_000, 2, 0, impl=impl)
    t = file.table
    for i in range(SIZE * 8 // 10):
        t.put(t.digest(f"device-{i:06d}".encode()), i % 3 + 1, NOW)
    t.put(t.digest(CLIENT_ID), 2, NOW)
    yield t
    del t
    file.close()


@pytest.mark.benchmark(group="digest (32-byte client id)")
def test_digest(benchmark, table) -> None:
    benchmark(table.digest, CLIENT_ID)


@pytest.mark.benchmark(group="digest (65,000-byte client id)")
def test_digest_long(benchmark, table) -> None:
    benchmark(table.digest, LONG_ID)


@pytest.mark.benchmark(group="get (hit, 80% full table)")
def test_get_hit(benchmark, table) -> None:
    digest = table.digest(CLIENT_ID)
    assert table.get(digest, NOW) == 2
    benchmark(table.get, digest, NOW)


@pytest.mark.benchmark(group="get (miss, 80% full table)")
def test_get_miss(benchmark, table) -> None:
    digest = table.digest(b"never-seen")
    benchmark(table.get, digest, NOW)


@pytest.mark.benchmark(group="put (existing entry: the client moved)")
def test_put_existing(benchmark, table) -> None:
    digest = table.digest(CLIENT_ID)
    benchmark(table.put, digest, 3, NOW)


@pytest.mark.benchmark(group="put (new entry)")
def test_put_new(benchmark, table) -> None:
    digests = iter([table.digest(f"new-{i}".encode()) for i in range(200_000)])
    benchmark.pedantic(lambda: table.put(next(digests), 1, NOW), rounds=2000, iterations=50)


@pytest.mark.benchmark(group="connected + disconnected (one session's accounting)")
def test_connected_disconnected(benchmark, table) -> None:
    digest = table.digest(CLIENT_ID)

    def session() -> None:
        table.connected(digest, NOW)
        table.disconnected(digest, NOW)

    benchmark(session)


@pytest.mark.benchmark(group="StickTable.get(str): digest + lookup + name (selected impl)")
def test_front_get(benchmark) -> None:
    sticks = StickTable(SIZE, 1800)
    sticks.put(CLIENT_ID.decode(), "emqx-2")
    benchmark(sticks.get, CLIENT_ID.decode())
    sticks.close()
