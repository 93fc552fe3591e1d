"""MQTT CONNECT/CONNACK inspector in plain Python: the twin of ``_parse.pyx``.

Same functions, same names, same order as the compiled module (the cursor
readers come first, as they do in ``_parse.pxd``).  It is the fallback when
extensions are off, the oracle of the differential tests and the baseline of
the benchmarks, so it stays a faithful transcription rather than idiomatic
Python: readers return the value read, or None after recording the error.
"""

from __future__ import annotations

from typing import Any

from fastmqtt import mqtt_spec as spec
from fastmqtt.errors import CLIENT_ID_FIELD, MalformedPacket

Buffer = bytes | bytearray | memoryview
Span = tuple[int, int]  # (offset in the packet, length); None when the field is absent

_NAMES: tuple[tuple[bytes, frozenset[int]], ...] = tuple(
    (name, frozenset(levels)) for name, levels in spec.PROTOCOL_NAMES.items()
)
_ALL_LEVELS = frozenset(level for _, levels in _NAMES for level in levels)
_LONGEST_SIGNATURE = max(len(signature) for signature, _ in spec.FOREIGN_PROTOCOLS)

# --- the bounded cursor (in _parse.pxd for the compiled module) ---------------------------------


class Cursor:
    """Reads p[pos:end]; records the first error as (reason, err_at)."""

    __slots__ = ("end", "err_at", "p", "pos", "reason")

    def __init__(self, p: bytes, n: int) -> None:
        self.p = p
        self.pos = 0
        self.end = n
        self.reason = ""
        self.err_at = 0


def cur_fail(c: Cursor, reason: str, at: int) -> None:
    c.reason = reason
    c.err_at = at


def cur_need(c: Cursor, k: int) -> bool:
    # The one bounds check every reader starts with.
    if c.end - c.pos < k:
        cur_fail(c, spec.LENGTH_MISMATCH, c.pos)
        return False
    return True


def cur_u8(c: Cursor) -> int | None:
    if not cur_need(c, 1):
        return None
    c.pos += 1
    return c.p[c.pos - 1]


def cur_u16(c: Cursor) -> int | None:
    # Two Byte Integer, big-endian (5.0 sec 1.5.2)
    if not cur_need(c, 2):
        return None
    c.pos += 2
    return int.from_bytes(c.p[c.pos - 2 : c.pos], "big")


def cur_u32(c: Cursor) -> int | None:
    # Four Byte Integer, big-endian (5.0 sec 1.5.3)
    if not cur_need(c, 4):
        return None
    c.pos += 4
    return int.from_bytes(c.p[c.pos - 4 : c.pos], "big")


def cur_varint(c: Cursor, too_long: str) -> int | None:
    # Variable Byte Integer (5.0 sec 1.5.5): at most 4 bytes; a continuation bit on
    # the 4th byte fails with <too_long> at that byte.  Non-minimal encodings pass.
    value = 0
    for i in range(spec.VARINT_MAX_BYTES):
        b = cur_u8(c)
        if b is None:
            return None
        value |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return value
    cur_fail(c, too_long, c.pos - 1)
    return None


def cur_span(c: Cursor) -> Span | None:
    # Two-byte length then that many bytes (Binary Data / UTF-8 string body); a
    # length pointing past the end is blamed on the length field.
    at = c.pos
    n = cur_u16(c)
    if n is None:
        return None
    if c.end - c.pos < n:
        cur_fail(c, spec.LENGTH_MISMATCH, at)
        return None
    c.pos += n
    return (c.pos - n, n)


def cur_prefix_of(c: Cursor, at: int, s: bytes) -> bool:
    # Whether the bytes from <at> to the end (at most len(s) of them) start s.
    m = min(c.end - at, len(s))
    return at >= 0 and m > 0 and c.p[at : at + m] == s[:m]


def cur_span_equals(c: Cursor, s: Span, t: bytes) -> bool:
    return c.p[s[0] : s[0] + s[1]] == t


def utf8_error(s: bytes) -> int:
    # Index of the first byte of the first ill-formed sequence or U+0000, or -1.
    # Python's strict decoder rejects overlongs, surrogates and > U+10FFFF, and
    # reports the start of the offending sequence, as the C walker does.
    bad = s.find(0)
    try:
        s.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start if bad < 0 else min(bad, exc.start)
    return bad


