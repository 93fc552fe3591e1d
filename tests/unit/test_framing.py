"""PacketBoundary follows MQTT packet ends in a stream cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmqtt import packets as writers
from fastmqtt.errors import MalformedPacket
from fastmqtt.framing import PacketBoundary, packet_at
from fastmqtt.mqtt_spec import BAD_REMAINING_LENGTH
from fastmqtt.packets import varint

packets = st.lists(
    st.tuples(st.integers(0x10, 0xFF), st.binary(max_size=300)).map(
        lambda p: bytes([p[0]]) + varint(len(p[1])) + p[1]
    ),
    min_size=1,
    max_size=12,
)


def _ends(stream_packets: list[bytes]) -> set[int]:
    ends, total = set(), 0
    for packet in stream_packets:
        total += len(packet)
        ends.add(total)
    return ends


@given(packets, st.lists(st.integers(1, 400), max_size=30))
def test_boundaries_are_found_whatever_the_chunking(stream_packets, cuts):
    stream = b"".join(stream_packets)
    ends = _ends(stream_packets)
    framer, pos = PacketBoundary(), 0
    for size in [*cuts, len(stream)]:
        chunk = stream[pos : pos + size]
        assert framer.feed(chunk) == len(chunk)
        pos += len(chunk)
        assert framer.at_boundary == (pos in ends)
        if pos == len(stream):
            break


@given(packets, st.integers(0, 2000))
def test_stop_at_boundary_cuts_at_the_first_packet_end(stream_packets, start):
    stream = b"".join(stream_packets)
    start = min(start, len(stream))
    framer = PacketBoundary()
    framer.feed(stream[:start])
    taken = framer.feed(stream[start:], stop_at_boundary=True)
    later_ends = sorted(e for e in _ends(stream_packets) | {0} if e >= start)
    expected = later_ends[0] - start if later_ends else len(stream) - start
    assert taken == expected
    assert framer.at_boundary


def test_a_zero_length_packet_is_whole_after_two_bytes():
    framer = PacketBoundary()
    assert framer.feed(b"\xd0") == 1 and not framer.at_boundary
    assert framer.feed(b"\x00") == 1 and framer.at_boundary


def test_packet_at_reads_one_fixed_header() -> None:
    publish = writers.publish("t", b"x" * 200)  # a two-byte remaining length
    assert packet_at(publish, 0, len(publish)) == (3, len(publish) - 3)
    stream = b"\x00" + publish
    assert packet_at(stream, 1, 3) == (-1, 0)  # the length's second byte has not arrived
    with pytest.raises(MalformedPacket) as caught:
        packet_at(b"\x30\xff\xff\xff\xff\x01", 0, 6)
    assert (caught.value.reason, caught.value.offset) == (BAD_REMAINING_LENGTH, 4)
