"""The MQTT rules fastmqtt enforces, as readable tables.

Both CONNECT/CONNACK inspectors (``_parse.pyx`` and its twin ``_parse_py.py``)
consult these tables instead of spelling the rules out in code; the compiled
module copies them into C arrays when it is imported.

Sources: MQTT 3.1 (IBM, "MQIsdp"), MQTT 3.1.1 (OASIS, sections 2.2, 3.1, 3.2)
and MQTT 5.0 (OASIS, sections 1.5, 2.2.2, 3.1, 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- Fixed header (3.1.1 sec 2.2, 5.0 sec 2.1) -------------------------------------------------

CONNECT = 1
CONNACK = 2
PACKET_TYPES: dict[int, str] = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}
# The low nibble of the first byte is fixed for every type but PUBLISH (None: DUP/QoS/RETAIN).
FIXED_HEADER_FLAGS: dict[int, int | None] = {t: 0 for t in PACKET_TYPES}
FIXED_HEADER_FLAGS.update({3: None, 6: 0x02, 8: 0x02, 10: 0x02})
CONNECT_FIRST_BYTE = (CONNECT << 4) | FIXED_HEADER_FLAGS[CONNECT]  # 0x10
CONNACK_FIRST_BYTE = (CONNACK << 4) | FIXED_HEADER_FLAGS[CONNACK]  # 0x20

# Variable Byte Integer (remaining length, property length): at most 4 bytes, 7 bits each.
VARINT_MAX_BYTES = 4
DEFAULT_MAX_PACKET_SIZE = 64 * 1024  # largest CONNECT accepted unless configured otherwise

# --- CONNECT variable header (3.1.1 sec 3.1.2, 5.0 sec 3.1.2) ----------------------------------

LEVEL_31 = 3
LEVEL_311 = 4
LEVEL_5 = 5
PROTOCOL_LEVELS: dict[int, str] = {LEVEL_31: "3.1", LEVEL_311: "3.1.1", LEVEL_5: "5.0"}
# Protocol name -> protocol levels it may announce (the name and level come as a pair).
PROTOCOL_NAMES: dict[bytes, tuple[int, ...]] = {
    b"MQIsdp": (LEVEL_31,),
    b"MQTT": (LEVEL_311, LEVEL_5),
}
# Mosquitto bridges set the top bit of the level (0x83, 0x84, 0x85); accepted per frontend.
BRIDGE_BIT = 0x80

FLAG_RESERVED = 0x01  # must be 0 [MQTT-3.1.2-3]
FLAG_CLEAN_START = 0x02
FLAG_WILL = 0x04
FLAG_WILL_QOS = 0x18  # two bits; QoS 3 is malformed [MQTT-3.1.2-14]
WILL_QOS_SHIFT = 3
FLAG_WILL_RETAIN = 0x20
FLAG_PASSWORD = 0x40
FLAG_USERNAME = 0x80  # before 5.0, a password needs a user name [MQTT-3.1.2-22]

# --- CONNACK (3.1.1 sec 3.2, 5.0 sec 3.2) --------------------------------------------------------

CONNACK_SESSION_PRESENT = 0x01
CONNACK_RESERVED_FLAGS = 0xFE  # must be 0
CONNACK_LEGACY_LENGTH = 2  # 3.1/3.1.1 CONNACK; a 3.1.1 broker also answers a 5.0 client so
CONNACK_RETURN_CODES_V3: dict[int, str] = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
CONNACK_REASON_CODES_V5: dict[int, str] = {
    0x00: "Success",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8C: "Bad authentication method",
    0x90: "Topic Name invalid",
    0x95: "Packet too large",
    0x97: "Quota exceeded",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}

# --- 5.0 properties (5.0 sec 2.2.2) --------------------------------------------------------------

# Wire types of property values (5.0 sec 1.5).
BYTE = 1
TWO_BYTE_INT = 2
FOUR_BYTE_INT = 3
VARINT = 4
UTF8 = 5  # UTF-8 Encoded String: well-formed, no U+0000 [MQTT-1.5.4-1, -2]
BINARY = 6
UTF8_PAIR = 7

# Where a property may appear (bit mask).
IN_CONNECT = 1
IN_WILL = 2
IN_CONNACK = 4
IN_OTHER = 8  # PUBLISH, SUBSCRIBE, DISCONNECT, AUTH...: never legal where we look

USER_PROPERTY = 38
# Dict key under which user properties are collected, as a list of (name, value) pairs.
USER_PROPERTIES_KEY = "user_properties"
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
VARINT_MAX = 268_435_455


@dataclass(frozen=True)
class Property:
    """One 5.0 property: identifier, spec name, wire type, where it may appear, value range."""

    id: int
    name: str
    wire_type: int
    contexts: int
    minimum: int = 0
    maximum: int = 0  # only for integer wire types
    repeatable: bool = False  # may appear more than once; decoded into a list

    @property
    def key(self) -> str:
        """Key of this property in a decoded properties dict."""
        return USER_PROPERTIES_KEY if self.id == USER_PROPERTY else self.name


PROPERTIES: tuple[Property, ...] = (
    Property(1, "payload_format_indicator", BYTE, IN_WILL | IN_OTHER, 0, 1),
    Property(2, "message_expiry_interval", FOUR_BYTE_INT, IN_WILL | IN_OTHER, 0, U32_MAX),
    Property(3, "content_type", UTF8, IN_WILL | IN_OTHER),
    Property(8, "response_topic", UTF8, IN_WILL | IN_OTHER),
    Property(9, "correlation_data", BINARY, IN_WILL | IN_OTHER),
    Property(11, "subscription_identifier", VARINT, IN_OTHER, 1, VARINT_MAX, True),
    Property(
        17, "session_expiry_interval", FOUR_BYTE_INT, IN_CONNECT | IN_CONNACK | IN_OTHER, 0, U32_MAX
    ),
    Property(18, "assigned_client_identifier", UTF8, IN_CONNACK),
    Property(19, "server_keep_alive", TWO_BYTE_INT, IN_CONNACK, 0, U16_MAX),
    Property(21, "authentication_method", UTF8, IN_CONNECT | IN_CONNACK | IN_OTHER),
    Property(22, "authentication_data", BINARY, IN_CONNECT | IN_CONNACK | IN_OTHER),
    Property(23, "request_problem_information", BYTE, IN_CONNECT, 0, 1),
    Property(24, "will_delay_interval", FOUR_BYTE_INT, IN_WILL, 0, U32_MAX),
    Property(25, "request_response_information", BYTE, IN_CONNECT, 0, 1),
    Property(26, "response_information", UTF8, IN_CONNACK),
    Property(28, "server_reference", UTF8, IN_CONNACK | IN_OTHER),
    Property(31, "reason_string", UTF8, IN_CONNACK | IN_OTHER),
    Property(33, "receive_maximum", TWO_BYTE_INT, IN_CONNECT | IN_CONNACK, 1, U16_MAX),
    Property(34, "topic_alias_maximum", TWO_BYTE_INT, IN_CONNECT | IN_CONNACK, 0, U16_MAX),
    Property(35, "topic_alias", TWO_BYTE_INT, IN_OTHER, 1, U16_MAX),
    Property(36, "maximum_qos", BYTE, IN_CONNACK, 0, 1),
    Property(37, "retain_available", BYTE, IN_CONNACK, 0, 1),
    Property(
        38,
        "user_property",
        UTF8_PAIR,
        IN_CONNECT | IN_WILL | IN_CONNACK | IN_OTHER,
        repeatable=True,
    ),
    Property(39, "maximum_packet_size", FOUR_BYTE_INT, IN_CONNECT | IN_CONNACK, 1, U32_MAX),
    Property(40, "wildcard_subscription_available", BYTE, IN_CONNACK, 0, 1),
    Property(41, "subscription_identifier_available", BYTE, IN_CONNACK, 0, 1),
    Property(42, "shared_subscription_available", BYTE, IN_CONNACK, 0, 1),
)
PROPERTY_BY_ID: dict[int, Property] = {p.id: p for p in PROPERTIES}
PROPERTY_BY_NAME: dict[str, Property] = {p.name: p for p in PROPERTIES}
SESSION_EXPIRY_INTERVAL = 17
ASSIGNED_CLIENT_IDENTIFIER = 18
AUTHENTICATION_METHOD = 21
AUTHENTICATION_DATA = 22  # needs AUTHENTICATION_METHOD [MQTT-3.1.2.11.10]
MAX_PROPERTY_ID = 63  # property ids fit a 64-bit "seen" mask

# --- Not MQTT at all: only to name the reason ---------------------------------------------------

TLS_RECORD_START = b"\x16\x03"  # handshake record, TLS major version 3 (ClientHello)
HTTP_METHODS: tuple[bytes, ...] = (
    b"GET",
    b"POST",
    b"HEAD",
    b"PUT",
    b"OPTIONS",
    b"CONNECT",
    b"DELETE",
    b"PATCH",
    b"TRACE",
)

# --- Reasons: stable words carried by MalformedPacket.reason -------------------------------------

NOT_CONNECT = "not-connect"
NOT_CONNACK = "not-connack"
TLS_HANDSHAKE = "tls-handshake"
HTTP_REQUEST = "http-request"
BAD_FIXED_HEADER_FLAGS = "bad-fixed-header-flags"
BAD_REMAINING_LENGTH = "bad-remaining-length"
PACKET_TOO_LARGE = "packet-too-large"
LENGTH_MISMATCH = "length-mismatch"
BAD_PROTOCOL_NAME = "bad-protocol-name"
BAD_PROTOCOL_VERSION = "bad-protocol-version"
PROTOCOL_NAME_LEVEL_MISMATCH = "protocol-name-level-mismatch"
RESERVED_FLAG = "reserved-flag"
BAD_WILL_FLAGS = "bad-will-flags"
BAD_WILL_QOS = "bad-will-qos"
PASSWORD_WITHOUT_USERNAME = "password-without-username"
BAD_UTF8 = "bad-utf8"
BAD_PROPERTY_LENGTH = "bad-property-length"
BAD_PROPERTY = "bad-property"
DUPLICATE_PROPERTY = "duplicate-property"
PROPERTY_VALUE = "property-value"
AUTH_DATA_WITHOUT_METHOD = "auth-data-without-method"
BAD_REASON_CODE = "bad-reason-code"
BAD_SESSION_PRESENT = "bad-session-present"

# Start of the stream -> reason: a stream that is a prefix of one of these (as far as it
# goes) gets that reason instead of "not-connect".  Only the word differs: any first
# byte but 0x10 is already an error.
FOREIGN_PROTOCOLS: tuple[tuple[bytes, str], ...] = (
    (TLS_RECORD_START, TLS_HANDSHAKE),
    *((method + b" ", HTTP_REQUEST) for method in HTTP_METHODS),
)
