# cython: language_level=3
"""WebSocket frame header reader and unmasking, compiled.  ``_ws_py.py`` is its twin.

Every read of the header goes through the bounded cursor of _parse.pxd (checked first,
then read); running out of bytes means "incomplete", never a read past the end.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fastmqtt._parse cimport Cursor, cur_init, cur_u8, cur_u16, cur_u32

from fastmqtt import ws_spec as spec
from fastmqtt.errors import MalformedPacket

cdef uint32_t _control = spec.CONTROL
cdef uint32_t _max_control = spec.MAX_CONTROL_PAYLOAD
cdef uint64_t _max_payload = spec.MAX_PAYLOAD


cdef inline bint _known_opcode(uint32_t opcode) noexcept nogil:
    return opcode <= 0x2 or 0x8 <= opcode <= 0xA


def parse_frame_header(data, Py_ssize_t pos=0, bint masked=True):
    """(fin, opcode, mask key or b"", payload length, header length) of the frame at
    data[pos:], or None when it has not fully arrived; raises MalformedPacket."""
    cdef Py_buffer view
    cdef Cursor c
    cdef uint32_t b0 = 0, b1 = 0, hi = 0, lo = 0, length = 0
    cdef uint64_t length64 = 0
    cdef const uint8_t *mask_at = NULL
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if pos < 0 or pos > view.len:
            return None
        cur_init(&c, <const uint8_t *>view.buf + pos, view.len - pos)
        if not cur_u8(&c, &b0) or not cur_u8(&c, &b1):
            return None
        if b0 & 0x70:
            raise MalformedPacket(spec.RESERVED_BITS, pos)
        if not _known_opcode(b0 & 0x0F):
            raise MalformedPacket(spec.BAD_OPCODE, pos)
        if (b0 & 0x0F) >= _control and not (b0 & 0x80):
            raise MalformedPacket(spec.CONTROL_FRAGMENTED, pos)
        if ((b1 & 0x80) != 0) != masked:
            raise MalformedPacket(spec.MASK_EXPECTED if masked else spec.MASK_UNEXPECTED,
                                  pos + 1)
        length64 = b1 & 0x7F
        if length64 == 126:
            if not cur_u16(&c, &length):
                return None
            length64 = length
        elif length64 == 127:
            if not cur_u32(&c, &hi) or not cur_u32(&c, &lo):
                return None
            length64 = (<uint64_t>hi << 32) | lo
            if length64 > _max_payload:
                raise MalformedPacket(spec.LENGTH_TOO_LARGE, pos + c.pos - 8)
        if (b0 & 0x0F) >= _control and length64 > _max_control:
            raise MalformedPacket(spec.CONTROL_TOO_LONG, pos + 1)
        mask = b""
        if masked:
            if c.end - c.pos < 4:
                return None
            mask_at = c.p + c.pos
            mask = PyBytes_FromStringAndSize(<const char *>mask_at, 4)
            c.pos += 4
        return bool(b0 & 0x80), <int>(b0 & 0x0F), mask, length64, c.pos
    finally:
        PyBuffer_Release(&view)


def unmask(data, bytes mask, Py_ssize_t phase=0):
    """data XOR the 4-byte mask; phase is data[0]'s offset within its frame payload."""
    cdef Py_buffer view
    cdef Py_ssize_t i = 0
    cdef const uint8_t *src
    cdef uint8_t *dst
    cdef const uint8_t *key
    cdef uint8_t k[8]
    cdef uint64_t k64, word
    cdef int j
    if len(mask) != 4:
        raise ValueError("a mask key is 4 bytes")
    key = <const uint8_t *>PyBytes_AS_STRING(mask)
    for j in range(8):  # the key rotated to phase, twice: k[i & 3] masks byte i
        k[j] = key[(j + phase) & 3]
    memcpy(&k64, k, 8)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, view.len)
        src = <const uint8_t *>view.buf
        dst = <uint8_t *>PyBytes_AS_STRING(out)
        with nogil:
            # both buffers hold view.len bytes; 8 at a time through memcpy (no aliasing casts)
            while view.len - i >= 8:
                memcpy(&word, src + i, 8)
                word ^= k64
                memcpy(dst + i, &word, 8)
                i += 8
            while i < view.len:
                dst[i] = src[i] ^ k[i & 3]
                i += 1
        return out
    finally:
        PyBuffer_Release(&view)
