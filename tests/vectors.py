"""Named CONNECT/CONNACK frames with the verdict each must get (HAProxy mqtt.vtc style).

Hex strings keep the fields apart with spaces: fixed header, protocol name, level,
flags, keepalive, [properties,] payload fields.  ``expect`` is VALID, INCOMPLETE or
the ``MalformedPacket.reason``; ``offset`` is the byte the error must point at.
Shared by tests/unit/test_parse.py and bench/bench_parse.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastmqtt.packets import varint

VALID = "valid"
INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class Vector:
    name: str
    hex: str
    expect: str
    what: str  # the rule this vector tests
    offset: int = -1
    kwargs: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # attributes a valid one must have

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.hex)


def mqtt_string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def connect_with_will_payload(size: int) -> bytes:
    """3.1.1 CONNECT, client "big", will on topic "t" carrying <size> bytes (benchmarks)."""
    body = (
        mqtt_string("MQTT")
        + bytes([4, 0x06])
        + (60).to_bytes(2, "big")
        + mqtt_string("big")
        + mqtt_string("t")
        + mqtt_string(bytes(range(256)) * (size // 256) + bytes(size % 256))
    )
    return b"\x10" + varint(len(body)) + body


MINIMAL_311 = "10 10 00044d515454 04 02 003c 000474657374"
V5_PROPS_WILL = (
    "10 9701 00044d515454 05 ee 003c"
    # properties: session expiry 3600, receive max 20, max packet 1 MiB, topic alias max 10,
    # request response 1, request problem 0, user a=1, user b=2, auth method, auth data
    " 35 1100000e10 210014 2700100000 22000a 1901 1700 26000161000131 26000162000132"
    " 15000b534352414d2d5348412d31 1600020102"
    " 00056465762d35"  # client id "dev-5"
    # will properties: delay 30, payload format 1, expiry 600, content type, response
    # topic, correlation data, user k=v
    " 2e 180000001e 0101 0200000258 03000a746578742f706c61696e 080006726573702f74"
    " 090002cafe 2600016b000176"
    " 000a77696c6c2f746f706963 0004676f6e65 0005616c696365 0006736563726574"
)

# fmt: off
CONNECT_VECTORS: tuple[Vector, ...] = (
    # --- valid -----------------------------------------------------------------------------
    Vector(
        "connect_311_minimal", MINIMAL_311, VALID, "smallest useful 3.1.1 CONNECT",
        fields={"protocol_name": "MQTT", "protocol_version": 4, "bridge": False,
                "client_id": "test", "clean_start": True, "keepalive": 60, "flags": 0x02,
                "username": None, "password": None, "will_topic": None,
                "will_payload": None, "will_qos": 0, "will_retain": False,
                "properties": {}, "will_properties": {}, "packet_length": 18},
    ),
    Vector(
        "connect_31_minimal", "10 12 00064d5149736470 03 02 003c 000474657374", VALID,
        "MQTT 3.1: name MQIsdp with level 3",
        fields={"protocol_name": "MQIsdp", "protocol_version": 3, "client_id": "test"},
    ),
    Vector(
        "connect_5_minimal", "10 11 00044d515454 05 02 003c 00 000474657374", VALID,
        "5.0 with an empty property block",
        fields={"protocol_version": 5, "client_id": "test", "properties": {}},
    ),
    Vector(
        "connect_311_empty_client_id", "10 0c 00044d515454 04 02 003c 0000", VALID,
        "an empty client id is the broker's to accept or refuse, not ours",
        fields={"client_id": ""},
    ),
    Vector(
        "connect_311_all_fields",
        "10 25 00044d515454 04 f6 001e 00026331 0003772f74 0003627965 000475736572"
        " 00057061007373",
        VALID, "will QoS 2 + retain, user name, binary password containing NUL",
        fields={"client_id": "c1", "will_topic": "w/t", "will_payload": b"bye",
                "will_qos": 2, "will_retain": True, "username": "user",
                "password": b"pa\x00ss", "keepalive": 30, "clean_start": True},
    ),
    Vector(
        "connect_5_props_will", V5_PROPS_WILL, VALID, "every CONNECT and will property",
        fields={
            "client_id": "dev-5", "will_qos": 1, "will_retain": True,
            "will_topic": "will/topic", "will_payload": b"gone",
            "username": "alice", "password": b"secret",
            "properties": {
                "session_expiry_interval": 3600, "receive_maximum": 20,
                "maximum_packet_size": 1048576, "topic_alias_maximum": 10,
                "request_response_information": 1, "request_problem_information": 0,
                "user_properties": [("a", "1"), ("b", "2")],
                "authentication_method": "SCRAM-SHA-1", "authentication_data": b"\x01\x02",
            },
            "will_properties": {
                "will_delay_interval": 30, "payload_format_indicator": 1,
                "message_expiry_interval": 600, "content_type": "text/plain",
                "response_topic": "resp/t", "correlation_data": b"\xca\xfe",
                "user_properties": [("k", "v")],
            },
        },
    ),
    Vector(
        "connect_bridge_311", "10 14 00044d515454 84 02 003c 00086272696467652d31", VALID,
        "Mosquitto bridge: level 0x84 is 3.1.1 with the bridge bit",
        fields={"protocol_version": 4, "bridge": True, "client_id": "bridge-1"},
    ),
    Vector(
        "connect_5_password_only", "10 14 00044d515454 05 42 003c 00 00027035 0003746f6b",
        VALID, "5.0 allows a password without a user name",
        fields={"username": None, "password": b"tok"},
    ),
    Vector(
        "connect_311_utf8_client_id",
        "10 1a 00044d515454 04 02 003c 000e636166c3a92de6b8a92df09f8ca1", VALID,
        "2-, 3- and 4-byte UTF-8 sequences",
        fields={"client_id": "caf\u00e9-\u6e29-\U0001f321"},
    ),
    Vector(
        "connect_311_two_byte_length",
        "10 8401 00044d515454 04 02 003c 0078" + "78" * 120, VALID,
        "remaining length 132 takes two bytes",
        fields={"client_id": "x" * 120, "packet_length": 135},
    ),
    Vector(
        "connect_then_publish", MINIMAL_311 + " 3005 0003612f62 00", VALID,
        "bytes after the CONNECT are not part of it",
        fields={"packet_length": 18, "client_id": "test"},
    ),
    # --- incomplete --------------------------------------------------------------------------
    Vector("empty", "", INCOMPLETE, "nothing yet"),
    Vector("first_byte_only", "10", INCOMPLETE, "remaining length not arrived"),
    Vector("remaining_length_cut", "10 ff ff", INCOMPLETE, "cut inside the length field"),
    Vector("body_cut", "10 10 00044d5154", INCOMPLETE, "cut inside the body"),
    # --- not a CONNECT -----------------------------------------------------------------------
    Vector("publish_first", "30 05 0003612f62", "not-connect", "PUBLISH before CONNECT", 0),
    Vector("pingreq_first", "c0 00", "not-connect", "PINGREQ before CONNECT", 0),
    Vector("connect_flags_set", "12 10", "bad-fixed-header-flags", "CONNECT flags 0x2", 0),
    Vector("tls_hello", "16 03 01 00 f4 01", "tls-handshake", "TLS ClientHello", 0),
    Vector("tls_first_byte", "16", "tls-handshake", "0x16 alone already looks like TLS", 0),
    Vector("tls_like_not_tls", "16 00", "bad-fixed-header-flags", "0x16 then not 0x03", 0),
    Vector("http_get", "474554202f6d71747420485454502f312e31", "http-request",
           "GET /mqtt HTTP/1.1 on an MQTT port", 0),
    Vector("http_options_prefix", "4f505449", "http-request", "OPTI: decided early", 0),
    Vector("http_lookalike", "474554582f", "not-connect", "GETX is no method", 0),
    # --- fixed header ------------------------------------------------------------------------
    Vector("remaining_length_5_bytes", "10 ff ff ff ff", "bad-remaining-length",
           "continuation bit on the 4th length byte", 4),
    Vector("too_large", "10 ff ff 03", "packet-too-large",
           "65539 bytes announced, default limit 64 KiB: decided from the header", 1),
    Vector("too_large_configured", MINIMAL_311, "packet-too-large",
           "18 bytes over a 17-byte limit", 1, kwargs={"max_size": 17}),
    Vector("exactly_max_size", MINIMAL_311, VALID, "a packet of exactly max_size passes",
           kwargs={"max_size": 18}),
    # --- variable header ---------------------------------------------------------------------
    Vector("bad_protocol_name_lowercase", "10 10 00046d717474 04 02 003c 000474657374",
           "bad-protocol-name", "names are case-sensitive (HAProxy accepts 'mqtt')", 2),
    Vector("bad_protocol_name_http2", "10 10 000448545450 04 02 003c 000474657374",
           "bad-protocol-name", "some other 4-byte name", 2),
    Vector("bad_protocol_version_6", "10 10 00044d515454 06 02 003c 000474657374",
           "bad-protocol-version", "level 6 does not exist", 8),
    Vector("mismatch_mqtt_level_3", "10 10 00044d515454 03 02 003c 000474657374",
           "protocol-name-level-mismatch", "level 3 goes with MQIsdp", 8),
    Vector("mismatch_mqisdp_level_4", "10 12 00064d5149736470 04 02 003c 000474657374",
           "protocol-name-level-mismatch", "MQIsdp is 3.1 only", 10),
    Vector("bridge_refused", "10 14 00044d515454 84 02 003c 00086272696467652d31",
           "bad-protocol-version", "bridge level on a frontend that refuses bridges", 8,
           kwargs={"accept_bridge": False}),
    Vector("bridge_bad_level", "10 10 00044d515454 86 02 003c 000474657374",
           "bad-protocol-version", "bridge bit on a level that does not exist", 8),
    Vector("reserved_flag", "10 10 00044d515454 04 03 003c 000474657374", "reserved-flag",
           "CONNECT flag bit 0 set [MQTT-3.1.2-3]", 9),
    Vector("will_qos_without_will", "10 10 00044d515454 04 0a 003c 000474657374",
           "bad-will-flags", "will QoS 1 without the will flag [MQTT-3.1.2-13]", 9),
    Vector("will_retain_without_will", "10 10 00044d515454 04 22 003c 000474657374",
           "bad-will-flags", "will retain without the will flag [MQTT-3.1.2-15]", 9),
    Vector("will_qos_3", "10 16 00044d515454 04 1e 003c 000474657374 000174 00016d",
           "bad-will-qos", "will QoS 3 [MQTT-3.1.2-14]", 9),
    Vector("password_without_username_311",
           "10 14 00044d515454 04 42 003c 000474657374 00027077",
           "password-without-username", "3.1.1 password flag alone [MQTT-3.1.2-22]", 9),
    Vector("keepalive_cut", "10 09 00044d515454 04 02 00", "length-mismatch",
           "remaining length ends inside the keepalive", 10),
    # --- payload -----------------------------------------------------------------------------
    Vector("utf8_overlong", "10 10 00044d515454 04 02 003c 00046162c0af", "bad-utf8",
           "overlong '/' in the client id", 16),
    Vector("utf8_surrogate", "10 10 00044d515454 04 02 003c 000461eda080", "bad-utf8",
           "UTF-16 surrogate D800 encoded in UTF-8", 15),
    Vector("utf8_nul", "10 11 00044d515454 04 02 003c 00057465007374", "bad-utf8",
           "U+0000 in the client id [MQTT-1.5.4-2]", 16),
    Vector("utf8_truncated", "10 10 00044d515454 04 02 003c 00047465e6b8", "bad-utf8",
           "3-byte sequence cut by the string end", 16),
    Vector("utf8_bad_username", "10 11 00044d515454 04 82 003c 00026f6b 0001ff", "bad-utf8",
           "0xFF in the user name", 18),
    Vector("trailing_byte", "10 11 00044d515454 04 02 003c 000474657374 00",
           "length-mismatch", "a byte left over after the last field", 18),
    Vector("client_id_past_end", "10 10 00044d515454 04 02 003c 000974657374",
           "length-mismatch", "client id length points past the packet", 12),
    Vector("username_flag_no_username", "10 10 00044d515454 04 82 003c 000474657374",
           "length-mismatch", "user name flag set, field missing", 18),
    # --- 5.0 properties ----------------------------------------------------------------------
    Vector("v5_subscription_identifier", "10 13 00044d515454 05 02 003c 020b01 000474657374",
           "bad-property", "subscription identifier belongs to PUBLISH", 13),
    Vector("v5_unknown_property", "10 13 00044d515454 05 02 003c 027f01 000474657374",
           "bad-property", "property id 0x7F is not defined", 13),
    Vector("v5_will_prop_in_connect",
           "10 16 00044d515454 05 02 003c 051800000005 000474657374",
           "bad-property", "will delay interval among CONNECT properties", 13),
    Vector("v5_connect_prop_in_will",
           "10 1d 00044d515454 05 06 003c 00 000474657374 051100000005 000174 00016d",
           "bad-property", "session expiry among will properties", 20),
    Vector("v5_duplicate_session_expiry",
           "10 1b 00044d515454 05 02 003c 0a11000000011100000002 000474657374",
           "duplicate-property", "session expiry interval twice", 18),
    Vector("v5_receive_maximum_0", "10 14 00044d515454 05 02 003c 03210000 000474657374",
           "property-value", "receive maximum 0", 13),
    Vector("v5_maximum_packet_size_0",
           "10 16 00044d515454 05 02 003c 052700000000 000474657374",
           "property-value", "maximum packet size 0", 13),
    Vector("v5_request_response_2", "10 13 00044d515454 05 02 003c 021902 000474657374",
           "property-value", "request response information 2", 13),
    Vector("v5_will_payload_format_2",
           "10 1a 00044d515454 05 06 003c 00 000474657374 020102 000174 00016d",
           "property-value", "payload format indicator 2 in the will", 20),
    Vector("v5_auth_data_without_method",
           "10 15 00044d515454 05 02 003c 0416000178 000474657374",
           "auth-data-without-method", "authentication data alone", 12),
    Vector("v5_property_length_5_bytes",
           "10 15 00044d515454 05 02 003c 8080808001 000474657374",
           "bad-property-length", "property length longer than 4 bytes", 15),
    Vector("v5_property_past_end", "10 13 00044d515454 05 02 003c 091100 000474657374",
           "length-mismatch", "property length points past the packet", 12),
    Vector("v5_property_value_cut", "10 0f 00044d515454 05 02 003c 021100 0000",
           "length-mismatch", "session expiry value cut by the property length", 14),
    Vector("v5_user_property_bad_utf8",
           "10 18 00044d515454 05 02 003c 072600016b0001f8 000474657374",
           "bad-utf8", "0xF8 in a user property value", 19),
)

CONNACK_VECTORS: tuple[Vector, ...] = (
    Vector("connack_311_accepted", "20 02 00 00", VALID, "3.1.1 connection accepted",
           fields={"session_present": False, "reason_code": 0, "properties": {},
                   "packet_length": 4}),
    Vector("connack_311_session_present", "20 02 01 00", VALID, "session present",
           fields={"session_present": True}),
    Vector("connack_311_not_authorized", "20 02 00 05", VALID, "return code 5",
           fields={"reason_code": 5}),
    Vector("connack_5_props", "20 1e 00 00 1b 1200096175746f2d31413242 210064 2401"
           " 13001e 26000178000179", VALID, "5.0 CONNACK with an assigned client id",
           kwargs={"protocol_version": 5},
           fields={"assigned_client_identifier": "auto-1A2B", "server_reference": None,
                   "properties": {"assigned_client_identifier": "auto-1A2B",
                                  "receive_maximum": 100, "maximum_qos": 1,
                                  "server_keep_alive": 30,
                                  "user_properties": [("x", "y")]}}),
    Vector("connack_5_use_another_server", "20 13 00 9c 10 1c000d62726f6b65722d323a31383833",
           VALID, "0x9C Use another server with a server reference",
           kwargs={"protocol_version": 5},
           fields={"reason_code": 0x9C, "server_reference": "broker-2:1883"}),
    Vector("connack_5_from_311_broker", "20 02 00 01", VALID,
           "a 3.1.1 broker refusing a 5.0 client answers in 3.1.1 form",
           kwargs={"protocol_version": 5}, fields={"reason_code": 1, "properties": {}}),
    Vector("connack_cut", "20 02 00", INCOMPLETE, "second byte not arrived"),
    Vector("connack_not_connack", MINIMAL_311, "not-connack", "a CONNECT is no CONNACK", 0),
    Vector("connack_flags_set", "21 02 00 00", "bad-fixed-header-flags", "type ok, flags 1", 0),
    Vector("connack_reserved_flags", "20 02 02 00", "reserved-flag", "ack flag bit 1", 2),
    Vector("connack_311_code_6", "20 02 00 06", "bad-reason-code", "3.1.1 codes stop at 5", 3),
    Vector("connack_5_code_1", "20 03 00 01 00", "bad-reason-code",
           "0x01 is not a 5.0 CONNACK reason code", 3, kwargs={"protocol_version": 5}),
    Vector("connack_session_present_refused", "20 02 01 05", "bad-session-present",
           "session present with a refusal [MQTT-3.2.2-4]", 2),
    Vector("connack_311_long", "20 03 00 00 00", "length-mismatch",
           "3.1.1 CONNACK is exactly two bytes", 4),
    Vector("connack_5_client_only_property", "20 05 00 00 021701", "bad-property",
           "request problem information is CONNECT-only", 5, kwargs={"protocol_version": 5}),
    Vector("connack_5_maximum_qos_2", "20 05 00 00 022402", "property-value",
           "maximum QoS 2 is expressed by leaving it out", 5, kwargs={"protocol_version": 5}),
)
# fmt: on