def cur_utf8(c: Cursor) -> Span | None:
    # UTF-8 Encoded String (5.0 sec 1.5.4): a span whose bytes must be well-formed.
    s = cur_span(c)
    if s is None:
        return None
    bad = utf8_error(c.p[s[0] : s[0] + s[1]])
    if bad >= 0:
        cur_fail(c, spec.BAD_UTF8, s[0] + bad)
        return None
    return s


# --- the walk -----------------------------------------------------------------------------------


def foreign_reason(c: Cursor, first: int, expected: int) -> str:
    # A TLS record (0x16) has the CONNECT type nibble, so foreign protocols come first.
    if expected == spec.CONNECT_FIRST_BYTE:
        for signature, word in spec.FOREIGN_PROTOCOLS:
            if cur_prefix_of(c, 0, signature):
                return word
    if first >> 4 == expected >> 4:
        return spec.BAD_FIXED_HEADER_FLAGS
    return spec.NOT_CONNECT if expected == spec.CONNECT_FIRST_BYTE else spec.NOT_CONNACK


def read_fixed_header(c: Cursor, expected: int, max_size: int, out: Any) -> int:
    # 1 when the whole packet is there, 0 when more bytes are needed, -1 when invalid.
    # Here the cursor ends where the arrived bytes end, so running out is "incomplete".
    first = cur_u8(c)
    if first is None:
        return 0
    if first != expected:
        cur_fail(c, foreign_reason(c, first, expected), 0)
        return -1
    remaining = cur_varint(c, spec.BAD_REMAINING_LENGTH)
    if remaining is None:
        return 0 if c.reason == spec.LENGTH_MISMATCH else -1
    out.packet_length = c.pos + remaining
    if out.packet_length > max_size:
        cur_fail(c, spec.PACKET_TOO_LARGE, 1)
        return -1
    if out.packet_length > c.end:
        return 0
    c.end = out.packet_length  # from here on, running out is a length error
    return 1


def read_int(c: Cursor, wire: int) -> int | None:
    if wire == spec.BYTE:
        return cur_u8(c)
    if wire == spec.TWO_BYTE_INT:
        return cur_u16(c)
    if wire == spec.FOUR_BYTE_INT:
        return cur_u32(c)
    return cur_varint(c, spec.PROPERTY_VALUE)


def read_property(c: Cursor, context: int, seen: set[int]) -> bool:
    # One identifier + value; every defined id is below 0x80, so reading the
    # Variable Byte Integer id as one byte decides the same.
    at = c.pos
    pid = cur_u8(c)
    if pid is None:
        return False
    prop = spec.PROPERTY_BY_ID.get(pid)
    if prop is None or not prop.contexts & context:
        cur_fail(c, spec.BAD_PROPERTY, at)
        return False
    if pid in seen and not prop.repeatable:
        cur_fail(c, spec.DUPLICATE_PROPERTY, at)
        return False
    seen.add(pid)
    if prop.wire_type == spec.UTF8:
        return cur_utf8(c) is not None
    if prop.wire_type == spec.BINARY:
        return cur_span(c) is not None
    if prop.wire_type == spec.UTF8_PAIR:
        return cur_utf8(c) is not None and cur_utf8(c) is not None
    value = read_int(c, prop.wire_type)
    if value is None:
        return False
    if not prop.minimum <= value <= prop.maximum:
        cur_fail(c, spec.PROPERTY_VALUE, at)
        return False
    return True


def walk_properties(c: Cursor, context: int, seen: set[int]) -> Span | None:
    # Property Length, then properties that must exactly fill it (5.0 sec 2.2.2.1).
    at = c.pos
    outer_end = c.end
    n = cur_varint(c, spec.BAD_PROPERTY_LENGTH)
    if n is None:
        return None
    if c.end - c.pos < n:
        cur_fail(c, spec.LENGTH_MISMATCH, at)
        return None
    s = (c.pos, n)
    c.end = c.pos + n
    while c.pos < c.end:
        if not read_property(c, context, seen):
            return None
    c.end = outer_end
    return s


def protocol_name_index(c: Cursor, name: Span) -> int:
    for i, (known, _) in enumerate(_NAMES):
        if cur_span_equals(c, name, known):
            return i
    return -1


