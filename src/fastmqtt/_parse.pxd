# cython: language_level=3
"""C-level surface of the CONNECT/CONNACK inspector.

Other Cython modules (the WebSocket frame code, the listener fast path)
``cimport`` the bounded cursor and ``connect_scan`` from here.  Every read of
untrusted bytes goes through the ``cur_*`` readers: each checks first that the
bytes are there, then reads, then advances (HAProxy's mqtt_read_* contract).
"""

from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcmp


# Reason codes; fastmqtt.mqtt_spec holds the matching words (mapped in _parse.pyx).
cdef enum Reason:
    R_OK = 0
    R_NOT_CONNECT
    R_NOT_CONNACK
    R_TLS_HANDSHAKE
    R_HTTP_REQUEST
    R_BAD_FIXED_HEADER_FLAGS
    R_BAD_REMAINING_LENGTH
    R_PACKET_TOO_LARGE
    R_LENGTH_MISMATCH
    R_BAD_PROTOCOL_NAME
    R_BAD_PROTOCOL_VERSION
    R_PROTOCOL_NAME_LEVEL_MISMATCH
    R_RESERVED_FLAG
    R_BAD_WILL_FLAGS
    R_BAD_WILL_QOS
    R_PASSWORD_WITHOUT_USERNAME
    R_BAD_UTF8
    R_BAD_PROPERTY_LENGTH
    R_BAD_PROPERTY
    R_DUPLICATE_PROPERTY
    R_PROPERTY_VALUE
    R_AUTH_DATA_WITHOUT_METHOD
    R_BAD_REASON_CODE
    R_BAD_SESSION_PRESENT
    R_COUNT


cdef struct Cursor:
    const uint8_t *p     # first byte of the packet; offsets below are relative to it
    Py_ssize_t pos       # next byte to read
    Py_ssize_t end       # one past the last byte this cursor may read
    int reason           # first error met (R_OK while none)
    Py_ssize_t err_at    # offset of that error


cdef struct Span:
    Py_ssize_t start     # offset in the packet; -1 when the field is absent
    Py_ssize_t length


cdef struct ConnectScan:
    Py_ssize_t packet_length  # bytes the CONNECT occupies (forward exactly these)
    int reason                # when connect_scan returned -1
    Py_ssize_t offset         # when connect_scan returned -1
    int protocol_version      # 3, 4 or 5 (bridge bit removed)
    bint bridge
    uint32_t flags            # Connect Flags byte
    int keepalive
    Span protocol_name
    Span properties           # 5.0 property bytes, after their length
    Span client_id
    Span will_properties
    Span will_topic
    Span will_payload
    Span username
    Span password


cdef struct ConnackScan:
    Py_ssize_t packet_length
    int reason
    Py_ssize_t offset
    uint32_t flags            # Connect Acknowledge Flags byte
    int reason_code
    Span properties


# --- the bounded cursor ---------------------------------------------------------------------

cdef inline void cur_init(Cursor *c, const uint8_t *p, Py_ssize_t n) noexcept nogil:
    c.p = p
    c.pos = 0
    c.end = n
    c.reason = R_OK
    c.err_at = 0


cdef inline bint cur_fail(Cursor *c, int reason, Py_ssize_t at) noexcept nogil:
    c.reason = reason
    c.err_at = at
    return False


cdef inline bint cur_need(Cursor *c, Py_ssize_t k) noexcept nogil:
    # The one bounds check every reader starts with.
    if c.end - c.pos < k:
        return cur_fail(c, R_LENGTH_MISMATCH, c.pos)
    return True


cdef inline bint cur_u8(Cursor *c, uint32_t *v) noexcept nogil:
    if not cur_need(c, 1):
        return False
    v[0] = c.p[c.pos]
    c.pos += 1
    return True


cdef inline bint cur_u16(Cursor *c, uint32_t *v) noexcept nogil:
    # Two Byte Integer, big-endian (5.0 sec 1.5.2)
    if not cur_need(c, 2):
        return False
    v[0] = (<uint32_t>c.p[c.pos] << 8) | c.p[c.pos + 1]
    c.pos += 2
    return True


cdef inline bint cur_u32(Cursor *c, uint32_t *v) noexcept nogil:
    # Four Byte Integer, big-endian (5.0 sec 1.5.3)
    if not cur_need(c, 4):
        return False
    v[0] = ((<uint32_t>c.p[c.pos] << 24) | (<uint32_t>c.p[c.pos + 1] << 16)
            | (<uint32_t>c.p[c.pos + 2] << 8) | c.p[c.pos + 3])
    c.pos += 4
    return True


