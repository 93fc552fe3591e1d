"""The CONNECT/CONNACK inspector over named vectors, against the compiled module and its twin."""

from __future__ import annotations

import contextlib
import ssl
import sys
from types import ModuleType

import pytest
from tests.support.twins import Implementation
from tests.vectors import (
    CONNACK_VECTORS,
    CONNECT_VECTORS,
    INCOMPLETE,
    MINIMAL_311,
    V5_PROPS_WILL,
    VALID,
    Vector,
    connect_with_will_payload,
    varint,
)

import fastmqtt
from fastmqtt import mqtt_spec as spec
from fastmqtt import packets, parse
from fastmqtt.errors import MalformedPacket


@pytest.fixture
def impl(implementation: Implementation) -> ModuleType:
    return implementation.parse


def verdict(inspect, v: Vector) -> tuple[str, int]:
    try:
        result = inspect(v.data, **v.kwargs)
    except MalformedPacket as exc:
        return exc.reason, exc.offset
    return (INCOMPLETE if result is None else VALID), -1


def check_fields(result: object, v: Vector) -> None:
    for name, want in v.fields.items():
        assert getattr(result, name) == want, f"{v.name}: {name}"


@pytest.mark.parametrize("v", CONNECT_VECTORS, ids=lambda v: v.name)
def test_connect_vector(impl: ModuleType, v: Vector) -> None:
    assert verdict(impl.inspect_connect, v) == (v.expect, v.offset), v.what
    if v.expect == VALID:
        check_fields(impl.inspect_connect(v.data, **v.kwargs), v)


@pytest.mark.parametrize("v", CONNACK_VECTORS, ids=lambda v: v.name)
def test_connack_vector(impl: ModuleType, v: Vector) -> None:
    assert verdict(impl.inspect_connack, v) == (v.expect, v.offset), v.what
    if v.expect == VALID:
        check_fields(impl.inspect_connack(v.data, **v.kwargs), v)


@pytest.mark.parametrize(
    "v", [v for v in CONNECT_VECTORS if v.expect == VALID and not v.kwargs], ids=lambda v: v.name
)
def test_every_prefix_is_incomplete(impl: ModuleType, v: Vector) -> None:
    data = v.data
    length = impl.inspect_connect(data).packet_length
    for end in range(length):
        assert impl.inspect_connect(data[:end]) is None, end
    assert impl.inspect_connect(data[:length]).packet_length == length


def test_reason_words_are_the_spec_constants(impl: ModuleType) -> None:
    words = {v.expect for v in CONNECT_VECTORS + CONNACK_VECTORS} - {VALID, INCOMPLETE}
    exported = {getattr(parse, name) for name in parse.__all__ if name.isupper()}
    assert words <= exported
    assert exported == {
        value for name, value in vars(spec).items() if name.isupper() and isinstance(value, str)
    } - {spec.USER_PROPERTIES_KEY}


def test_buffer_types(impl: ModuleType) -> None:
    data = bytes.fromhex(V5_PROPS_WILL)
    want = impl.inspect_connect(data)
    for kind in (bytearray, memoryview):
        got = impl.inspect_connect(kind(data))
        assert (got.client_id, got.properties, got.password) == (
            want.client_id,
            want.properties,
            want.password,
        )


def test_result_survives_caller_reusing_bytearray(impl: ModuleType) -> None:
    buf = bytearray(bytes.fromhex(V5_PROPS_WILL))
    connect = impl.inspect_connect(buf)
    buf[:] = bytes(len(buf))  # the listener recycles its read buffer
    assert connect.client_id == "dev-5"
    assert connect.properties["authentication_method"] == "SCRAM-SHA-1"
    assert connect.will_payload == b"gone"


def test_memoryview_slice_of_larger_buffer(impl: ModuleType) -> None:
    data = b"junk" + bytes.fromhex(MINIMAL_311) + b"\x30\x00"
    assert impl.inspect_connect(memoryview(data)[4:]).client_id == "test"


def test_announced_size_decides_before_the_bytes_arrive(impl: ModuleType) -> None:
    big = connect_with_will_payload(65535)  # just over the 64 KiB default
    for sent in (big[:4], b"\x10" + varint(100_000_000)):
        with pytest.raises(MalformedPacket) as info:
            impl.inspect_connect(sent)
        assert (info.value.reason, info.value.offset) == ("packet-too-large", 1)
    assert impl.inspect_connect(big, max_size=len(big)).packet_length == len(big)
    assert impl.inspect_connect(big[:-1], max_size=len(big)) is None