def read_protocol(c: Cursor, accept_bridge: bool, out: ConnectScan) -> bool:
    # Protocol Name and Level, which come as a pair (MQIsdp/3, MQTT/4, MQTT/5).
    at = c.pos
    out.protocol_name = cur_span(c)
    if out.protocol_name is None:
        return False
    idx = protocol_name_index(c, out.protocol_name)
    if idx < 0:
        cur_fail(c, spec.BAD_PROTOCOL_NAME, at)
        return False
    at = c.pos
    raw = cur_u8(c)
    if raw is None:
        return False
    out.bridge = bool(raw & spec.BRIDGE_BIT)
    out.protocol_version = level = raw & ~spec.BRIDGE_BIT
    if (out.bridge and not accept_bridge) or level not in _ALL_LEVELS:
        cur_fail(c, spec.BAD_PROTOCOL_VERSION, at)
        return False
    if level not in _NAMES[idx][1]:
        cur_fail(c, spec.PROTOCOL_NAME_LEVEL_MISMATCH, at)
        return False
    return True


def read_flags(c: Cursor, out: ConnectScan) -> bool:
    # Connect Flags (3.1.1 sec 3.1.2.3, 5.0 sec 3.1.2.3).
    at = c.pos
    flags = cur_u8(c)
    if flags is None:
        return False
    out.flags = flags
    qos = (flags & spec.FLAG_WILL_QOS) >> spec.WILL_QOS_SHIFT
    if flags & spec.FLAG_RESERVED:
        cur_fail(c, spec.RESERVED_FLAG, at)
    elif not flags & spec.FLAG_WILL and (qos or flags & spec.FLAG_WILL_RETAIN):
        cur_fail(c, spec.BAD_WILL_FLAGS, at)
    elif qos == 3:
        cur_fail(c, spec.BAD_WILL_QOS, at)
    elif (
        flags & spec.FLAG_PASSWORD
        and not flags & spec.FLAG_USERNAME
        and out.protocol_version < spec.LEVEL_5
    ):
        cur_fail(c, spec.PASSWORD_WITHOUT_USERNAME, at)
    else:
        return True
    return False


def read_connect_properties(c: Cursor, out: ConnectScan) -> bool:
    at = c.pos
    seen: set[int] = set()
    out.properties = walk_properties(c, spec.IN_CONNECT, seen)
    if out.properties is None:
        return False
    if spec.AUTHENTICATION_DATA in seen and spec.AUTHENTICATION_METHOD not in seen:
        cur_fail(c, spec.AUTH_DATA_WITHOUT_METHOD, at)
        return False
    return True


def read_payload(c: Cursor, out: ConnectScan) -> bool:
    # Client Identifier, [Will Properties,] Will Topic, Will Payload, User Name,
    # Password, present as the flags say; they must end exactly where the packet does.
    out.client_id = cur_utf8(c)
    if out.client_id is None:
        return False
    if out.flags & spec.FLAG_WILL:
        if out.protocol_version >= spec.LEVEL_5:
            out.will_properties = walk_properties(c, spec.IN_WILL, set())
            if out.will_properties is None:
                return False
        out.will_topic = cur_utf8(c)
        out.will_payload = None if out.will_topic is None else cur_span(c)
        if out.will_payload is None:
            return False
    if out.flags & spec.FLAG_USERNAME:
        out.username = cur_utf8(c)
        if out.username is None:
            return False
    if out.flags & spec.FLAG_PASSWORD:
        out.password = cur_span(c)
        if out.password is None:
            return False
    if c.pos != c.end:
        cur_fail(c, spec.LENGTH_MISMATCH, c.pos)
        return False
    return True


def read_connect(c: Cursor, accept_bridge: bool, out: ConnectScan) -> bool:
    if not read_protocol(c, accept_bridge, out) or not read_flags(c, out):
        return False
    keepalive = cur_u16(c)
    if keepalive is None:
        return False
    out.keepalive = keepalive
    if out.protocol_version >= spec.LEVEL_5 and not read_connect_properties(c, out):
        return False
    return read_payload(c, out)


