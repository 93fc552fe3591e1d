"""WebSocket frames: the compiled reader against its twin (named cases and hypothesis), the
streaming decoder under every chunking, the bridge codec's control-frame answers, and the
upgrade request checks."""

from __future__ import annotations

import base64
import hashlib
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.twins import Implementation, implementations

from fastmqtt import ws_spec as spec
from fastmqtt.errors import MalformedPacket
from fastmqtt.websocket import (
    BridgeCodec,
    FrameDecoder,
    HandshakeError,
    accept_response,
    check_upgrade,
    encode_frame,
    forwarded_request,
    parse_request,
)

IMPLS = [implementation.ws for implementation in implementations()]
MASK = b"\x37\xfa\x21\x3d"


@pytest.fixture
def impl(implementation: Implementation) -> ModuleType:
    return implementation.ws


def outcome(impl: ModuleType, data: bytes, pos: int = 0, masked: bool = True) -> object:
    """The result, or ("error", reason, offset): what both implementations must agree on."""
    try:
        return impl.parse_frame_header(data, pos, masked)
    except MalformedPacket as exc:
        return ("error", exc.reason, exc.offset)


# -- named cases (RFC 6455 sec 5.2, 5.7) ---------------------------------------------------

CASES = [
    ("masked Hello (5.7)", bytes.fromhex("818537fa213d"), True, (True, 1, MASK, 5, 6)),
    ("unmasked Hello from a server", bytes.fromhex("8105"), False, (True, 1, b"", 5, 2)),
    ("16-bit length 256", bytes.fromhex("82fe0100") + MASK, True, (True, 2, MASK, 256, 8)),
    (
        "64-bit length 65536",
        bytes.fromhex("827f0000000000010000"),
        False,
        (True, 2, b"", 65536, 10),
    ),
    ("first fragment", bytes.fromhex("0280") + MASK, True, (False, 2, MASK, 0, 6)),
    ("ping with payload", bytes.fromhex("8983") + MASK, True, (True, 9, MASK, 3, 6)),
    (
        "RSV1 without extension",
        bytes.fromhex("c280") + MASK,
        True,
        ("error", spec.RESERVED_BITS, 0),
    ),
    ("opcode 3 reserved", bytes.fromhex("8380") + MASK, True, ("error", spec.BAD_OPCODE, 0)),
    ("opcode 0xB reserved", bytes.fromhex("8b80") + MASK, True, ("error", spec.BAD_OPCODE, 0)),
    ("fragmented ping", bytes.fromhex("0980") + MASK, True, ("error", spec.CONTROL_FRAGMENTED, 0)),
    ("126-byte close", bytes.fromhex("88fe007e") + MASK, True, ("error", spec.CONTROL_TOO_LONG, 1)),
    ("client frame unmasked", bytes.fromhex("8200"), True, ("error", spec.MASK_EXPECTED, 1)),
    (
        "server frame masked",
        bytes.fromhex("8280") + MASK,
        False,
        ("error", spec.MASK_UNEXPECTED, 1),
    ),
    (
        "64-bit length with the top bit",
        bytes.fromhex("827f8000000000000000"),
        False,
        ("error", spec.LENGTH_TOO_LARGE, 2),
    ),
]


@pytest.mark.parametrize(("what", "data", "masked", "expected"), CASES, ids=[c[0] for c in CASES])
def test_named_headers(
    impl: ModuleType, what: str, data: bytes, masked: bool, expected: object
) -> None:
    assert outcome(impl, data, 0, masked) == expected, what
    if expected[0] != "error":
        for cut in range(len(data)):  # every strict prefix is "not yet"
            assert impl.parse_frame_header(data[:cut], 0, masked) is None


def test_offsets_are_relative_to_the_buffer(impl: ModuleType) -> None:
    data = b"xyz" + bytes.fromhex("8380") + MASK
    assert outcome(impl, data, 3) == ("error", spec.BAD_OPCODE, 3)
    assert impl.parse_frame_header(data, len(data) + 5) is None


