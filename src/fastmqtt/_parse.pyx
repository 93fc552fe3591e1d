# cython: language_level=3
"""MQTT CONNECT/CONNACK inspector, compiled.  ``_parse_py.py`` is its twin.

The walk runs in C without the GIL over a bounded cursor (see _parse.pxd);
the rules come from ``fastmqtt.mqtt_spec``, copied into C arrays below at
import.  Validation allocates nothing: the result objects keep one ``bytes``
copy of the packet plus the field offsets, and decode a field only when it is
read.  Functions appear in the same order as in the twin.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from fastmqtt import mqtt_spec as spec
from fastmqtt.errors import CLIENT_ID_FIELD, MalformedPacket

# --- rule tables, filled from mqtt_spec at import --------------------------------------------

cdef enum Wire:
    W_NONE = 0
    W_BYTE
    W_TWO_BYTE_INT
    W_FOUR_BYTE_INT
    W_VARINT
    W_UTF8
    W_BINARY
    W_UTF8_PAIR

cdef enum:
    MAX_NAMES = 4     # room for mqtt_spec.PROTOCOL_NAMES
    MAX_FOREIGN = 16  # room for mqtt_spec.FOREIGN_PROTOCOLS

cdef uint8_t _prop_wire[256]
cdef uint8_t _prop_contexts[256]
cdef bint _prop_repeatable[256]
cdef uint32_t _prop_min[256]
cdef uint32_t _prop_max[256]
cdef list _prop_keys = [None] * 256

cdef const uint8_t *_name_ptr[MAX_NAMES]
cdef Py_ssize_t _name_len[MAX_NAMES]
cdef uint32_t _name_levels[MAX_NAMES]  # bit (1 << level) per level the name may announce
cdef uint32_t _all_levels = 0
cdef int _name_count = 0

cdef const uint8_t *_foreign_ptr[MAX_FOREIGN]
cdef Py_ssize_t _foreign_len[MAX_FOREIGN]
cdef int _foreign_reason[MAX_FOREIGN]
cdef int _foreign_count = 0

cdef bint _connack_code_ok[2][256]  # [0]: 3.1/3.1.1 return codes, [1]: 5.0 reason codes

cdef uint32_t _connect_byte = spec.CONNECT_FIRST_BYTE
cdef uint32_t _connack_byte = spec.CONNACK_FIRST_BYTE
cdef uint32_t _bridge_bit = spec.BRIDGE_BIT
cdef uint32_t _fl_reserved = spec.FLAG_RESERVED
cdef uint32_t _fl_will = spec.FLAG_WILL
cdef uint32_t _fl_will_qos = spec.FLAG_WILL_QOS
cdef uint32_t _will_qos_shift = spec.WILL_QOS_SHIFT
cdef uint32_t _fl_will_retain = spec.FLAG_WILL_RETAIN
cdef uint32_t _fl_password = spec.FLAG_PASSWORD
cdef uint32_t _fl_username = spec.FLAG_USERNAME
cdef uint32_t _fl_clean_start = spec.FLAG_CLEAN_START
cdef uint32_t _ack_session_present = spec.CONNACK_SESSION_PRESENT
cdef uint32_t _ack_reserved = spec.CONNACK_RESERVED_FLAGS
cdef Py_ssize_t _ack_legacy_length = spec.CONNACK_LEGACY_LENGTH
cdef int _in_connect = spec.IN_CONNECT
cdef int _in_will = spec.IN_WILL
cdef int _in_connack = spec.IN_CONNACK
cdef int _level_5 = spec.LEVEL_5
cdef uint32_t _max_property_id = spec.MAX_PROPERTY_ID
cdef uint64_t _auth_method_bit = (<uint64_t>1) << spec.AUTHENTICATION_METHOD
cdef uint64_t _auth_data_bit = (<uint64_t>1) << spec.AUTHENTICATION_DATA

_WIRE = {
    spec.BYTE: W_BYTE,
    spec.TWO_BYTE_INT: W_TWO_BYTE_INT,
    spec.FOUR_BYTE_INT: W_FOUR_BYTE_INT,
    spec.VARINT: W_VARINT,
    spec.UTF8: W_UTF8,
    spec.BINARY: W_BINARY,
    spec.UTF8_PAIR: W_UTF8_PAIR,
}
_REASON_CODES = {
    spec.NOT_CONNECT: R_NOT_CONNECT,
    spec.NOT_CONNACK: R_NOT_CONNACK,
    spec.TLS_HANDSHAKE: R_TLS_HANDSHAKE,
    spec.HTTP_REQUEST: R_HTTP_REQUEST,
    spec.BAD_FIXED_HEADER_FLAGS: R_BAD_FIXED_HEADER_FLAGS,
    spec.BAD_REMAINING_LENGTH: R_BAD_REMAINING_LENGTH,
    spec.PACKET_TOO_LARGE: R_PACKET_TOO_LARGE,
    spec.LENGTH_MISMATCH: R_LENGTH_MISMATCH,
    spec.BAD_PROTOCOL_NAME: R_BAD_PROTOCOL_NAME,
    spec.BAD_PROTOCOL_VERSION: R_BAD_PROTOCOL_VERSION,
    spec.PROTOCOL_NAME_LEVEL_MISMATCH: R_PROTOCOL_NAME_LEVEL_MISMATCH,
    spec.RESERVED_FLAG: R_RESERVED_FLAG,
    spec.BAD_WILL_FLAGS: R_BAD_WILL_FLAGS,
    spec.BAD_WILL_QOS: R_BAD_WILL_QOS,
    spec.PASSWORD_WITHOUT_USERNAME: R_PASSWORD_WITHOUT_USERNAME,
    spec.BAD_UTF8: R_BAD_UTF8,
    spec.BAD_PROPERTY_LENGTH: R_BAD_PROPERTY_LENGTH,
    spec.BAD_PROPERTY: R_BAD_PROPERTY,
    spec.DUPLICATE_PROPERTY: R_DUPLICATE_PROPERTY,
    spec.PROPERTY_VALUE: R_PROPERTY_VALUE,
    spec.AUTH_DATA_WITHOUT_METHOD: R_AUTH_DATA_WITHOUT_METHOD,
    spec.BAD_REASON_CODE: R_BAD_REASON_CODE,
    spec.BAD_SESSION_PRESENT: R_BAD_SESSION_PRESENT,
}
cdef list _reason_words = [None] * R_COUNT
cdef list _pinned = []  # bytes objects whose buffers the C tables point into


cdef void _load_properties() except *:
    for p in spec.PROPERTIES:
        if not 0 < p.id <= spec.MAX_PROPERTY_ID:
            raise ValueError(f"property id {p.id} does not fit the 64-bit seen mask")
        _prop_wire[p.id] = _WIRE[p.wire_type]
        _prop_contexts[p.id] = p.contexts
        _prop_repeatable[p.id] = p.repeatable
        _prop_min[p.id] = p.minimum
        _prop_max[p.id] = p.maximum
        _prop_keys[p.id] = p.key


cdef const uint8_t *_pin(bytes b):
    _pinned.append(b)
    return <const uint8_t *>PyBytes_AS_STRING(b)


cdef void _load_names() except *:
    global _name_count, _all_levels
    for name, levels in spec.PROTOCOL_NAMES.items():
        _name_ptr[_name_count] = _pin(name)
        _name_len[_name_count] = len(name)
        _name_levels[_name_count] = sum(1 << level for level in levels)
        _all_levels |= _name_levels[_name_count]
        _name_count += 1


cdef void _load_foreign() except *:
    global _foreign_count
    for signature, word in spec.FOREIGN_PROTOCOLS:
        _foreign_ptr[_foreign_count] = _pin(signature)
        _foreign_len[_foreign_count] = len(signature)
        _foreign_reason[_foreign_count] = _REASON_CODES[word]
        _foreign_count += 1


cdef void _load_tables() except *:
    if set(_REASON_CODES.values()) != set(range(1, R_COUNT)):
        raise ValueError("every Reason code needs its word in mqtt_spec")
    for word, code in _REASON_CODES.items():
        _reason_words[code] = word
    if len(spec.PROTOCOL_NAMES) > MAX_NAMES or len(spec.FOREIGN_PROTOCOLS) > MAX_FOREIGN:
        raise ValueError("mqtt_spec tables outgrew the C arrays")
    _load_properties()
    _load_names()
    _load_foreign()
    for code in spec.CONNACK_RETURN_CODES_V3:
        _connack_code_ok[0][code] = True
    for code in spec.CONNACK_REASON_CODES_V5:
        _connack_code_ok[1][code] = True


_load_tables()
REASON_WORDS = tuple(_reason_words)  # by Reason code (_parse.pxd); 0 (R_OK) is None


# --- the walk (nogil) ------------------------------------------------------------------------

cdef int foreign_reason(const Cursor *c, uint32_t first, uint32_t expected) noexcept nogil:
    # Why a stream whose first byte is not <expected> is not the packet we wait for.
    # A TLS record (0x16) has the CONNECT type nibble, so foreign protocols come first.
    cdef int i
    if expected == _connect_byte:
        for i in range(_foreign_count):
            if cur_prefix_of(c, 0, _foreign_ptr[i], _foreign_len[i]):
                return _foreign_reason[i]
    if (first >> 4) == (expected >> 4):
        return R_BAD_FIXED_HEADER_FLAGS
    return R_NOT_CONNECT if expected == _connect_byte else R_NOT_CONNACK


cdef int read_fixed_header(Cursor *c, uint32_t expected, Py_ssize_t max_size,
                           Py_ssize_t *packet_length) noexcept nogil:
    # 1 when the whole packet is there, 0 when more bytes are needed, -1 when invalid.
    # Here the cursor ends where the arrived bytes end, so running out is "incomplete".
    cdef uint32_t first = 0
    cdef uint32_t remaining = 0
    if not cur_u8(c, &first):
        return 0
    if first != expected:
        cur_fail(c, foreign_reason(c, first, expected), 0)
        return -1
    if not cur_varint(c, &remaining, R_BAD_REMAINING_LENGTH):
        return 0 if c.reason == R_LENGTH_MISMATCH else -1
    packet_length[0] = c.pos + remaining
    if packet_length[0] > max_size:
        cur_fail(c, R_PACKET_TOO_LARGE, 1)
        return -1
    if packet_length[0] > c.end:
        return 0
    c.end = packet_length[0]  # from here on, running out is a length error
    return 1


cdef bint read_int(Cursor *c, int wire, uint32_t *value) noexcept nogil:
    if wire == W_BYTE:
        return cur_u8(c, value)
    if wire == W_TWO_BYTE_INT:
        return cur_u16(c, value)
    if wire == W_FOUR_BYTE_INT:
        return cur_u32(c, value)
    return cur_varint(c, value, R_PROPERTY_VALUE)


cdef bint read_property(Cursor *c, int context, uint64_t *seen) noexcept nogil:
    # One identifier + value; the id is a Variable Byte Integer, but every defined id
    # is below 0x80, so a first byte >= 0x80 is an unknown property either way.
    cdef Py_ssize_t at = c.pos
    cdef uint32_t pid = 0
    cdef uint32_t value = 0
    cdef uint64_t bit
    cdef Span s
    cdef int wire
    if not cur_u8(c, &pid):
        return False
    if pid > _max_property_id or not (_prop_contexts[pid] & context):
        return cur_fail(c, R_BAD_PROPERTY, at)
    bit = (<uint64_t>1) << pid
    if seen[0] & bit and not _prop_repeatable[pid]:
        return cur_fail(c, R_DUPLICATE_PROPERTY, at)
    seen[0] |= bit
    wire = _prop_wire[pid]
    if wire == W_UTF8:
        return cur_utf8(c, &s)
    if wire == W_BINARY:
        return cur_span(c, &s)
    if wire == W_UTF8_PAIR:
        return cur_utf8(c, &s) and cur_utf8(c, &s)
    if not read_int(c, wire, &value):
        return False
    if value < _prop_min[pid] or value > _prop_max[pid]:
        return cur_fail(c, R_PROPERTY_VALUE, at)
    return True


cdef bint walk_properties(Cursor *c, int context, Span *s, uint64_t *seen) noexcept nogil:
    # Property Length, then properties that must exactly fill it (5.0 sec 2.2.2.1).
    cdef uint32_t n = 0
    cdef Py_ssize_t at = c.pos
    cdef Py_ssize_t outer_end = c.end
    if not cur_varint(c, &n, R_BAD_PROPERTY_LENGTH):
        return False
    if c.end - c.pos < n:
        return cur_fail(c, R_LENGTH_MISMATCH, at)
    s.start = c.pos
    s.length = n
    c.end = c.pos + n
    while c.pos < c.end:
        if not read_property(c, context, seen):
            return False
    c.end = outer_end
    return True


cdef int protocol_name_index(const Cursor *c, const Span *name) noexcept nogil:
    cdef int i
    for i in range(_name_count):
        if cur_span_equals(c, name, _name_ptr[i], _name_len[i]):
            return i
    return -1


cdef bint read_protocol(Cursor *c, bint accept_bridge, ConnectScan *out) noexcept nogil:
    # Protocol Name and Level, which come as a pair (MQIsdp/3, MQTT/4, MQTT/5).
    cdef Py_ssize_t at = c.pos
    cdef uint32_t raw = 0
    cdef uint32_t level
    cdef int idx
    if not cur_span(c, &out.protocol_name):
        return False
    idx = protocol_name_index(c, &out.protocol_name)
    if idx < 0:
        return cur_fail(c, R_BAD_PROTOCOL_NAME, at)
    at = c.pos
    if not cur_u8(c, &raw):
        return False
    out.bridge = (raw & _bridge_bit) != 0
    level = raw & ~_bridge_bit
    out.protocol_version = <int>level
    if (out.bridge and not accept_bridge) or level > 31 or not (_all_levels >> level) & 1:
        return cur_fail(c, R_BAD_PROTOCOL_VERSION, at)
    if not (_name_levels[idx] >> level) & 1:
        return cur_fail(c, R_PROTOCOL_NAME_LEVEL_MISMATCH, at)
    return True


cdef bint read_flags(Cursor *c, ConnectScan *out) noexcept nogil:
    # Connect Flags (3.1.1 sec 3.1.2.3, 5.0 sec 3.1.2.3).
    cdef Py_ssize_t at = c.pos
    cdef uint32_t flags = 0
    cdef uint32_t qos
    if not cur_u8(c, &flags):
        return False
    out.flags = flags
    qos = (flags & _fl_will_qos) >> _will_qos_shift
    if flags & _fl_reserved:
        return cur_fail(c, R_RESERVED_FLAG, at)
    if not flags & _fl_will and (qos or flags & _fl_will_retain):
        return cur_fail(c, R_BAD_WILL_FLAGS, at)
    if qos == 3:
        return cur_fail(c, R_BAD_WILL_QOS, at)
    if (flags & _fl_password and not flags & _fl_username
            and out.protocol_version < _level_5):
        return cur_fail(c, R_PASSWORD_WITHOUT_USERNAME, at)
    return True


cdef bint read_connect_properties(Cursor *c, ConnectScan *out) noexcept nogil:
    cdef Py_ssize_t at = c.pos
    cdef uint64_t seen = 0
    if not walk_properties(c, _in_connect, &out.properties, &seen):
        return False
    if seen & _auth_data_bit and not seen & _auth_method_bit:
        return cur_fail(c, R_AUTH_DATA_WITHOUT_METHOD, at)
    return True


cdef bint read_payload(Cursor *c, ConnectScan *out) noexcept nogil:
    # Client Identifier, [Will Properties,] Will Topic, Will Payload, User Name,
    # Password, present as the flags say; they must end exactly where the packet does.
    cdef uint64_t seen = 0
    if not cur_utf8(c, &out.client_id):
        return False
    if out.flags & _fl_will:
        if (out.protocol_version >= _level_5
                and not walk_properties(c, _in_will, &out.will_properties, &seen)):
            return False
        if not cur_utf8(c, &out.will_topic) or not cur_span(c, &out.will_payload):
            return False
    if out.flags & _fl_username and not cur_utf8(c, &out.username):
        return False
    if out.flags & _fl_password and not cur_span(c, &out.password):
        return False
    if c.pos != c.end:
        return cur_fail(c, R_LENGTH_MISMATCH, c.pos)
    return True


cdef bint read_connect(Cursor *c, bint accept_bridge, ConnectScan *out) noexcept nogil:
    cdef uint32_t keepalive = 0
    if not read_protocol(c, accept_bridge, out) or not read_flags(c, out):
        return False
    if not cur_u16(c, &keepalive):
        return False
    out.keepalive = <int>keepalive
    if out.protocol_version >= _level_5 and not read_connect_properties(c, out):
        return False
    return read_payload(c, out)


cdef void connect_scan_reset(ConnectScan *out) noexcept nogil:
    out.packet_length = 0
    out.reason = R_OK
    out.offset = 0
    out.protocol_version = 0
    out.bridge = False
    out.flags = 0
    out.keepalive = 0
    out.protocol_name.start = -1
    out.properties.start = -1
    out.client_id.start = -1
    out.will_properties.start = -1
    out.will_topic.start = -1
    out.will_payload.start = -1
    out.username.start = -1
    out.password.start = -1


cdef int scan_result(int rc, const Cursor *c, int *reason, Py_ssize_t *offset) noexcept nogil:
    if rc < 0:
        reason[0] = c.reason
        offset[0] = c.err_at
    return rc


cdef int connect_scan(const uint8_t *p, Py_ssize_t n, Py_ssize_t max_size,
                      bint accept_bridge, ConnectScan *out) noexcept nogil:
    cdef Cursor c
    cdef int rc
    connect_scan_reset(out)
    cur_init(&c, p, n)
    rc = read_fixed_header(&c, _connect_byte, max_size, &out.packet_length)
    if rc > 0 and not read_connect(&c, accept_bridge, out):
        rc = -1
    return scan_result(rc, &c, &out.reason, &out.offset)


cdef bint connect_peek(const uint8_t *p, Py_ssize_t n, uint32_t *level,
                       Py_ssize_t *client_id_at) noexcept nogil:
    # What an invalid CONNECT shows of its protocol level (with the bridge bit) and of where
    # its client id's length field is (the twin: _parse_py.connect_peek).
    cdef Cursor c
    cdef uint32_t first = 0
    cdef uint32_t remaining = 0
    cdef uint32_t name = 0
    cdef uint32_t props = 0
    cur_init(&c, p, n)
    if n < 2 or not cur_u8(&c, &first) or first != _connect_byte:
        return False
    if not cur_varint(&c, &remaining, R_BAD_REMAINING_LENGTH) or not cur_u16(&c, &name):
        return False
    if c.end - c.pos <= name:
        return False
    c.pos += name
    cur_u8(&c, level)
    c.pos += 3  # flags and keepalive, whether present or not
    client_id_at[0] = c.pos
    if (level[0] & ~_bridge_bit) == <uint32_t>_level_5:
        if cur_varint(&c, &props, R_BAD_PROPERTY_LENGTH):
            client_id_at[0] = c.pos + props
        else:
            client_id_at[0] = n  # unknown: never "inside" it
    return True


cdef bint connect_refusal_facts(const uint8_t *p, Py_ssize_t n, Py_ssize_t offset,
                                uint32_t *level, bint *in_client_id) noexcept nogil:
    # What answering an invalid CONNECT needs (access.malformed_answer): its protocol level,
    # bridge bit included, and whether <offset> lies inside its client id; False when no
    # level shows.  The length field is read through the cursor (it may lie past the end).
    cdef Cursor c
    cdef Py_ssize_t at = 0
    cdef uint32_t length = 0
    if not connect_peek(p, n, level, &at):
        return False
    cur_init(&c, p, n)
    c.pos = at
    in_client_id[0] = (cur_u16(&c, &length)
                       and at + 2 <= offset < at + 2 + <Py_ssize_t>length)
    return True


cdef bint read_connack(Cursor *c, int protocol_version, ConnackScan *out) noexcept nogil:
    # Acknowledge Flags, Return/Reason Code, and for 5.0 properties.  A 2-byte
    # CONNACK to a 5.0 client is a 3.1.1 broker refusing the level: read it as 3.1.1.
    cdef Py_ssize_t at = c.pos
    cdef bint v5 = protocol_version >= _level_5 and c.end - c.pos != _ack_legacy_length
    cdef uint32_t flags = 0
    cdef uint32_t code = 0
    cdef uint64_t seen = 0
    if not cur_u8(c, &flags) or not cur_u8(c, &code):
        return False
    out.flags = flags
    out.reason_code = <int>code
    if flags & _ack_reserved:
        return cur_fail(c, R_RESERVED_FLAG, at)
    if not _connack_code_ok[v5][code]:
        return cur_fail(c, R_BAD_REASON_CODE, at + 1)
    if flags & _ack_session_present and code != 0:
        return cur_fail(c, R_BAD_SESSION_PRESENT, at)
    if v5 and not walk_properties(c, _in_connack, &out.properties, &seen):
        return False
    if c.pos != c.end:
        return cur_fail(c, R_LENGTH_MISMATCH, c.pos)
    return True


cdef int connack_scan(const uint8_t *p, Py_ssize_t n, Py_ssize_t max_size,
                      int protocol_version, ConnackScan *out) noexcept nogil:
    cdef Cursor c
    cdef int rc
    out.packet_length = 0
    out.reason = R_OK
    out.offset = 0
    out.flags = 0
    out.reason_code = 0
    out.properties.start = -1
    cur_init(&c, p, n)
    rc = read_fixed_header(&c, _connack_byte, max_size, &out.packet_length)
    if rc > 0 and not read_connack(&c, protocol_version, out):
        rc = -1
    return scan_result(rc, &c, &out.reason, &out.offset)


cdef Span property_span(const uint8_t *p, Span props, uint32_t wanted) noexcept nogil:
    # The value of property <wanted> in a property block that a scan already validated (for
    # the engine: a CONNACK's assigned client identifier, a CONNECT's session expiry).
    cdef Cursor c
    cdef Span none = Span(-1, 0)
    cdef Span t = Span(-1, 0)
    cdef uint32_t pid = 0
    cdef uint32_t value = 0
    cdef int wire
    if props.start < 0:
        return none
    cur_init(&c, p, props.start + props.length)
    c.pos = props.start
    while c.pos < c.end:
        if not cur_u8(&c, &pid):
            break
        wire = _prop_wire[pid]
        if wire == W_UTF8 or wire == W_BINARY:
            if not cur_span(&c, &t):
                break
            if pid == wanted:
                return t
        elif wire == W_UTF8_PAIR:
            if not (cur_span(&c, &t) and cur_span(&c, &t)):
                break
        else:
            t.start = c.pos
            if wire == W_NONE or not read_int(&c, wire, &value):
                break
            if pid == wanted:  # an integer property: its bytes, big-endian
                t.length = c.pos - t.start
                return t
    return none


# --- lazy decoding (with the GIL, only for fields someone reads) ------------------------------

cdef inline void _must(bint ok) except *:
    # Decoding re-reads bytes the scan already validated; failing here is a bug.
    if not ok:
        raise AssertionError("fastmqtt._parse: re-reading a validated packet failed")


cdef object _text(bytes raw, Span s):
    if s.start < 0:
        return None
    return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw) + s.start, s.length, NULL)


cdef object _blob(bytes raw, Span s):
    if s.start < 0:
        return None
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(raw) + s.start, s.length)


cdef object decode_value(Cursor *c, bytes raw, int wire):
    cdef Span s = Span(-1, 0)
    cdef Span t = Span(-1, 0)
    cdef uint32_t value = 0
    if wire == W_UTF8:
        _must(cur_span(c, &s))
        return _text(raw, s)
    if wire == W_BINARY:
        _must(cur_span(c, &s))
        return _blob(raw, s)
    if wire == W_UTF8_PAIR:
        _must(cur_span(c, &s) and cur_span(c, &t))
        return (_text(raw, s), _text(raw, t))
    _must(read_int(c, wire, &value))
    return value


cdef dict decode_properties(bytes raw, Span s):
    cdef dict props = {}
    cdef Cursor c
    cdef uint32_t pid = 0
    if s.start < 0:
        return props
    cur_init(&c, <const uint8_t *>PyBytes_AS_STRING(raw), s.start + s.length)
    c.pos = s.start
    while c.pos < c.end:
        _must(cur_u8(&c, &pid))
        key = _prop_keys[pid]
        value = decode_value(&c, raw, _prop_wire[pid])
        if _prop_repeatable[pid]:
            props.setdefault(key, []).append(value)
        else:
            props[key] = value
    return props


cdef bytes _packet_bytes(object data, const Py_buffer *view, Py_ssize_t length):
    # One private copy, so the result outlives a bytearray the caller reuses.
    if type(data) is bytes and view.len == length:
        return <bytes>data
    return PyBytes_FromStringAndSize(<const char *>view.buf, length)


@cython.final
@cython.freelist(64)
cdef class Connect:
    """A valid CONNECT: fields are decoded from the packet bytes when first read."""

    cdef bytes _raw
    cdef ConnectScan _scan

    def __cinit__(self):
        # Even an instance made by Connect.__new__ reads only inside its own bytes.
        self._raw = b""

    def __init__(self, *args, **kwargs):
        raise TypeError("Connect objects come from inspect_connect()")

    @staticmethod
    cdef Connect new(bytes raw, const ConnectScan *scan):
        cdef Connect self = Connect.__new__(Connect)
        self._raw = raw
        self._scan = scan[0]
        return self

    @property
    def packet_length(self):
        return self._scan.packet_length

    @property
    def protocol_name(self):
        return _text(self._raw, self._scan.protocol_name)

    @property
    def protocol_version(self):
        return self._scan.protocol_version

    @property
    def bridge(self):
        return self._scan.bridge

    @property
    def flags(self):
        return self._scan.flags

    @property
    def clean_start(self):
        return (self._scan.flags & _fl_clean_start) != 0

    @property
    def keepalive(self):
        return self._scan.keepalive

    @property
    def client_id(self):
        return _text(self._raw, self._scan.client_id)

    @property
    def username(self):
        return _text(self._raw, self._scan.username)

    @property
    def password(self):
        return _blob(self._raw, self._scan.password)

    @property
    def will_topic(self):
        return _text(self._raw, self._scan.will_topic)

    @property
    def will_payload(self):
        return _blob(self._raw, self._scan.will_payload)

    @property
    def will_qos(self):
        return (self._scan.flags & _fl_will_qos) >> _will_qos_shift

    @property
    def will_retain(self):
        return (self._scan.flags & _fl_will_retain) != 0

    @property
    def properties(self):
        return decode_properties(self._raw, self._scan.properties)

    @property
    def will_properties(self):
        return decode_properties(self._raw, self._scan.will_properties)

    def __repr__(self):
        return connect_repr(self)


@cython.final
@cython.freelist(8)
cdef class Connack:
    """A valid CONNACK: session present, return/reason code and 5.0 properties."""

    cdef bytes _raw
    cdef ConnackScan _scan

    def __cinit__(self):
        # Even an instance made by Connack.__new__ reads only inside its own bytes.
        self._raw = b""

    def __init__(self, *args, **kwargs):
        raise TypeError("Connack objects come from inspect_connack()")

    @staticmethod
    cdef Connack new(bytes raw, const ConnackScan *scan):
        cdef Connack self = Connack.__new__(Connack)
        self._raw = raw
        self._scan = scan[0]
        return self

    @property
    def packet_length(self):
        return self._scan.packet_length

    @property
    def session_present(self):
        return (self._scan.flags & _ack_session_present) != 0

    @property
    def reason_code(self):
        return self._scan.reason_code

    @property
    def properties(self):
        return decode_properties(self._raw, self._scan.properties)

    @property
    def assigned_client_identifier(self):
        return self.properties.get("assigned_client_identifier")

    @property
    def server_reference(self):
        return self.properties.get("server_reference")

    def __repr__(self):
        return (f"Connack(session_present={self.session_present}, "
                f"reason_code={self.reason_code}, properties={self.properties!r})")


def connect_repr(connect):
    """repr() of a Connect that never shows the password."""
    hidden = None if connect.password is None else "<hidden>"
    return (f"Connect(protocol_name={connect.protocol_name!r}, "
            f"protocol_version={connect.protocol_version}, bridge={connect.bridge}, "
            f"client_id={connect.client_id!r}, clean_start={connect.clean_start}, "
            f"keepalive={connect.keepalive}, username={connect.username!r}, "
            f"password={hidden}, will_topic={connect.will_topic!r}, "
            f"will_qos={connect.will_qos}, will_retain={connect.will_retain}, "
            f"packet_length={connect.packet_length})")


def inspect_connect(data, Py_ssize_t max_size=spec.DEFAULT_MAX_PACKET_SIZE,
                    bint accept_bridge=True):
    """Connect when data starts with a complete valid CONNECT, None when more bytes
    are needed; otherwise raises MalformedPacket(reason, offset)."""
    cdef Py_buffer view
    cdef ConnectScan scan
    cdef int rc
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        rc = connect_scan(<const uint8_t *>view.buf, view.len, max_size, accept_bridge, &scan)
        if rc > 0:
            return Connect.new(_packet_bytes(data, &view, scan.packet_length), &scan)
        if rc == 0:
            return None
        raise _connect_error(&scan, <const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef object _connect_error(const ConnectScan *scan, const uint8_t *p, Py_ssize_t n):
    cdef uint32_t level = 0
    cdef bint inside = False
    word = _reason_words[scan.reason]
    if not connect_refusal_facts(p, n, scan.offset, &level, &inside):
        return MalformedPacket(word, scan.offset)
    return MalformedPacket(word, scan.offset, level=level,
                           field=CLIENT_ID_FIELD if inside else None)


def inspect_connack(data, int protocol_version=4,
                    Py_ssize_t max_size=spec.DEFAULT_MAX_PACKET_SIZE):
    """Connack when data starts with a complete valid CONNACK for a client of
    <protocol_version>, None when more bytes are needed; else MalformedPacket."""
    cdef Py_buffer view
    cdef ConnackScan scan
    cdef int rc
    if protocol_version not in spec.PROTOCOL_LEVELS:
        raise ValueError(f"protocol_version must be one of {sorted(spec.PROTOCOL_LEVELS)}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        rc = connack_scan(<const uint8_t *>view.buf, view.len, max_size, protocol_version,
                          &scan)
        if rc > 0:
            return Connack.new(_packet_bytes(data, &view, scan.packet_length), &scan)
        if rc == 0:
            return None
        raise MalformedPacket(_reason_words[scan.reason], scan.offset)
    finally:
        PyBuffer_Release(&view)
