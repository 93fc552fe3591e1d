"""Named CONNECT vectors with the verdict fastmqtt must give on each.

Two halves:

* ``paho_vectors()``: the exact bytes real paho-mqtt 2.x clients send for MQTT 3.1, 3.1.1 and
  5.0 over every combination of optional fields. They are captured, not re-encoded: a paho
  ``Client`` connects to a listening socket on loopback and we read what arrives.
* ``malformed_vectors()``: packets that break one rule each, named after what they break.

``corpus()`` builds both once per process (module-level ``lru_cache``), so every test that
parametrizes over it shares one capture run.
"""

from __future__ import annotations

import functools
import itertools
import random
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fastmqtt import mqtt_spec
from fastmqtt.packets import varint

VALID = "valid"
INCOMPLETE = "incomplete"  # inspect_connect returns None: it waits for more bytes

LONG_CLIENT_ID = "device-" + "0123456789abcdef" * 3  # 55 chars: past HAProxy's `len 32` tables
UTF8_CLIENT_ID = "capteur-\u00e9t\u00e9-\u6e29\u5ea6-\U0001f321"  # 2-, 3- and 4-byte UTF-8
HAPROXY_BUFSIZE = 16384  # Debian HAProxy 2.6 `tune.bufsize` default
HAPROXY_MAXREWRITE = 1024  # `tune.maxrewrite` default: kept free, so 15360 bytes are inspected


@dataclass(frozen=True)
class Vector:
    """One named input; ``verdict`` is "valid", "incomplete" or a ``MalformedPacket.reason``."""

    name: str
    data: bytes
    verdict: str
    client_id: str | None = None  # what a valid vector must extract
    pause_at: int = 0  # when set, the sender pauses after this many bytes (two TCP segments)


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[Vector, ...]:
    vectors = (*paho_vectors(), *malformed_vectors())
    names = [v.name for v in vectors]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise AssertionError(f"corpus names must be unique: {sorted(duplicates)}")
    return vectors


def by_name() -> dict[str, Vector]:
    return {v.name: v for v in corpus()}


# --------------------------------------------------------------------------- paho captures


@dataclass(frozen=True)
class ClientSpec:
    """How to configure one paho client; ``name()`` spells out every choice."""

    version: int  # 3, 4 or 5 (the MQTT protocol level)
    client_id: str = "fastmqtt-corpus"
    clean: bool = True
    username: str | None = None
    password: str | None = None
    will_qos: int | None = None  # None: no will
    will_retain: bool = False
    props: str = "none"  # v5 CONNECT properties: "none", "all" (incl. user properties), "auth"
    bridge: bool = False
    keepalive: int = 60

    def name(self) -> str:
        parts = [f"paho-{_VERSION_TAG[self.version]}", "clean" if self.clean else "persistent"]
        if self.username is not None:
            parts.append("user+pw" if self.password is not None else "user")
        if self.will_qos is not None:
            parts.append(f"will-q{self.will_qos}" + ("-retain" if self.will_retain else ""))
        if self.props != "none":
            parts.append(f"props-{self.props}")
        if self.bridge:
            parts.append("bridge")
        return "-".join(parts)


_VERSION_TAG = {3: "v31", 4: "v311", 5: "v5"}
_PAHO_PROTOCOL = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}


def paho_vectors() -> list[Vector]:
    vectors = [_captured(client.name(), client) for client in _field_combinations()]
    for version in (3, 4, 5):
        tag = _VERSION_TAG[version]
        vectors.append(_captured(f"paho-{tag}-long-client-id", ClientSpec(version, LONG_CLIENT_ID)))
        vectors.append(_captured(f"paho-{tag}-utf8-client-id", ClientSpec(version, UTF8_CLIENT_ID)))
        # Mosquitto bridges set the top bit of the level; fastmqtt accepts them by default
        vectors.append(_captured(f"paho-{tag}-bridge", ClientSpec(version, bridge=True)))
    # MQTT 3.1 has no empty client id (paho makes one up), 3.1.1 needs clean session for it
    vectors.append(_captured("paho-v311-empty-client-id", ClientSpec(4, "")))
    vectors.append(_captured("paho-v5-empty-client-id", ClientSpec(5, "")))
    vectors.append(_captured("paho-v5-persistent-empty-client-id", ClientSpec(5, "", clean=False)))
    return vectors + _split_vectors()


