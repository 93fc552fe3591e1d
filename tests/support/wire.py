"""A raw MQTT client over any of fastmqtt's client transports (TCP, TLS, WebSocket, WebSocket
over TLS): it writes exactly the bytes a test crafts, in the writes the test chooses, and reads
back whole MQTT packets in the order they arrived, so that order and integrity can be checked
byte for byte."""

from __future__ import annotations

import os
import socket
import ssl
import time

from fastmqtt import ws_spec as spec
from fastmqtt.websocket import FrameDecoder, encode_frame, head_end

UPGRADE = (
    b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: mqtt\r\n\r\n"
)


def split_packets(data: bytes | bytearray) -> tuple[list[bytes], bytes]:
    """Whole MQTT packets at the start of ``data``, and the incomplete rest."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        length, shift, i = 0, 0, pos + 1
        while i < len(data) and i - pos <= 4:
            byte = data[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        else:
            break  # the remaining length has not all arrived
        if len(data) < i + length:
            break
        out.append(bytes(data[pos : i + length]))
        pos = i + length
    return out, bytes(data[pos:])


class Wire:
    """One connection to ``port``: ``tls`` is a client context (None: plain TCP), ``ws`` says
    whether MQTT travels in WebSocket frames (one masked binary frame per ``send``)."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, ws: bool = False) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock: socket.socket = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
        self.ws = ws
        self.inbox = b""  # MQTT bytes received and not yet taken as packets
        self.controls: list[tuple[int, bytes]] = []  # WebSocket control frames received
        self.eof = False
        if ws:
            self.sock.sendall(UPGRADE)
            head = b""
            while head_end(head) < 0:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the upgrade")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101 "):
                raise ConnectionError(f"upgrade refused: {head[:40]!r}")
            self.decoder = FrameDecoder(masked=False)
            self._take(head[head_end(head) :])

    def frame(self, data: bytes, opcode: int = spec.OP_BINARY) -> bytes:
        """``data`` as this client puts it on the wire."""
        return encode_frame(opcode, data, os.urandom(4)) if self.ws else data

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.frame(data))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _take(self, data: bytes) -> None:
        if self.ws:
            payload, controls = self.decoder.feed(data)
            self.controls += controls
            data = payload
        self.inbox += data

    def packets(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """The next ``count`` packets; fewer if the connection ends or ``timeout`` passes."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            got, self.inbox = split_packets(self.inbox)
            out += got
            if len(out) >= count or self.eof or time.monotonic() >= deadline:
                self.inbox = b"".join(out[count:]) + self.inbox
                return out[:count]
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.eof = True
            self._take(chunk)

    def close(self) -> None:
        self.sock.close()
