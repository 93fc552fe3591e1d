"""Micro-benchmarks of the WebSocket frame code, Cython (`_ws`) against its twin (`_ws_py`).

    pytest bench/bench_ws.py --benchmark-only

One group per operation and size, so each pair of rows gives the C/Python ratio. The bridge
reads one header per frame and unmasks every payload byte a client sends.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest
from tests.support.twins import Implementation

from fastmqtt import packets
from fastmqtt.websocket import FrameDecoder, encode_frame

pytestmark = pytest.mark.benchmark(min_time=0.0005, warmup=True)

MASK = b"\x37\xfa\x21\x3d"


@pytest.fixture
def ws_impl(implementation: Implementation) -> ModuleType:
    return implementation.ws


@pytest.mark.parametrize("size", [20, 126, 70000], ids=["7-bit", "16-bit", "64-bit"])
def test_parse_frame_header(benchmark, ws_impl: ModuleType, size: int) -> None:
    benchmark.group = f"parse_frame_header: {size}-byte payload, masked"
    header = encode_frame(0x2, bytes(size), MASK)[:14]
    parse = ws_impl.parse_frame_header
    assert benchmark(parse, header, 0, True)[3] == size


@pytest.mark.parametrize("size", [64, 1024, 65536], ids=["64B", "1KiB", "64KiB"])
def test_unmask(benchmark, ws_impl: ModuleType, size: int) -> None:
    benchmark.group = f"unmask: {size} bytes"
    data = os.urandom(size)
    unmask = ws_impl.unmask
    assert len(benchmark(unmask, data, MASK, 1)) == size


def test_decoder_feed_small_frames(benchmark) -> None:
    """The bridge's per-chunk work: 100 frames of one small PUBLISH each (selected impl)."""
    benchmark.group = "FrameDecoder.feed: 100 small frames"
    publish = packets.publish("a/b", b"hello!")
    chunk = encode_frame(0x2, publish, MASK) * 100
    decoder = FrameDecoder(masked=True)
    assert benchmark(decoder.feed, chunk)[0] == publish * 100