def test_unmask_rfc_example(impl: ModuleType) -> None:
    assert impl.unmask(bytes.fromhex("7f9f4d5158"), MASK) == b"Hello"
    assert impl.unmask(bytes.fromhex("4d5158"), MASK, 2) == b"llo"  # resumed mid-payload
    with pytest.raises(ValueError):
        impl.unmask(b"abc", b"\x01\x02")


# -- the compiled reader and the twin agree ------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=20), pos=st.integers(-2, 22), masked=st.booleans())
def test_same_verdict_on_any_bytes(data: bytes, pos: int, masked: bool) -> None:
    verdicts = {repr(outcome(impl, data, pos, masked)) for impl in IMPLS}
    assert len(verdicts) == 1, verdicts


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, bool]:
    masked = draw(st.booleans())
    length = draw(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536]) | st.integers(0, 300))
    first = draw(st.integers(0, 255))
    mask = draw(st.binary(min_size=4, max_size=4)) if masked else b""
    if length < 126:
        head = bytes((first, length | (0x80 if masked else 0)))
    elif length < 65536:
        head = bytes((first, 126 | (0x80 if masked else 0))) + length.to_bytes(2, "big")
    else:
        head = bytes((first, 127 | (0x80 if masked else 0))) + length.to_bytes(8, "big")
    return head + mask, masked


@settings(max_examples=300, deadline=None)
@given(frame=frames(), flip=st.integers(0, 2 * 8 - 1))
def test_same_verdict_on_frame_headers_and_bit_flips(frame: tuple[bytes, bool], flip: int) -> None:
    header, masked = frame
    mutated = bytearray(header)
    mutated[flip // 8] ^= 1 << (flip % 8)
    for data in (header, bytes(mutated)):
        for cut in range(len(data) + 1):
            verdicts = {repr(outcome(impl, data[:cut], 0, masked)) for impl in IMPLS}
            assert len(verdicts) == 1, (data[:cut].hex(), verdicts)


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=600), mask=st.binary(min_size=4, max_size=4), phase=st.integers(0, 7)
)
def test_unmask_agrees_and_is_its_own_inverse(data: bytes, mask: bytes, phase: int) -> None:
    results = {impl.unmask(data, mask, phase) for impl in IMPLS}
    assert len(results) == 1
    assert IMPLS[0].unmask(results.pop(), mask, phase) == data


# -- streaming decoder and bridge codec --------------------------------------------------


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    frame = bytearray(encode_frame(opcode, payload, MASK))
    if not fin:
        frame[0] &= 0x7F
    return bytes(frame)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    ping=st.binary(max_size=20),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=30),
)
def test_decoder_gives_the_byte_stream_whatever_the_chunking(
    parts: list[bytes], ping: bytes, sizes: list[int]
) -> None:
    """One fragmented message with a ping in the middle, fed in arbitrary chunks."""
    opcodes = [spec.OP_BINARY] + [spec.OP_CONTINUATION] * (len(parts) - 1)
    frames = [
        client_frame(op, p, fin=i == len(parts) - 1)
        for i, (op, p) in enumerate(zip(opcodes, parts, strict=True))
    ]
    frames.insert(1, client_frame(spec.OP_PING, ping))
    wire = b"".join(frames)
    decoder = FrameDecoder(masked=True)
    payload, controls, pos, i = b"", [], 0, 0
    while pos < len(wire):
        size = sizes[i % len(sizes)]
        got, ctl = decoder.feed(wire[pos : pos + size])
        payload += got
        controls += ctl
        pos, i = pos + size, i + 1
    assert payload == b"".join(parts)
    assert controls == [(spec.OP_PING, ping)]


def test_decoder_refuses_frames_mqtt_does_not_allow() -> None:
    for frames, reason in [
        (client_frame(spec.OP_TEXT, b"{}"), "ws-text-frame"),
        (client_frame(spec.OP_CONTINUATION, b"x"), "ws-unexpected-continuation"),
        (
            client_frame(spec.OP_BINARY, b"x", fin=False) + client_frame(spec.OP_BINARY, b"y"),
            "ws-expected-continuation",
        ),
    ]:
        with pytest.raises(MalformedPacket) as info:
            FrameDecoder(masked=True).feed(frames)
        assert info.value.reason == reason


