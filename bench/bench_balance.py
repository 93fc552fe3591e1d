"""Micro-benchmarks of the balancer's hot paths, Cython against its plain-Python twin.

    pytest bench/bench_balance.py --benchmark-only --benchmark-group-by=group

Each group holds the C and the Python version of one operation, so the table shows
the ratio directly. Setup is outside the timed call.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from tests.support.twins import Implementation

from fastmqtt.balance import make_balancer

CLIENT_ID = b"factory-7/line-3/plc-000123-4f9a"  # a realistic 32-byte MQTT client id
NAMES = [f"emqx-{i}".encode() for i in range(3)]


@pytest.fixture
def impl(implementation: Implementation) -> ModuleType:
    return implementation.balance


@pytest.mark.benchmark(group="hash64 (32-byte client id)")
def test_hash64(benchmark, impl: ModuleType) -> None:
    benchmark(impl.hash64, CLIENT_ID)


@pytest.mark.benchmark(group="maglev lookup (hash + table)")
def test_maglev_lookup(benchmark, impl: ModuleType) -> None:
    table = impl.maglev_build([impl.hash64(n) for n in NAMES], [1, 1, 1], 65537)
    benchmark(table.lookup, CLIENT_ID)


@pytest.mark.benchmark(group="maglev build (65537 slots, 3 servers)")
def test_maglev_build_3(benchmark, impl: ModuleType) -> None:
    hashes = [impl.hash64(n) for n in NAMES]
    benchmark(impl.maglev_build, hashes, [5, 2, 3], 65537)


@pytest.mark.benchmark(group="maglev build (65537 slots, 100 servers)")
def test_maglev_build_100(benchmark, impl: ModuleType) -> None:
    hashes = [impl.hash64(f"node-{i}".encode()) for i in range(100)]
    benchmark.pedantic(impl.maglev_build, (hashes, [1] * 100, 65537), rounds=5, iterations=1)


@pytest.mark.benchmark(group="pick (whole policy, selected implementation)")
@pytest.mark.parametrize("algorithm", ["roundrobin", "leastconn", "random", "consistent"])
def test_pick(benchmark, algorithm: str) -> None:
    names = [n.decode() for n in NAMES]
    balancer = make_balancer(algorithm, names, [1, 1, 1], seed=1)
    eligible, active = [True, True, True], [10, 12, 11]
    benchmark(balancer.pick, CLIENT_ID, eligible, active)
