"""MQTT over WebSocket (RFC 6455; MQTT 5.0 sec 6): the HTTP/1.1 upgrade, a streaming frame
decoder, and the bridge codec that turns a client's frames into the MQTT byte stream a plain
broker port expects (and the broker's bytes back into frames).

MQTT is a byte stream to WebSocket: packets may span frames and frames may hold several
packets, so the decoder hands out payload bytes as they arrive, never whole messages. Frame
headers are read and payloads unmasked by the compiled ``fastmqtt._ws`` or its twin
``fastmqtt._ws_py``, chosen once here by ``fastmqtt._accel``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http
from dataclasses import dataclass

from fastmqtt import ws_spec as spec
from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.errors import MalformedPacket

if NO_EXTENSIONS:
    from fastmqtt._ws_py import parse_frame_header, unmask
else:
    from fastmqtt._ws import parse_frame_header, unmask  # type: ignore[no-redef]

__all__ = [
    "BridgeCodec",
    "FrameDecoder",
    "HandshakeError",
    "UpgradeRequest",
    "accept_response",
    "check_upgrade",
    "close_frame",
    "encode_frame",
    "forwarded_request",
    "head_end",
    "parse_frame_header",
    "parse_request",
    "parse_response_status",
    "unmask",
]

MAX_HEAD = 8192  # bytes of request head (line + headers) we accept
HEAD_END = b"\r\n\r\n"
# Data-level reasons (after a well-formed header): MQTT needs binary frames (MQTT 5.0 6.0).
TEXT_FRAME = "ws-text-frame"
UNEXPECTED_CONTINUATION = "ws-unexpected-continuation"
EXPECTED_CONTINUATION = "ws-expected-continuation"
BAD_CLOSE_PAYLOAD = "ws-bad-close-payload"
_CLOSE_CODE_FOR = {
    TEXT_FRAME: spec.CLOSE_UNSUPPORTED_DATA,
    BAD_CLOSE_PAYLOAD: spec.CLOSE_PROTOCOL_ERROR,
}
_NORMAL_ENDS = ("server-closed", "client-closed")
# headers a passthrough must not forward: extensions we did not negotiate with the client
_DROPPED = ("sec-websocket-extensions", "x-forwarded-for")


# -- the upgrade ---------------------------------------------------------------------------


class HandshakeError(Exception):
    """An upgrade request refused with an HTTP error; ``reason`` is the word counters use."""

    def __init__(self, status: int, reason: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers

    def response(self) -> bytes:
        phrase = http.HTTPStatus(self.status).phrase
        body = f"{self.status} {phrase}: {self.reason}\n".encode()
        head = [f"HTTP/1.1 {self.status} {phrase}", "Content-Type: text/plain", "Connection: close"]
        head += [f"Content-Length: {len(body)}", *self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]  # in order, names as sent

    def header(self, name: str) -> str | None:
        """All values of a header (case-insensitive name), joined by ", "; None if absent."""
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> list[str]:
        return [t.strip().lower() for t in (self.header(name) or "").split(",") if t.strip()]


def head_end(data: bytes | bytearray) -> int:
    """Length of the HTTP head at the start of ``data`` (blank line included), or -1 when it
    has not all arrived; HandshakeError 431 when it is longer than MAX_HEAD."""
    end = data.find(HEAD_END, 0, MAX_HEAD + len(HEAD_END))
    if end < 0 and len(data) >= MAX_HEAD:
        raise HandshakeError(431, "ws-head-too-large")
    return -1 if end < 0 else end + len(HEAD_END)


def parse_request(head: bytes) -> UpgradeRequest:
    """The request line and headers of an HTTP/1.1 head; HandshakeError 400/505 if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise HandshakeError(400, "ws-bad-request")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise HandshakeError(400, "ws-bad-request")
    if version != "HTTP/1.1":
        raise HandshakeError(505, "ws-bad-http-version")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(400, "ws-bad-header")
        headers.append((name, value.strip()))
    return UpgradeRequest(method, target, version, tuple(headers))