def test_large_will_payload_is_binary(impl: ModuleType) -> None:
    connect = impl.inspect_connect(connect_with_will_payload(1024))
    assert connect.will_payload == bytes(range(256)) * 4
    assert connect.will_qos == 0 and connect.will_topic == "t"


def test_real_tls_client_hello(impl: ModuleType) -> None:
    # What a TLS client really sends first, from the stdlib's OpenSSL.
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="broker.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    for size in (1, 2, len(hello)):
        with pytest.raises(MalformedPacket) as info:
            impl.inspect_connect(hello[:size])
        assert info.value.reason == "tls-handshake"


@pytest.mark.parametrize("method", spec.HTTP_METHODS, ids=lambda m: m.decode())
def test_http_methods(impl: ModuleType, method: bytes) -> None:
    request = method + b" /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n\r\n"
    for size in (1, len(method), len(request)):
        with pytest.raises(MalformedPacket) as info:
            impl.inspect_connect(request[:size])
        assert (info.value.reason, info.value.offset) == ("http-request", 0)


def test_repr_never_shows_the_password(impl: ModuleType) -> None:
    connect = impl.inspect_connect(bytes.fromhex(V5_PROPS_WILL))
    text = repr(connect)
    assert "secret" not in text and "<hidden>" in text and "dev-5" in text


def test_results_are_read_only_and_not_constructible(impl: ModuleType) -> None:
    connect = impl.inspect_connect(bytes.fromhex(MINIMAL_311))
    with pytest.raises(AttributeError):
        connect.client_id = "other"
    with pytest.raises(TypeError):
        impl.Connect()
    with pytest.raises(TypeError):
        impl.Connack()
    connack = impl.inspect_connack(b"\x20\x02\x00\x00")
    with pytest.raises(AttributeError):
        connack.reason_code = 1


def test_bare_instances_are_harmless(impl: ModuleType) -> None:
    # Python can still reach __new__; such an object must not read outside its bytes.
    for cls in (impl.Connect, impl.Connack):
        bare = cls.__new__(cls)
        with contextlib.suppress(AttributeError):  # the twin has no fields at all
            assert bare.packet_length == 0 and bare.properties == {}
    with contextlib.suppress(AttributeError):
        assert impl.Connect.__new__(impl.Connect).client_id == ""


def test_connack_rejects_unknown_protocol_version(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.inspect_connack(b"\x20\x02\x00\x00", protocol_version=6)


def test_no_references_leak(impl: ModuleType) -> None:
    # Validation and rejection must not leave objects behind (refcounts, freelist).
    good = bytes.fromhex(V5_PROPS_WILL)
    bad = bytes.fromhex("10 10 00044d515454 04 03 003c 000474657374")

    def churn() -> None:
        for _ in range(2000):
            assert impl.inspect_connect(good).properties
            with pytest.raises(MalformedPacket):
                impl.inspect_connect(bad)

    churn()
    before = sys.getallocatedblocks()
    churn()
    assert sys.getallocatedblocks() - before < 1000  # one leak per call would be >= 4000


def test_parse_module_exports() -> None:
    assert parse.inspect_connect is fastmqtt.inspect_connect
    assert parse.Connect is fastmqtt.Connect
    assert parse.inspect_connack is fastmqtt.inspect_connack
    assert parse.Connack is fastmqtt.Connack
    assert parse.MalformedPacket is MalformedPacket


def test_a_refused_connect_says_its_level_and_whether_the_client_id_is_at_fault(
    impl: ModuleType,
) -> None:
    """What answering it takes (access.malformed_connack), from the scanner itself: the level
    byte as the bytes show it, also past what a size limit lets the scan read, and the field."""
    cases = [
        (packets.connect("a\x00b", version=5), {}, (spec.BAD_UTF8, 5, "client_id")),
        (packets.connect("ok", 4, username="\x00"), {}, (spec.BAD_UTF8, 4, None)),
        (packets.connect("x" * 3000, 5), {"max_size": 1024}, (spec.PACKET_TOO_LARGE, 5, None)),
        (
            packets.connect("ok", 5).replace(b"MQTT\x05", b"MQTX\x85"),
            {},
            (spec.BAD_PROTOCOL_NAME, 0x85, None),
        ),
        (b"GET / HTTP/1.1\r\n\r\n", {}, (spec.HTTP_REQUEST, None, None)),
    ]
    for data, kwargs, expected in cases:
        with pytest.raises(MalformedPacket) as caught:
            impl.inspect_connect(data, **kwargs)
        assert (caught.value.reason, caught.value.level, caught.value.field) == expected, data
