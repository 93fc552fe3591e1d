"""Inspect the first packet of an MQTT connection: is it a valid CONNECT (or CONNACK)?

``inspect_connect(data, max_size=65536, accept_bridge=True) -> Connect | None``
    ``data`` is what the client has sent so far (bytes, bytearray or memoryview).
    ``None``: incomplete, wait for more bytes.  ``Connect``: a complete valid CONNECT
    at the start of ``data``; ``Connect.packet_length`` bytes belong to it.  Anything
    else raises ``MalformedPacket(reason, offset)``.
``inspect_connack(data, protocol_version=4, max_size=65536) -> Connack | None``
    The same for the broker's answer to a client of ``protocol_version`` (3, 4, 5).

Reasons (``MalformedPacket.reason``, stable words for logs and metrics):

==============================  ===============================================================
not-connect / not-connack       first byte is another packet type (or not MQTT at all)
tls-handshake                   stream starts like a TLS ClientHello (0x16 0x03): TLS on plain port
http-request                    stream starts like an HTTP request line ("GET ", "POST ", ...)
bad-fixed-header-flags          packet type right, low nibble of the first byte not 0
bad-remaining-length            remaining length field longer than 4 bytes
packet-too-large                announced packet larger than ``max_size`` (decided from the header)
length-mismatch                 fields do not exactly fill the remaining length, or a length
                                points past the end of the packet
bad-protocol-name               protocol name is neither "MQTT" nor "MQIsdp" (case-sensitive)
bad-protocol-version            level not 3/4/5 (or a 0x8X bridge level with accept_bridge=False)
protocol-name-level-mismatch    MQIsdp with a level other than 3, or MQTT with level 3
reserved-flag                   CONNECT flag bit 0, or CONNACK flag bits 7-1, set
bad-will-flags                  will QoS or will retain set without the will flag
bad-will-qos                    will QoS 3
password-without-username       password flag without user name flag (3.1 and 3.1.1)
bad-utf8                        ill-formed UTF-8 (overlong, surrogate, > U+10FFFF) or U+0000
bad-property-length             5.0 property length field longer than 4 bytes
bad-property                    5.0 property id unknown or not allowed in this packet
duplicate-property              5.0 property other than user_property given twice
property-value                  5.0 property value out of range (receive_maximum 0, ...)
auth-data-without-method        5.0 authentication_data without authentication_method
bad-reason-code                 CONNACK return/reason code undefined for the protocol level
bad-session-present             CONNACK session present with a non-zero code
==============================  ===============================================================

``offset`` is the index in ``data`` of the byte where the packet went wrong (the
start of the field at fault, or the first bad byte of a UTF-8 string).

The compiled ``fastmqtt._parse`` or its plain-Python twin ``fastmqtt._parse_py`` is
chosen once, here, by ``fastmqtt._accel``; a missing compiled module is an import
error, never a silent fallback.
"""

from __future__ import annotations

from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.errors import MalformedPacket
from fastmqtt.mqtt_spec import (
    AUTH_DATA_WITHOUT_METHOD,
    BAD_FIXED_HEADER_FLAGS,
    BAD_PROPERTY,
    BAD_PROPERTY_LENGTH,
    BAD_PROTOCOL_NAME,
    BAD_PROTOCOL_VERSION,
    BAD_REASON_CODE,
    BAD_REMAINING_LENGTH,
    BAD_SESSION_PRESENT,
    BAD_UTF8,
    BAD_WILL_FLAGS,
    BAD_WILL_QOS,
    DUPLICATE_PROPERTY,
    HTTP_REQUEST,
    LENGTH_MISMATCH,
    NOT_CONNACK,
    NOT_CONNECT,
    PACKET_TOO_LARGE,
    PASSWORD_WITHOUT_USERNAME,
    PROPERTY_VALUE,
    PROTOCOL_NAME_LEVEL_MISMATCH,
    RESERVED_FLAG,
    TLS_HANDSHAKE,
)

if NO_EXTENSIONS:
    from fastmqtt._parse_py import Connack, Connect, inspect_connack, inspect_connect
else:
    from fastmqtt._parse import (  # type: ignore[no-redef]
        Connack,
        Connect,
        inspect_connack,
        inspect_connect,
    )

__all__ = [
    "AUTH_DATA_WITHOUT_METHOD",
    "BAD_FIXED_HEADER_FLAGS",
    "BAD_PROPERTY",
    "BAD_PROPERTY_LENGTH",
    "BAD_PROTOCOL_NAME",
    "BAD_PROTOCOL_VERSION",
    "BAD_REASON_CODE",
    "BAD_REMAINING_LENGTH",
    "BAD_SESSION_PRESENT",
    "BAD_UTF8",
    "BAD_WILL_FLAGS",
    "BAD_WILL_QOS",
    "DUPLICATE_PROPERTY",
    "HTTP_REQUEST",
    "LENGTH_MISMATCH",
    "NOT_CONNACK",
    "NOT_CONNECT",
    "PACKET_TOO_LARGE",
    "PASSWORD_WITHOUT_USERNAME",
    "PROPERTY_VALUE",
    "PROTOCOL_NAME_LEVEL_MISMATCH",
    "RESERVED_FLAG",
    "TLS_HANDSHAKE",
    "Connack",
    "Connect",
    "MalformedPacket",
    "inspect_connack",
    "inspect_connect",
]