def _split_vectors() -> list[Vector]:
    """A real CONNECT with remaining length 128 (encoded 0x80 0x01), delivered in two pieces.

    Cut after 0x80, the length read so far is 0: a reader that takes the bytes present for the
    whole field sees an empty CONNECT, although the client did nothing wrong.
    """
    spec_128 = ClientSpec(4, "x" * 116)  # 10 (variable header) + 2 + 116 = 128
    data = capture_connect(spec_128)
    assert data[1:3] == b"\x80\x01", data[:3]
    return [
        Vector(
            f"paho-v311-remaining-length-128-paused-at-{at}",
            data,
            VALID,
            spec_128.client_id,
            pause_at=at,
        )
        for at in (1, 2, 3, 40)
    ]


def _field_combinations() -> Iterator[ClientSpec]:
    credentials = [(None, None), ("user", None), ("user", "secret")]
    wills = [(None, False)] + [(q, r) for r in (False, True) for q in (0, 1, 2)]
    for version in (3, 4, 5):
        for clean, (user, pw), (qos, retain), props in itertools.product(
            (True, False),
            credentials,
            wills,
            ("none", "all", "auth") if version == 5 else ("none",),
        ):
            yield ClientSpec(version, "fastmqtt-corpus", clean, user, pw, qos, retain, props)


def _captured(name: str, spec: ClientSpec) -> Vector:
    return Vector(name, capture_connect(spec), VALID, spec.client_id)