class ConnectScan:
    """What connect_scan learnt: the ConnectScan struct of _parse.pxd."""

    __slots__ = (
        "bridge",
        "client_id",
        "flags",
        "keepalive",
        "offset",
        "packet_length",
        "password",
        "properties",
        "protocol_name",
        "protocol_version",
        "reason",
        "username",
        "will_payload",
        "will_properties",
        "will_topic",
    )

    def __init__(self) -> None:
        connect_scan_reset(self)


def connect_scan_reset(out: ConnectScan) -> None:
    out.packet_length = 0
    out.reason = ""
    out.offset = 0
    out.protocol_version = 0
    out.bridge = False
    out.flags = 0
    out.keepalive = 0
    out.protocol_name = None
    out.properties = None
    out.client_id = None
    out.will_properties = None
    out.will_topic = None
    out.will_payload = None
    out.username = None
    out.password = None


def scan_result(rc: int, c: Cursor, out: Any) -> int:
    if rc < 0:
        out.reason = c.reason
        out.offset = c.err_at
    return rc


def connect_scan(p: bytes, n: int, max_size: int, accept_bridge: bool, out: ConnectScan) -> int:
    """1: complete valid CONNECT (fields in out); 0: need more bytes; -1: invalid."""
    c = Cursor(p, n)
    rc = read_fixed_header(c, spec.CONNECT_FIRST_BYTE, max_size, out)
    if rc > 0 and not read_connect(c, accept_bridge, out):
        rc = -1
    return scan_result(rc, c, out)


def connect_peek(p: bytes, n: int) -> tuple[int, int] | None:
    """What an invalid CONNECT shows: (its protocol level, bridge bit included, the offset of
    its client id's length field), or None when no level shows."""
    c = Cursor(p, n)
    if n < 2 or cur_u8(c) != spec.CONNECT_FIRST_BYTE:
        return None
    if cur_varint(c, spec.BAD_REMAINING_LENGTH) is None:
        return None
    name = cur_u16(c)
    if name is None or c.end - c.pos <= name:
        return None
    c.pos += name
    level = cur_u8(c)
    assert level is not None  # the check above left at least one byte
    c.pos += 3  # flags and keepalive, whether present or not
    client_id_at = c.pos
    if level & ~spec.BRIDGE_BIT == spec.LEVEL_5:
        props = cur_varint(c, spec.BAD_PROPERTY_LENGTH)
        client_id_at = n if props is None else c.pos + props  # unknown: never "inside" it
    return level, client_id_at


def connect_refusal_facts(p: bytes, n: int, offset: int) -> tuple[int, bool] | None:
    """What answering an invalid CONNECT needs (access.malformed_answer): its protocol level
    and whether ``offset`` lies inside its client id; None when no level shows."""
    peek = connect_peek(p, n)
    if peek is None:
        return None
    level, at = peek
    c = Cursor(p, n)
    c.pos = at
    length = cur_u16(c)
    return level, length is not None and at + 2 <= offset < at + 2 + length


def _field(in_client_id: bool) -> str | None:
    return CLIENT_ID_FIELD if in_client_id else None


def read_connack(c: Cursor, protocol_version: int, out: ConnackScan) -> bool:
    # Acknowledge Flags, Return/Reason Code, and for 5.0 properties.  A 2-byte
    # CONNACK to a 5.0 client is a 3.1.1 broker refusing the level: read it as 3.1.1.
    at = c.pos
    v5 = protocol_version >= spec.LEVEL_5 and c.end - c.pos != spec.CONNACK_LEGACY_LENGTH
    flags = cur_u8(c)
    code = None if flags is None else cur_u8(c)
    if flags is None or code is None:
        return False
    out.flags = flags
    out.reason_code = code
    codes = spec.CONNACK_REASON_CODES_V5 if v5 else spec.CONNACK_RETURN_CODES_V3
    if flags & spec.CONNACK_RESERVED_FLAGS:
        cur_fail(c, spec.RESERVED_FLAG, at)
        return False
    if code not in codes:
        cur_fail(c, spec.BAD_REASON_CODE, at + 1)
        return False
    if flags & spec.CONNACK_SESSION_PRESENT and code != 0:
        cur_fail(c, spec.BAD_SESSION_PRESENT, at)
        return False
    if v5:
        out.properties = walk_properties(c, spec.IN_CONNACK, set())
        if out.properties is None:
            return False
    if c.pos != c.end:
        cur_fail(c, spec.LENGTH_MISMATCH, c.pos)
        return False
    return True


