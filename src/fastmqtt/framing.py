"""Where MQTT packets end in a relayed byte stream, without keeping the bytes.

A drain must not cut a packet in half: fastmqtt sends its own DISCONNECT to a client only
between two packets of the broker's stream. Only fixed headers are read; bodies are skipped
by length, so following a stream costs one step per packet, not per byte.
"""

from __future__ import annotations

from fastmqtt.errors import MalformedPacket
from fastmqtt.mqtt_spec import BAD_REMAINING_LENGTH, VARINT_MAX_BYTES


def packet_at(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """(offset of the body, its length) of the packet whose fixed header starts at ``pos``
    in ``buf[:end]``; (-1, 0) while its remaining length is incomplete. MalformedPacket when
    that length runs over 4 bytes."""
    length, i = 0, pos + 1
    while i < end and i <= pos + VARINT_MAX_BYTES:
        digit = buf[i]
        length |= (digit & 0x7F) << (7 * (i - pos - 1))
        i += 1
        if digit < 0x80:
            return i, length
    if i > pos + VARINT_MAX_BYTES:
        raise MalformedPacket(BAD_REMAINING_LENGTH, i - 1)
    return -1, 0


class PacketBoundary:
    """Follows packet boundaries of one direction of an MQTT connection."""

    __slots__ = ("_header", "_left", "_length", "_shift")

    def __init__(self) -> None:
        self._left = 0  # body bytes of the current packet not yet seen
        self._header = 0  # fixed-header bytes seen of the next packet (0 = between packets)
        self._length = 0
        self._shift = 0

    @property
    def at_boundary(self) -> bool:
        return self._header == 0 and self._left == 0

    def feed(self, data: bytes | bytearray | memoryview, stop_at_boundary: bool = False) -> int:
        """Follow ``data``; return how many bytes were taken: all of them, or with
        ``stop_at_boundary`` only up to the first packet end inside ``data`` (or 0 when the
        stream is between packets already)."""
        i, n = 0, len(data)
        while i < n:
            if stop_at_boundary and self.at_boundary:
                return i
            if self._left:
                step = min(self._left, n - i)
                self._left -= step
                i += step
            elif self._header == 0:  # packet type and flags
                self._header, self._length, self._shift = 1, 0, 0
                i += 1
            else:  # one byte of the remaining length
                byte = data[i]
                i += 1
                self._length |= (byte & 0x7F) << self._shift
                self._shift += 7
                self._header += 1
                if not byte & 0x80 or self._header == 5:  # a malformed length ends it too
                    self._left, self._header = self._length, 0
        return i