def capture_connect(spec: ClientSpec) -> bytes:
    """The CONNECT bytes a real paho client configured by ``spec`` puts on the wire."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        client = _paho_client(spec)
        client.connect(
            "127.0.0.1",
            server.getsockname()[1],
            keepalive=spec.keepalive,
            **_connect_v5_args(spec),
        )
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            data = read_packet(conn)
        client.loop(timeout=1.0)  # paho sees the close and releases its socket
    return data


def _paho_client(spec: ClientSpec) -> mqtt.Client:
    kwargs: dict[str, object] = {}
    if spec.version != 5:
        kwargs["clean_session"] = spec.clean
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=spec.client_id,
        protocol=_PAHO_PROTOCOL[spec.version],
        **kwargs,
    )
    if spec.username is not None:
        client.username_pw_set(spec.username, spec.password)
    if spec.will_qos is not None:
        client.will_set(
            "devices/corpus/status",
            b"gone",
            qos=spec.will_qos,
            retain=spec.will_retain,
            properties=_will_properties() if spec.version == 5 and spec.props != "none" else None,
        )
    if spec.bridge:
        client.enable_bridge_mode()
    return client


def _connect_v5_args(spec: ClientSpec) -> dict[str, object]:
    if spec.version != 5:
        return {}
    args: dict[str, object] = {"clean_start": spec.clean}
    if spec.props != "none":
        args["properties"] = _connect_properties(spec.props)
    return args


def _connect_properties(kind: str) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    if kind == "auth":
        props.AuthenticationMethod = "SCRAM-SHA-256"
        props.AuthenticationData = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
        return props
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 20
    props.MaximumPacketSize = 262144
    props.TopicAliasMaximum = 10
    props.RequestResponseInformation = 1
    props.RequestProblemInformation = 0
    props.UserProperty = [("site", "lyon"), ("rack", "r\u00e9seau-7")]
    return props


def _will_properties() -> Properties:
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 30
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 600
    props.ContentType = "text/plain"
    props.ResponseTopic = "devices/corpus/reply"
    props.CorrelationData = b"\x00\x01corr"
    props.UserProperty = [("reason", "power-loss")]
    return props


def read_packet(conn: socket.socket) -> bytes:
    """Read exactly one MQTT packet (fixed header, remaining length, body) from ``conn``."""
    data = bytearray(_recv_exactly(conn, 1))
    multiplier, remaining = 1, 0
    for _ in range(4):
        byte = _recv_exactly(conn, 1)[0]
        data.append(byte)
        remaining += (byte & 0x7F) * multiplier
        multiplier *= 128
        if byte < 0x80:
            break
    data += _recv_exactly(conn, remaining)
    return bytes(data)


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = conn.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(chunks)} of {n} bytes")
        chunks += chunk
    return bytes(chunks)


# --------------------------------------------------------------------------- hand-made packets


def mqtt_str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(
    *,
    name: bytes = b"MQTT",
    level: int = 4,
    flags: int = 0x02,
    keepalive: int = 60,
    props: bytes | None = None,
    payload: bytes = mqtt_str("fastmqtt-corpus"),
    first_byte: int = 0x10,
    length_delta: int = 0,
) -> bytes:
    """A CONNECT from its parts; ``props`` (v5) is the property bytes without their length.

    ``length_delta`` makes the remaining length lie by that many bytes.
    """
    body = mqtt_str(name) + bytes([level, flags]) + keepalive.to_bytes(2, "big")
    if props is not None:
        body += varint(len(props)) + props
    body += payload
    return bytes([first_byte]) + varint(len(body) + length_delta) + body


def _v5(props: bytes, **kw: object) -> bytes:
    kw.setdefault("level", 5)
    return connect_packet(props=props, **kw)  # type: ignore[arg-type]


def _prop_u32(ident: int, value: int) -> bytes:
    return bytes([ident]) + value.to_bytes(4, "big")


def _prop_u16(ident: int, value: int) -> bytes:
    return bytes([ident]) + value.to_bytes(2, "big")


def _prop_str(ident: int, value: str | bytes) -> bytes:
    return bytes([ident]) + mqtt_str(value)


# CONNECT flags, by name
CLEAN, WILL, RETAIN = mqtt_spec.FLAG_CLEAN_START, mqtt_spec.FLAG_WILL, mqtt_spec.FLAG_WILL_RETAIN
QOS_1, QOS_2, QOS_3 = (q << mqtt_spec.WILL_QOS_SHIFT for q in (1, 2, 3))
USERNAME, PASSWORD, RESERVED = (
    mqtt_spec.FLAG_USERNAME,
    mqtt_spec.FLAG_PASSWORD,
    mqtt_spec.FLAG_RESERVED,
)

_WILL = mqtt_str("devices/corpus/status") + mqtt_str(b"gone")
_SESSION_EXPIRY = _prop_u32(0x11, 3600)


def malformed_vectors() -> list[Vector]:
    return [
        *_header_vectors(),
        *_protocol_vectors(),
        *_flag_vectors(),
        *_string_vectors(),
        *_length_vectors(),
        *_property_vectors(),
        *_foreign_vectors(),
        *_size_vectors(),
    ]


def _header_vectors() -> list[Vector]:
    return [
        Vector(
            "fixed-header-flags-0x11",
            connect_packet(first_byte=0x11),
            mqtt_spec.BAD_FIXED_HEADER_FLAGS,
        ),
        Vector(
            "fixed-header-flags-0x18",
            connect_packet(first_byte=0x18),
            mqtt_spec.BAD_FIXED_HEADER_FLAGS,
        ),
        Vector("not-connect-pingreq", b"\xc0\x00", mqtt_spec.NOT_CONNECT),
        Vector("not-connect-publish", b"\x30\x07\x00\x03a/bxyz", mqtt_spec.NOT_CONNECT),
        Vector("not-connect-subscribe", b"\x82\x06\x00\x01\x00\x01a\x00", mqtt_spec.NOT_CONNECT),
        # HAProxy's mqtt_is_valid also validates CONNACK, whichever side sends it
        Vector("not-connect-connack", b"\x20\x02\x00\x00", mqtt_spec.NOT_CONNECT),
        Vector("not-connect-type-0", b"\x00\x00", mqtt_spec.NOT_CONNECT),
    ]


MISMATCH = mqtt_spec.PROTOCOL_NAME_LEVEL_MISMATCH


def _protocol_vectors() -> list[Vector]:
    def bad(label: str, reason: str, **kw: object) -> Vector:
        return Vector(label, connect_packet(**kw), reason)  # type: ignore[arg-type]

    return [
        bad("protocol-name-MQTX", mqtt_spec.BAD_PROTOCOL_NAME, name=b"MQTX"),
        bad("protocol-name-lowercase-mqtt", mqtt_spec.BAD_PROTOCOL_NAME, name=b"mqtt"),
        bad("protocol-name-lowercase-mqisdp", mqtt_spec.BAD_PROTOCOL_NAME, name=b"mqisdp", level=3),
        bad("protocol-name-empty", mqtt_spec.BAD_PROTOCOL_NAME, name=b""),
        bad("protocol-name-MQTT-trailing-space", mqtt_spec.BAD_PROTOCOL_NAME, name=b"MQTT "),
        bad("protocol-level-0", mqtt_spec.BAD_PROTOCOL_VERSION, level=0),
        bad("protocol-level-2", mqtt_spec.BAD_PROTOCOL_VERSION, level=2),
        bad("protocol-level-6", mqtt_spec.BAD_PROTOCOL_VERSION, level=6, props=b""),
        bad("protocol-level-0x86", mqtt_spec.BAD_PROTOCOL_VERSION, level=0x86, props=b""),
        bad("name-level-mismatch-MQIsdp-4", MISMATCH, name=b"MQIsdp", level=4),
        bad("name-level-mismatch-MQIsdp-5", MISMATCH, name=b"MQIsdp", level=5, props=b""),
        bad("name-level-mismatch-MQTT-3", MISMATCH, name=b"MQTT", level=3),
        bad("name-level-mismatch-MQIsdp-bridge-0x84", MISMATCH, name=b"MQIsdp", level=0x84),
    ]


def _flag_vectors() -> list[Vector]:
    user, pw = mqtt_str("user"), mqtt_str("secret")
    id_ = mqtt_str("fastmqtt-corpus")

    def flags(name: str, reason: str, value: int, payload: bytes = id_, level: int = 4) -> Vector:
        packet = connect_packet(
            flags=value, payload=payload, level=level, props=b"" if level == 5 else None
        )
        return Vector(name, packet, reason, _id_from(payload) if reason == VALID else None)

    return [
        flags("connect-flags-reserved-bit", mqtt_spec.RESERVED_FLAG, CLEAN | RESERVED),
        flags("connect-flags-reserved-bit-v5", mqtt_spec.RESERVED_FLAG, CLEAN | RESERVED, level=5),
        flags("will-qos-3", mqtt_spec.BAD_WILL_QOS, CLEAN | WILL | QOS_3, id_ + _WILL),
        flags(
            "will-qos-3-v5", mqtt_spec.BAD_WILL_QOS, CLEAN | WILL | QOS_3, id_ + b"\x00" + _WILL, 5
        ),
        flags("will-retain-without-will", mqtt_spec.BAD_WILL_FLAGS, CLEAN | RETAIN),
        flags("will-qos1-without-will", mqtt_spec.BAD_WILL_FLAGS, CLEAN | QOS_1),
        flags("will-qos2-without-will", mqtt_spec.BAD_WILL_FLAGS, CLEAN | QOS_2),
        flags("will-qos3-without-will", mqtt_spec.BAD_WILL_FLAGS, CLEAN | QOS_3),
        flags(
            "password-without-username-v311",
            mqtt_spec.PASSWORD_WITHOUT_USERNAME,
            CLEAN | PASSWORD,
            id_ + pw,
        ),
        flags("password-without-username-v5", VALID, CLEAN | PASSWORD, id_ + pw, 5),
        flags("username-flag-without-username", mqtt_spec.LENGTH_MISMATCH, CLEAN | USERNAME),
        flags("will-flag-without-will-fields", mqtt_spec.LENGTH_MISMATCH, CLEAN | WILL),
        # [MQTT-3.1.3-8] the broker refuses it with a CONNACK (0x02); the bytes are well-formed
        flags("persistent-empty-client-id-v311", VALID, 0, mqtt_str("")),
        flags("user-and-password-v311", VALID, CLEAN | USERNAME | PASSWORD, id_ + user + pw),
    ]


def _id_from(payload: bytes) -> str:
    return payload[2 : 2 + int.from_bytes(payload[:2], "big")].decode()


def _string_vectors() -> list[Vector]:
    def client_id(name: str, raw: bytes) -> Vector:
        return Vector(name, connect_packet(payload=mqtt_str(raw)), mqtt_spec.BAD_UTF8)

    return [
        client_id("client-id-bad-utf8-ff", b"dev\xff\xfe"),
        client_id("client-id-bad-utf8-truncated", b"dev\xe6\xb8"),
        client_id("client-id-bad-utf8-overlong", b"dev\xc0\xaf"),
        client_id("client-id-utf16-surrogate", b"dev\xed\xa0\x80"),
        client_id("client-id-nul", b"dev\x00ice"),
        Vector(
            "username-bad-utf8",
            connect_packet(flags=CLEAN | USERNAME, payload=mqtt_str("id") + mqtt_str(b"us\xff")),
            mqtt_spec.BAD_UTF8,
        ),
        Vector(
            "will-topic-nul",
            connect_packet(
                flags=CLEAN | WILL, payload=mqtt_str("id") + mqtt_str(b"a\x00b") + mqtt_str(b"x")
            ),
            mqtt_spec.BAD_UTF8,
        ),
        # a password and a will payload are binary: any bytes are fine
        Vector(
            "password-binary",
            connect_packet(
                flags=CLEAN | USERNAME | PASSWORD,
                payload=mqtt_str("id") + mqtt_str("u") + mqtt_str(b"\xff\x00\xfe"),
            ),
            VALID,
            "id",
        ),
    ]


def _non_minimal_length(packet: bytes) -> bytes:
    """The same one-byte-length packet with its remaining length spelled in two bytes."""
    assert packet[1] < 0x80
    return packet[:1] + bytes([packet[1] | 0x80, 0x00]) + packet[2:]


def _length_vectors() -> list[Vector]:
    good = connect_packet()
    long = connect_packet(payload=mqtt_str("x" * 180))
    return [
        Vector(
            "remaining-length-5-bytes",
            b"\x10\xff\xff\xff\xff\x7f" + good[2:],
            mqtt_spec.BAD_REMAINING_LENGTH,
        ),
        Vector(
            "remaining-length-4-bytes-continued",
            b"\x10\x80\x80\x80\x80",
            mqtt_spec.BAD_REMAINING_LENGTH,
        ),
        Vector("remaining-length-longer-than-data", connect_packet(length_delta=1), INCOMPLETE),
        Vector(
            "remaining-length-much-longer-than-data", connect_packet(length_delta=1000), INCOMPLETE
        ),
        Vector(
            "remaining-length-shorter-than-data",
            connect_packet(length_delta=-1),
            mqtt_spec.LENGTH_MISMATCH,
        ),
        Vector("remaining-length-zero", b"\x10\x00", mqtt_spec.LENGTH_MISMATCH),
        # the spec asks senders for the shortest form; receivers (Mosquitto too) take longer ones
        Vector("remaining-length-non-minimal", _non_minimal_length(good), VALID, "fastmqtt-corpus"),
        Vector(
            "trailing-bytes-inside-remaining-length",
            connect_packet(payload=mqtt_str("fastmqtt-corpus") + b"\x00", length_delta=0),
            mqtt_spec.LENGTH_MISMATCH,
        ),
        Vector(
            "client-id-length-overrun",
            connect_packet(payload=b"\x00\x40" + b"fastmqtt"),
            mqtt_spec.LENGTH_MISMATCH,
        ),
        Vector("cut-after-first-byte", b"\x10", INCOMPLETE),
        # a cut inside the remaining length: HAProxy's verdict depends on the bits seen so far
        Vector("cut-in-remaining-length-80", b"\x10\x80", INCOMPLETE),
        Vector("cut-in-remaining-length-80-80", b"\x10\x80\x80", INCOMPLETE),
        Vector("cut-in-remaining-length-c0-80", b"\x10\xc0\x80", INCOMPLETE),
        Vector("cut-in-remaining-length-ff", b"\x10\xff", INCOMPLETE),
        Vector("cut-in-remaining-length-of-200-byte-connect", long[:2], INCOMPLETE),
        Vector("cut-inside-variable-header", good[:9], INCOMPLETE),
        Vector("cut-before-last-byte", good[:-1], INCOMPLETE),
        # real clients may pipeline: the CONNECT is complete, what follows is the next packet
        Vector("connect-then-pingreq", good + b"\xc0\x00", VALID, "fastmqtt-corpus"),
    ]


def _property_vectors() -> list[Vector]:
    def v5(name: str, props: bytes, reason: str, **kw: object) -> Vector:
        cid = "fastmqtt-corpus" if reason == VALID else None
        return Vector(name, _v5(props, **kw), reason, cid)  # type: ignore[arg-type]

    will_payload = mqtt_str("fastmqtt-corpus") + b"\x02\x01\x01" + _WILL
    return [
        v5("v5-no-properties", b"", VALID),
        Vector(
            "property-length-overrun",
            connect_packet(
                level=5, props=None, payload=b"\x20" + _SESSION_EXPIRY + mqtt_str("fastmqtt-corpus")
            ),
            mqtt_spec.LENGTH_MISMATCH,
        ),
        Vector(
            "property-length-5-bytes",
            connect_packet(level=5, props=None, payload=b"\x80\x80\x80\x80\x00" + mqtt_str("c")),
            mqtt_spec.BAD_PROPERTY_LENGTH,
        ),
        # the value crosses the end of the property section (the client id follows it)
        v5("property-value-cut", b"\x11\x00\x00", mqtt_spec.LENGTH_MISMATCH),
        v5("duplicate-property-session-expiry", _SESSION_EXPIRY * 2, mqtt_spec.DUPLICATE_PROPERTY),
        v5(
            "duplicate-property-auth-method",
            _prop_str(0x15, "SCRAM") * 2,
            mqtt_spec.DUPLICATE_PROPERTY,
        ),
        v5(
            "user-property-repeated",
            _prop_str(0x26, "a") + mqtt_str("b") + _prop_str(0x26, "a") + mqtt_str("c"),
            VALID,
        ),
        v5(
            "auth-data-but-no-auth-method",
            _prop_str(0x16, b"\x01\x02"),
            mqtt_spec.AUTH_DATA_WITHOUT_METHOD,
        ),
        # the rule is about presence; HAProxy tests lengths, so empty values flip its verdict
        v5(
            "auth-data-empty-without-method",
            _prop_str(0x16, b""),
            mqtt_spec.AUTH_DATA_WITHOUT_METHOD,
        ),
        v5("auth-method-empty-with-data", _prop_str(0x15, "") + _prop_str(0x16, b"\x01"), VALID),
        v5("property-not-allowed-in-connect", b"\x01\x01", mqtt_spec.BAD_PROPERTY),
        v5("property-unknown-id", b"\x7f\x00", mqtt_spec.BAD_PROPERTY),
        v5("receive-maximum-zero", _prop_u16(0x21, 0), mqtt_spec.PROPERTY_VALUE),
        v5("maximum-packet-size-zero", _prop_u32(0x27, 0), mqtt_spec.PROPERTY_VALUE),
        v5("request-problem-information-2", b"\x17\x02", mqtt_spec.PROPERTY_VALUE),
        v5("request-response-information-2", b"\x19\x02", mqtt_spec.PROPERTY_VALUE),
        v5(
            "will-payload-format-2",
            b"",
            mqtt_spec.PROPERTY_VALUE,
            flags=CLEAN | WILL,
            payload=mqtt_str("fastmqtt-corpus") + b"\x02\x01\x02" + _WILL,
        ),
        v5(
            "will-property-not-allowed",
            b"",
            mqtt_spec.BAD_PROPERTY,
            flags=CLEAN | WILL,
            payload=mqtt_str("fastmqtt-corpus") + b"\x02\x11\x00" + _WILL,
        ),
        v5("will-properties-ok", b"", VALID, flags=CLEAN | WILL, payload=will_payload),
    ]


def _foreign_vectors() -> list[Vector]:
    return [
        Vector(
            "http-get", b"GET / HTTP/1.1\r\nHost: localhost:1883\r\n\r\n", mqtt_spec.HTTP_REQUEST
        ),
        Vector(
            "http-websocket-upgrade",
            b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
            mqtt_spec.HTTP_REQUEST,
        ),
        Vector("tls-client-hello", tls_client_hello(), mqtt_spec.TLS_HANDSHAKE),
        Vector(
            "proxy-protocol-v1-header",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 5000 1883\r\n" + connect_packet(),
            mqtt_spec.NOT_CONNECT,
        ),
        *_random_vectors(seed=20260, count=8),
    ]


def tls_client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl), as sent to a plain MQTT port."""
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="broker.example"
    )
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("a TLS handshake cannot finish without a server")