def check_upgrade(request: UpgradeRequest, path: str, subprotocols: tuple[str, ...]) -> str | None:
    """The subprotocol to answer with (None: the client offered none); HandshakeError when
    the request is not a WebSocket upgrade for ``path`` (RFC 6455 sec 4.2.1)."""
    if request.method != "GET":
        raise HandshakeError(405, "ws-bad-method", ("Allow: GET",))
    if request.target.split("?", 1)[0] != path:
        raise HandshakeError(404, "ws-bad-path")
    upgrade = ("Upgrade: websocket", f"Sec-WebSocket-Version: {spec.VERSION}")
    wants = "websocket" in request.tokens("upgrade") and "upgrade" in request.tokens("connection")
    if not wants:
        raise HandshakeError(426, "ws-not-upgrade", upgrade)
    if request.header("sec-websocket-version") != spec.VERSION:
        raise HandshakeError(426, "ws-bad-version", upgrade)
    if _key_bytes(request.header("sec-websocket-key")) != 16:
        raise HandshakeError(400, "ws-bad-key")
    offered = [t.strip() for t in (request.header("sec-websocket-protocol") or "").split(",")]
    offered = [t for t in offered if t]
    for name in offered:
        if name in subprotocols:
            return name
    if offered:
        raise HandshakeError(400, "ws-bad-subprotocol")
    return None


def _key_bytes(key: str | None) -> int:
    try:
        return len(base64.b64decode(key or "", validate=True))
    except binascii.Error:
        return -1