class ConnackScan:
    """What connack_scan learnt: the ConnackScan struct of _parse.pxd."""

    __slots__ = ("flags", "offset", "packet_length", "properties", "reason", "reason_code")

    def __init__(self) -> None:
        self.packet_length = 0
        self.reason = ""
        self.offset = 0
        self.flags = 0
        self.reason_code = 0
        self.properties: Span | None = None


def connack_scan(p: bytes, n: int, max_size: int, protocol_version: int, out: ConnackScan) -> int:
    c = Cursor(p, n)
    rc = read_fixed_header(c, spec.CONNACK_FIRST_BYTE, max_size, out)
    if rc > 0 and not read_connack(c, protocol_version, out):
        rc = -1
    return scan_result(rc, c, out)


# --- lazy decoding: only for fields someone reads -----------------------------------------------


def _must(value: Any) -> Any:
    # Decoding re-reads bytes the scan already validated; failing here is a bug.
    if value is None:
        raise AssertionError("fastmqtt._parse_py: re-reading a validated packet failed")
    return value


def _text(raw: bytes, s: Span | None) -> str | None:
    return None if s is None else raw[s[0] : s[0] + s[1]].decode("utf-8")


def _blob(raw: bytes, s: Span | None) -> bytes | None:
    return None if s is None else raw[s[0] : s[0] + s[1]]


def decode_value(c: Cursor, raw: bytes, wire: int) -> Any:
    if wire == spec.UTF8:
        return _text(raw, _must(cur_span(c)))
    if wire == spec.BINARY:
        return _blob(raw, _must(cur_span(c)))
    if wire == spec.UTF8_PAIR:
        return (_text(raw, _must(cur_span(c))), _text(raw, _must(cur_span(c))))
    return _must(read_int(c, wire))


def decode_properties(raw: bytes, s: Span | None) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if s is None:
        return props
    c = Cursor(raw, s[0] + s[1])
    c.pos = s[0]
    while c.pos < c.end:
        prop = spec.PROPERTY_BY_ID[_must(cur_u8(c))]
        value = decode_value(c, raw, prop.wire_type)
        if prop.repeatable:
            props.setdefault(prop.key, []).append(value)
        else:
            props[prop.key] = value
    return props


def _packet_bytes(data: bytes, length: int) -> bytes:
    # One private copy, so the result outlives a bytearray the caller reuses.
    return data if len(data) == length else data[:length]


class _Frozen:
    """Read-only instances that only the inspector creates."""

    __slots__ = ("_raw", "_scan")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} objects come from the inspect_* functions")

    @classmethod
    def new(cls, raw: bytes, scan: Any) -> Any:
        self = object.__new__(cls)
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_scan", scan)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")


class Connect(_Frozen):
    """A valid CONNECT: fields are decoded from the packet bytes when first read."""

    __slots__ = ()
    _raw: bytes
    _scan: ConnectScan

    @property
    def packet_length(self) -> int:
        return self._scan.packet_length

    @property
    def protocol_name(self) -> str:
        return _must(_text(self._raw, self._scan.protocol_name))

    @property
    def protocol_version(self) -> int:
        return self._scan.protocol_version

    @property
    def bridge(self) -> bool:
        return self._scan.bridge

    @property
    def flags(self) -> int:
        return self._scan.flags

    @property
    def clean_start(self) -> bool:
        return bool(self._scan.flags & spec.FLAG_CLEAN_START)

    @property
    def keepalive(self) -> int:
        return self._scan.keepalive

    @property
    def client_id(self) -> str:
        return _must(_text(self._raw, self._scan.client_id))

    @property
    def username(self) -> str | None:
        return _text(self._raw, self._scan.username)

    @property
    def password(self) -> bytes | None:
        return _blob(self._raw, self._scan.password)

    @property
    def will_topic(self) -> str | None:
        return _text(self._raw, self._scan.will_topic)

    @property
    def will_payload(self) -> bytes | None:
        return _blob(self._raw, self._scan.will_payload)

    @property
    def will_qos(self) -> int:
        return (self._scan.flags & spec.FLAG_WILL_QOS) >> spec.WILL_QOS_SHIFT

    @property
    def will_retain(self) -> bool:
        return bool(self._scan.flags & spec.FLAG_WILL_RETAIN)

    @property
    def properties(self) -> dict[str, Any]:
        return decode_properties(self._raw, self._scan.properties)

    @property
    def will_properties(self) -> dict[str, Any]:
        return decode_properties(self._raw, self._scan.will_properties)

    def __repr__(self) -> str:
        return connect_repr(self)


