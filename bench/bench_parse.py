"""Micro-benchmarks of the CONNECT inspector, Cython against its plain-Python twin.

    pytest bench/bench_parse.py --benchmark-only

One group per packet, so each table row pair gives the C/Python ratio directly.
The timed call is the whole Python-level call (buffer, validation, result object);
reading the client id is timed separately since the proxy does that too.
"""

from __future__ import annotations

import pytest
from tests.support.twins import Implementation
from tests.vectors import MINIMAL_311, V5_PROPS_WILL, connect_with_will_payload

# Many calls per timed round: one ~100 ns call alone is below the timer's resolution.
pytestmark = pytest.mark.benchmark(min_time=0.0005, warmup=True)

PACKETS = {
    "minimal 3.1.1 CONNECT (18 B)": bytes.fromhex(MINIMAL_311),
    "5.0 CONNECT, properties + will (154 B)": bytes.fromhex(V5_PROPS_WILL),
    "3.1.1 CONNECT, 1 KiB will payload": connect_with_will_payload(1024),
}


@pytest.mark.parametrize("group", list(PACKETS))
def test_inspect_connect(benchmark, implementation: Implementation, group: str) -> None:
    benchmark.group = f"inspect_connect: {group}"
    data = PACKETS[group]
    inspect = implementation.parse.inspect_connect
    assert benchmark(inspect, data).packet_length == len(data)


def test_inspect_connect_and_client_id(benchmark, implementation: Implementation) -> None:
    benchmark.group = "inspect_connect + client_id: minimal 3.1.1"
    data = PACKETS["minimal 3.1.1 CONNECT (18 B)"]
    inspect = implementation.parse.inspect_connect

    def route_key() -> str:
        return inspect(data).client_id

    assert benchmark(route_key) == "test"


def test_inspect_connect_incomplete(benchmark, implementation: Implementation) -> None:
    benchmark.group = "inspect_connect: half a 5.0 CONNECT (None)"
    data = bytes.fromhex(V5_PROPS_WILL)[:80]
    inspect = implementation.parse.inspect_connect
    assert benchmark(inspect, data) is None
