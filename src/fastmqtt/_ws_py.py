"""WebSocket frame header reader and unmasking: the plain-Python twin of ``_ws.pyx``.

Same names, same order, same verdicts: the hypothesis tests hold them together.
"""

from __future__ import annotations

from fastmqtt import ws_spec as spec
from fastmqtt.errors import MalformedPacket

Buffer = bytes | bytearray | memoryview
# (fin, opcode, mask key or b"", payload length, header length)
FrameHeader = tuple[bool, int, bytes, int, int]


def parse_frame_header(data: Buffer, pos: int = 0, masked: bool = True) -> FrameHeader | None:
    """The frame header at ``data[pos:]``, or None when it has not fully arrived.

    ``masked``: frames from a client must be masked, frames from a server must not.
    Raises ``MalformedPacket(reason, offset)`` with ``offset`` relative to ``data``.
    """
    view = memoryview(data)
    if pos < 0 or len(view) - pos < 2:
        return None
    b0, b1 = view[pos], view[pos + 1]
    opcode = b0 & 0x0F
    if b0 & 0x70:
        raise MalformedPacket(spec.RESERVED_BITS, pos)
    if opcode not in spec.DATA_OPCODES and opcode not in spec.CONTROL_OPCODES:
        raise MalformedPacket(spec.BAD_OPCODE, pos)
    fin = bool(b0 & 0x80)
    if opcode >= spec.CONTROL and not fin:
        raise MalformedPacket(spec.CONTROL_FRAGMENTED, pos)
    if bool(b1 & 0x80) != masked:
        raise MalformedPacket(spec.MASK_EXPECTED if masked else spec.MASK_UNEXPECTED, pos + 1)
    length = b1 & 0x7F
    at = pos + 2
    if length == 126:
        if len(view) - at < 2:
            return None
        length = int.from_bytes(view[at : at + 2], "big")
        at += 2
    elif length == 127:
        if len(view) - at < 8:
            return None
        length = int.from_bytes(view[at : at + 8], "big")
        if length > spec.MAX_PAYLOAD:
            raise MalformedPacket(spec.LENGTH_TOO_LARGE, at)
        at += 8
    if opcode >= spec.CONTROL and length > spec.MAX_CONTROL_PAYLOAD:
        raise MalformedPacket(spec.CONTROL_TOO_LONG, pos + 1)
    mask = b""
    if masked:
        if len(view) - at < 4:
            return None
        mask = bytes(view[at : at + 4])
        at += 4
    return fin, opcode, mask, length, at - pos


def unmask(data: Buffer, mask: bytes, phase: int = 0) -> bytes:
    """``data`` XOR the 4-byte ``mask`` (which also masks); ``phase`` is the offset of
    ``data[0]`` within its frame's payload, modulo 4, for payloads that arrive in pieces."""
    if len(mask) != 4:
        raise ValueError("a mask key is 4 bytes")
    n = len(data)
    if not n:
        return b""
    phase &= 3
    key = (mask[phase:] + mask[:phase]) * (n // 4 + 1)
    # one big-integer XOR is much faster in CPython than a per-byte loop
    out = int.from_bytes(data, "little") ^ int.from_bytes(key[:n], "little")
    return out.to_bytes(n, "little")