class Connack(_Frozen):
    """A valid CONNACK: session present, return/reason code and 5.0 properties."""

    __slots__ = ()
    _raw: bytes
    _scan: ConnackScan

    @property
    def packet_length(self) -> int:
        return self._scan.packet_length

    @property
    def session_present(self) -> bool:
        return bool(self._scan.flags & spec.CONNACK_SESSION_PRESENT)

    @property
    def reason_code(self) -> int:
        return self._scan.reason_code

    @property
    def properties(self) -> dict[str, Any]:
        return decode_properties(self._raw, self._scan.properties)

    @property
    def assigned_client_identifier(self) -> str | None:
        return self.properties.get("assigned_client_identifier")

    @property
    def server_reference(self) -> str | None:
        return self.properties.get("server_reference")

    def __repr__(self) -> str:
        return (
            f"Connack(session_present={self.session_present}, "
            f"reason_code={self.reason_code}, properties={self.properties!r})"
        )


def connect_repr(connect: Any) -> str:
    """repr() of a Connect that never shows the password."""
    hidden = None if connect.password is None else "<hidden>"
    return (
        f"Connect(protocol_name={connect.protocol_name!r}, "
        f"protocol_version={connect.protocol_version}, bridge={connect.bridge}, "
        f"client_id={connect.client_id!r}, clean_start={connect.clean_start}, "
        f"keepalive={connect.keepalive}, username={connect.username!r}, "
        f"password={hidden}, will_topic={connect.will_topic!r}, "
        f"will_qos={connect.will_qos}, will_retain={connect.will_retain}, "
        f"packet_length={connect.packet_length})"
    )


def _window(data: Buffer, max_size: int) -> bytes:
    # The bytes that can matter: a packet of at most max_size, a header saying it is
    # larger, or a foreign protocol's signature; copying more would change nothing.
    return bytes(memoryview(data).cast("B")[: max(max_size, _LONGEST_SIGNATURE) + 5])


def inspect_connect(
    data: Buffer, max_size: int = spec.DEFAULT_MAX_PACKET_SIZE, accept_bridge: bool = True
) -> Connect | None:
    """Connect when data starts with a complete valid CONNECT, None when more bytes
    are needed; otherwise raises MalformedPacket(reason, offset)."""
    p = _window(data, max_size)
    scan = ConnectScan()
    rc = connect_scan(p, len(p), max_size, accept_bridge, scan)
    if rc > 0:
        return Connect.new(_packet_bytes(p, scan.packet_length), scan)
    if rc == 0:
        return None
    whole = bytes(data)  # the level may lie past the window (a long protocol name)
    facts = connect_refusal_facts(whole, len(whole), scan.offset)
    if facts is None:
        raise MalformedPacket(scan.reason, scan.offset)
    level, in_client_id = facts
    raise MalformedPacket(scan.reason, scan.offset, level=level, field=_field(in_client_id))


def inspect_connack(
    data: Buffer, protocol_version: int = 4, max_size: int = spec.DEFAULT_MAX_PACKET_SIZE
) -> Connack | None:
    """Connack when data starts with a complete valid CONNACK for a client of
    <protocol_version>, None when more bytes are needed; else MalformedPacket."""
    if protocol_version not in spec.PROTOCOL_LEVELS:
        raise ValueError(f"protocol_version must be one of {sorted(spec.PROTOCOL_LEVELS)}")
    p = _window(data, max_size)
    scan = ConnackScan()
    rc = connack_scan(p, len(p), max_size, protocol_version, scan)
    if rc > 0:
        return Connack.new(_packet_bytes(p, scan.packet_length), scan)
    if rc == 0:
        return None
    raise MalformedPacket(scan.reason, scan.offset)
