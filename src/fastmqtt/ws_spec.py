"""WebSocket (RFC 6455) constants shared by the frame readers and the bridge.

Not underscored on purpose: the readable statement of the rules, as mqtt_spec.py is for MQTT.
"""

from __future__ import annotations

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # sec 1.3, for Sec-WebSocket-Accept
VERSION = "13"

# Opcodes (sec 5.2); 0x8 and above are control frames.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
CONTROL = 0x8
DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
MAX_CONTROL_PAYLOAD = 125  # sec 5.5
MAX_PAYLOAD = (1 << 63) - 1  # sec 5.2: the most significant bit of the 64-bit length is 0

# Close codes (sec 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # never sent: "the close frame had no code"
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_INTERNAL_ERROR = 1011

# Reasons a frame header is refused (MalformedPacket.reason), all close 1002.
RESERVED_BITS = "ws-reserved-bits"  # RSV1-3 set without a negotiated extension
BAD_OPCODE = "ws-bad-opcode"  # 0x3-0x7, 0xB-0xF
CONTROL_FRAGMENTED = "ws-control-fragmented"  # a control frame without FIN
CONTROL_TOO_LONG = "ws-control-too-long"  # a control payload above 125 bytes
MASK_EXPECTED = "ws-unmasked"  # a client frame must be masked (sec 5.1)
MASK_UNEXPECTED = "ws-masked"  # a server frame must not be
LENGTH_TOO_LARGE = "ws-length-too-large"  # 64-bit length with its top bit set