def accept_response(request: UpgradeRequest, subprotocol: str | None) -> bytes:
    key = (request.header("sec-websocket-key") or "").encode("latin-1")
    accept = base64.b64encode(
        hashlib.sha1(key + spec.GUID).digest()
    ).decode()  # RFC 6455 names SHA-1
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
    lines.append(f"Sec-WebSocket-Accept: {accept}")
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def forwarded_request(request: UpgradeRequest, client_ip: str) -> bytes:
    """The client's upgrade for a passthrough broker, telling it the client's address."""
    lines = [f"{request.method} {request.target} {request.version}"]
    lines += [f"{k}: {v}" for k, v in request.headers if k.lower() not in _DROPPED]
    forwarded = request.header("x-forwarded-for")
    lines.append(f"X-Forwarded-For: {forwarded + ', ' if forwarded else ''}{client_ip}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_response_status(head: bytes) -> int:
    """Status code of an HTTP response head (0 when it is not one)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return 0
    return int(parts[1])


# -- frames ---------------------------------------------------------------------------------


def encode_frame(opcode: int, payload: bytes = b"", mask: bytes | None = None) -> bytes:
    """One final frame; ``mask`` (4 bytes) for frames a client sends."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n | (0x80 if mask else 0)))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 126 | (0x80 if mask else 0))) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127 | (0x80 if mask else 0))) + n.to_bytes(8, "big")
    return head + mask + unmask(payload, mask) if mask else head + payload


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame from the server side; ``None`` sends no status code."""
    body = b"" if code is None else code.to_bytes(2, "big") + reason.encode()[:123]
    return encode_frame(spec.OP_CLOSE, body)


class FrameDecoder:
    """Frames in, payload bytes and control frames out, whatever the chunking.

    A data frame's payload is passed on as it arrives (a 1 GiB frame costs no buffer);
    only a partial header or a partial control frame (at most 139 bytes) waits here.
    Raises MalformedPacket for a broken header or a frame MQTT does not allow.
    """

    __slots__ = ("_in_message", "_left", "_mask", "_pending", "_phase", "masked")

    def __init__(self, masked: bool) -> None:
        self.masked = masked  # client frames are masked, server frames are not
        self._pending = b""
        self._left = 0  # payload bytes of the current data frame still to come
        self._mask = b""
        self._phase = 0
        self._in_message = False

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
        buf = self._pending + data if self._pending else data
        out: list[bytes] = []
        controls: list[tuple[int, bytes]] = []
        pos, n = 0, len(buf)
        while pos < n:
            if self._left:
                pos = self._payload(buf, pos, out)
                continue
            header = parse_frame_header(buf, pos, self.masked)
            if header is None:
                break
            fin, opcode, mask, length, size = header
            if opcode >= spec.CONTROL:
                if n - pos - size < length:
                    break
                body = buf[pos + size : pos + size + length]
                controls.append((opcode, unmask(body, mask) if mask else bytes(body)))
                pos += size + length
                continue
            self._check_sequence(opcode, fin, pos)
            self._left, self._mask, self._phase = length, mask, 0
            pos += size
        self._pending = bytes(buf[pos:])
        return b"".join(out), controls

    def _payload(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        take = min(self._left, len(buf) - pos)
        chunk = buf[pos : pos + take]
        out.append(unmask(chunk, self._mask, self._phase) if self._mask else bytes(chunk))
        self._phase = (self._phase + take) & 3
        self._left -= take
        return pos + take

    def _check_sequence(self, opcode: int, fin: bool, pos: int) -> None:
        """Fragments of one message: binary first, then continuations (RFC 6455 sec 5.4)."""
        if opcode == spec.OP_TEXT:
            raise MalformedPacket(TEXT_FRAME, pos)
        if opcode == spec.OP_CONTINUATION and not self._in_message:
            raise MalformedPacket(UNEXPECTED_CONTINUATION, pos)
        if opcode == spec.OP_BINARY and self._in_message:
            raise MalformedPacket(EXPECTED_CONTINUATION, pos)
        self._in_message = not fin


def _close_code(body: bytes) -> int | None:
    """The status code of a client's close frame (None: none given); MalformedPacket if bad."""
    if not body:
        return None
    code = int.from_bytes(body[:2], "big") if len(body) >= 2 else 0
    reserved = code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000
    if len(body) < 2 or reserved or code >= 5000:
        raise MalformedPacket(BAD_CLOSE_PAYLOAD, 0)
    return code


class BridgeCodec:
    """One client's WebSocket framing in bridge mode (relay_loop.Codec)."""

    __slots__ = ("close_code", "close_sent", "decoder")

    def __init__(self) -> None:
        self.decoder = FrameDecoder(masked=True)
        self.close_sent = False
        self.close_code: int | None = None  # what the client's close frame said

    def decode(self, data: bytes) -> tuple[bytes, bytes, str | None]:
        if self.close_sent:
            return b"", b"", None  # after a close frame nothing more is data (sec 5.5.1)
        try:
            payload, controls = self.decoder.feed(data)
            # only the latest of several pings is answered (RFC 6455 sec 5.5.3)
            last_ping = max(
                (i for i, (op, _) in enumerate(controls) if op == spec.OP_PING), default=-1
            )
            replies = [
                self._control(opcode, body)
                for i, (opcode, body) in enumerate(controls)
                if opcode != spec.OP_PING or i == last_ping
            ]
        except MalformedPacket as exc:
            code = _CLOSE_CODE_FOR.get(exc.reason, spec.CLOSE_PROTOCOL_ERROR)
            return b"", self._close(code), exc.reason
        return payload, b"".join(replies), "client-closed" if self.close_sent else None

    def _control(self, opcode: int, body: bytes) -> bytes:
        if self.close_sent:
            return b""
        if opcode == spec.OP_PING:
            return encode_frame(spec.OP_PONG, body)
        if opcode == spec.OP_CLOSE:
            self.close_code = _close_code(body)
            return self._close(self.close_code)  # echo the code (sec 5.5.1)
        return b""  # an unsolicited pong is a heartbeat: nothing to do

    def _close(self, code: int | None) -> bytes:
        self.close_sent = True
        return close_frame(code)

    def encode(self, data: bytes) -> bytes:
        return encode_frame(spec.OP_BINARY, data)

    def closing(self, reason: str) -> bytes:
        if self.close_sent:
            return b""
        normal = reason in _NORMAL_ENDS
        return self._close(spec.CLOSE_NORMAL if normal else spec.CLOSE_GOING_AWAY)
