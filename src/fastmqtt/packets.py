"""Encoders for the few MQTT packets fastmqtt sends itself (demo clients, health checks,
the load generator). Inspection of what clients send lives in parse.py."""

from __future__ import annotations

_PROTOCOL = {3: b"\x00\x06MQIsdp", 4: b"\x00\x04MQTT", 5: b"\x00\x04MQTT"}

DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
# MQTT 5 DISCONNECT reason codes fastmqtt sends
SERVER_SHUTTING_DOWN = 0x8B
ADMINISTRATIVE_ACTION = 0x98
USE_ANOTHER_SERVER = 0x9C
SERVER_MOVED = 0x9D
# how the connection log names the end of a client asked to leave with that code
LEAVE_REASONS = {
    ADMINISTRATIVE_ACTION: "kicked",
    USE_ANOTHER_SERVER: "moved",
    SERVER_MOVED: "moved",
    SERVER_SHUTTING_DOWN: "moved",
}


def disconnect_v5(reason: int) -> bytes:
    """An MQTT 5 DISCONNECT with a reason code and no properties."""
    return bytes([0xE0, 2, reason, 0])


def varint(n: int) -> bytes:
    """MQTT variable byte integer (remaining length, property lengths)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect(
    client_id: str,
    version: int = 4,
    keepalive: int = 60,
    clean: bool = True,
    username: str | None = None,
    password: bytes | None = None,
    session_expiry: int | None = None,
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    body = _PROTOCOL[version] + bytes([version, flags]) + keepalive.to_bytes(2, "big")
    if version == 5:  # the session expiry interval, or no properties
        expiry = b"" if session_expiry is None else b"\x11" + session_expiry.to_bytes(4, "big")
        body += varint(len(expiry)) + expiry
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += len(password).to_bytes(2, "big") + password
    return _packet(0x10, body)


def subscribe(packet_id: int, topic: str, qos: int = 0, version: int = 4) -> bytes:
    props = b"\x00" if version == 5 else b""
    return _packet(0x82, packet_id.to_bytes(2, "big") + props + utf8(topic) + bytes([qos]))


def publish_header(topic: str, payload_size: int, version: int = 4) -> bytes:
    """Everything of a QoS 0, not retained PUBLISH before its payload."""
    variable = utf8(topic) + (b"\x00" if version == 5 else b"")
    return b"\x30" + varint(len(variable) + payload_size) + variable


def publish(topic: str, payload: bytes, version: int = 4) -> bytes:
    """QoS 0, not retained."""
    return publish_header(topic, len(payload), version) + payload


def connack(code: int, version: int = 4, session_present: bool = False) -> bytes:
    """CONNACK with a 3.1/3.1.1 return code or a 5.0 reason code (no properties)."""
    body = bytes([int(session_present), code])
    return _packet(0x20, body + b"\x00" if version == 5 else body)