cdef inline bint cur_varint(Cursor *c, uint32_t *v, int too_long) noexcept nogil:
    # Variable Byte Integer (5.0 sec 1.5.5): at most 4 bytes; a continuation bit on
    # the 4th byte fails with <too_long> at that byte.  Non-minimal encodings pass,
    # as in HAProxy and Mosquitto.
    cdef uint32_t b = 0
    cdef uint32_t value = 0
    cdef int i
    for i in range(4):
        if not cur_u8(c, &b):
            return False
        value |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            v[0] = value
            return True
    return cur_fail(c, too_long, c.pos - 1)


cdef inline bint cur_span(Cursor *c, Span *s) noexcept nogil:
    # Two-byte length then that many bytes (Binary Data / UTF-8 string body); a
    # length pointing past the end is blamed on the length field.
    cdef Py_ssize_t at = c.pos
    cdef uint32_t n = 0
    if not cur_u16(c, &n):
        return False
    if c.end - c.pos < n:
        return cur_fail(c, R_LENGTH_MISMATCH, at)
    s.start = c.pos
    s.length = n
    c.pos += n
    return True


cdef inline bint cur_prefix_of(const Cursor *c, Py_ssize_t at, const uint8_t *s,
                               Py_ssize_t k) noexcept nogil:
    # Whether the bytes from <at> to the end (at most k of them) start s[0:k].
    cdef Py_ssize_t m = c.end - at
    if at < 0 or m <= 0:
        return False
    if m > k:
        m = k
    return memcmp(c.p + at, s, <size_t>m) == 0


cdef inline bint cur_span_equals(const Cursor *c, const Span *s, const uint8_t *t,
                                 Py_ssize_t k) noexcept nogil:
    # Whether a span the cursor already proved in bounds holds exactly t[0:k].
    return s.length == k and memcmp(c.p + s.start, t, <size_t>k) == 0


cdef inline Py_ssize_t utf8_error(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    # Index of the first byte of the first ill-formed sequence or U+0000 in s[0:n]
    # (Unicode 15 table 3-7: no overlongs, no surrogates, nothing above U+10FFFF),
    # or -1 when all of it is well-formed.  The caller proved s[0:n] is in bounds.
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t k
    cdef uint8_t b, lo, hi
    cdef Py_ssize_t need
    while i < n:
        b = s[i]
        if b < 0x80:
            if b == 0:
                return i
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if b < 0xC2:
            return i
        elif b < 0xE0:
            need = 1
        elif b < 0xF0:
            need = 2
            if b == 0xE0:
                lo = 0xA0
            elif b == 0xED:
                hi = 0x9F
        elif b < 0xF5:
            need = 3
            if b == 0xF0:
                lo = 0x90
            elif b == 0xF4:
                hi = 0x8F
        else:
            return i
        if n - i <= need or s[i + 1] < lo or s[i + 1] > hi:
            return i
        for k in range(2, need + 1):
            if s[i + k] < 0x80 or s[i + k] > 0xBF:
                return i
        i += need + 1
    return -1


cdef inline bint cur_utf8(Cursor *c, Span *s) noexcept nogil:
    # UTF-8 Encoded String (5.0 sec 1.5.4): a span whose bytes must be well-formed.
    cdef Py_ssize_t bad
    if not cur_span(c, s):
        return False
    bad = utf8_error(c.p + s.start, s.length)
    if bad >= 0:
        return cur_fail(c, R_BAD_UTF8, s.start + bad)
    return True


# --- the hot entries ------------------------------------------------------------------------

# 1: complete valid CONNECT (fields in *out); 0: need more bytes; -1: invalid
# (out.reason, out.offset).  p[0:n] is what has arrived so far.
cdef int connect_scan(const uint8_t *p, Py_ssize_t n, Py_ssize_t max_size,
                      bint accept_bridge, ConnectScan *out) noexcept nogil

# What an invalid CONNECT shows (access.malformed_connack's view): its protocol level, bridge
# bit included, and the offset of its client id's length field; False when no level shows.
cdef bint connect_peek(const uint8_t *p, Py_ssize_t n, uint32_t *level,
                       Py_ssize_t *client_id_at) noexcept nogil

# The same, reduced to what a refusal needs: the level, and whether <offset> (the scan's
# error) lies inside the client id (MalformedPacket.level and .field).
cdef bint connect_refusal_facts(const uint8_t *p, Py_ssize_t n, Py_ssize_t offset,
                                uint32_t *level, bint *in_client_id) noexcept nogil

cdef int connack_scan(const uint8_t *p, Py_ssize_t n, Py_ssize_t max_size,
                      int protocol_version, ConnackScan *out) noexcept nogil

# The value span of the UTF-8 or binary property <wanted> in a validated property block
# (p is the packet the scan read); start -1 when absent.
cdef Span property_span(const uint8_t *p, Span props, uint32_t wanted) noexcept nogil