def _random_vectors(seed: int, count: int) -> list[Vector]:
    """Seeded noise whose first byte is no packet type fastmqtt reads further (not CONNECT,
    not a TLS record, not ASCII text), so its verdict is "not-connect" by construction."""
    rng = random.Random(seed)
    firsts = [b for b in range(256) if b >> 4 != 1 and b != 0x16 and not 0x20 <= b < 0x7F]
    return [
        Vector(
            f"random-{seed}-{i}",
            bytes([rng.choice(firsts)]) + rng.randbytes(rng.randint(1, 200)),
            mqtt_spec.NOT_CONNECT,
        )
        for i in range(count)
    ]


def _size_vectors() -> list[Vector]:
    def padded(total: int) -> bytes:
        """A valid CONNECT of exactly ``total`` bytes (the padding is the username)."""
        fixed = len(connect_packet(flags=CLEAN | USERNAME, payload=mqtt_str("id") + mqtt_str("")))
        for extra_len_bytes in range(3):
            packet = connect_packet(
                flags=CLEAN | USERNAME,
                payload=mqtt_str("id") + mqtt_str("u" * (total - fixed - extra_len_bytes)),
            )
            if len(packet) == total:
                return packet
        raise AssertionError(f"cannot build a CONNECT of {total} bytes")

    limit = HAPROXY_BUFSIZE - HAPROXY_MAXREWRITE
    most = mqtt_spec.DEFAULT_MAX_PACKET_SIZE
    return [
        Vector("size-haproxy-buffer-minus-1", padded(limit - 1), VALID, "id"),
        Vector("size-haproxy-buffer-exact", padded(limit), VALID, "id"),
        Vector("size-haproxy-buffer-plus-1", padded(limit + 1), VALID, "id"),
        Vector("size-16k-plus", padded(HAPROXY_BUFSIZE + 100), VALID, "id"),
        Vector("size-64k-exact", padded(most), VALID, "id"),
        Vector("size-64k-plus-1", padded(most + 1), mqtt_spec.PACKET_TOO_LARGE),
        Vector(
            "size-announces-256m",
            b"\x10\xff\xff\xff\x7f" + connect_packet()[2:],
            mqtt_spec.PACKET_TOO_LARGE,
        ),
    ]