def test_bridge_codec_answers_pings_and_echoes_the_close_code() -> None:
    codec = BridgeCodec()
    data, reply, end = codec.decode(
        client_frame(spec.OP_BINARY, b"\x10\x00") + client_frame(spec.OP_PING, b"hi")
    )
    assert (data, reply, end) == (b"\x10\x00", encode_frame(spec.OP_PONG, b"hi"), None)
    data, reply, end = codec.decode(client_frame(spec.OP_CLOSE, (4000).to_bytes(2, "big") + b"bye"))
    assert (data, reply, end) == (b"", encode_frame(spec.OP_CLOSE, b"\x0f\xa0"), "client-closed")
    assert codec.close_code == 4000
    assert codec.closing("server-closed") == b""  # the close was already sent
    assert codec.decode(client_frame(spec.OP_BINARY, b"late")) == (b"", b"", None)


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\x03", spec.CLOSE_PROTOCOL_ERROR), ((1005).to_bytes(2, "big"), spec.CLOSE_PROTOCOL_ERROR)],
    ids=["one-byte", "reserved-1005"],
)
def test_bridge_codec_refuses_bad_close_payloads(payload: bytes, code: int) -> None:
    _, reply, end = BridgeCodec().decode(client_frame(spec.OP_CLOSE, payload))
    assert reply == encode_frame(spec.OP_CLOSE, code.to_bytes(2, "big"))
    assert end == "ws-bad-close-payload"


def test_bridge_codec_goodbyes() -> None:
    assert BridgeCodec().closing("server-closed") == encode_frame(spec.OP_CLOSE, b"\x03\xe8")
    assert BridgeCodec().closing("client-timeout") == encode_frame(spec.OP_CLOSE, b"\x03\xe9")
    assert BridgeCodec().encode(b"\x20\x02\x00\x00") == b"\x82\x04\x20\x02\x00\x00"


# -- the upgrade ---------------------------------------------------------------------------

REQUEST = (
    b"GET /mqtt?x=1 HTTP/1.1\r\nHost: lb\r\nUpgrade: WebSocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: mqttv5, mqtt\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
    b"X-Forwarded-For: 10.1.1.1\r\n\r\n"
)


def test_upgrade_accepted_with_the_rfc_accept_key() -> None:
    request = parse_request(REQUEST)
    assert check_upgrade(request, "/mqtt", ("mqtt", "mqttv3.1")) == "mqtt"
    response = accept_response(request, "mqtt").decode()
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response  # RFC 6455 1.3
    assert response.startswith("HTTP/1.1 101 ") and "Sec-WebSocket-Protocol: mqtt\r\n" in response
    key = base64.b64encode(hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==" + spec.GUID).digest())
    assert key == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_forwarded_request_adds_the_client_and_drops_extensions() -> None:
    forwarded = forwarded_request(parse_request(REQUEST), "192.0.2.5").decode()
    assert "X-Forwarded-For: 10.1.1.1, 192.0.2.5\r\n" in forwarded
    assert "permessage-deflate" not in forwarded
    assert forwarded.startswith("GET /mqtt?x=1 HTTP/1.1\r\n") and forwarded.endswith("\r\n\r\n")


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ((b"GET /mqtt?x=1", b"GET /other"), 404, "ws-bad-path"),
        (
            (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Key: c2hvcnQ="),
            400,
            "ws-bad-key",
        ),
        ((b"Upgrade: WebSocket\r\n", b""), 426, "ws-not-upgrade"),
        ((b"HTTP/1.1\r\nHost", b"HTTP/1.0\r\nHost"), 505, "ws-bad-http-version"),
        ((b"Host: lb", b" Host: lb"), 400, "ws-bad-header"),
        ((b"mqttv5, mqtt", b"wamp"), 400, "ws-bad-subprotocol"),
    ],
    ids=["path", "key", "upgrade", "http-1.0", "header", "subprotocol"],
)
def test_upgrade_refusals(change: tuple[bytes, bytes], status: int, reason: str) -> None:
    with pytest.raises(HandshakeError) as info:
        check_upgrade(parse_request(REQUEST.replace(*change)), "/mqtt", ("mqtt",))
    assert (info.value.status, info.value.reason) == (status, reason)
    assert info.value.response().startswith(f"HTTP/1.1 {status} ".encode())
