"""Property tests: generated CONNECTs/CONNACKs and their mutations through every inspector.

A small independent encoder builds packets from a model (every version, flag and
property combination); each implementation must decode the model back, return None
on every strict prefix, and, on mutated bytes, give exactly the same outcome
(result and fields, or reason and offset) as the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.corpus import corpus
from tests.support.twins import implementations
from tests.vectors import (
    CONNACK_VECTORS,
    CONNECT_VECTORS,
    mqtt_string,
    varint,
)

from fastmqtt import mqtt_spec as spec
from fastmqtt.errors import MalformedPacket

IMPLS = [implementation.parse for implementation in implementations()]
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONNECT_FIELDS = [
    "packet_length",
    "protocol_name",
    "protocol_version",
    "bridge",
    "flags",
    "clean_start",
    "keepalive",
    "client_id",
    "username",
    "password",
    "will_topic",
    "will_payload",
    "will_qos",
    "will_retain",
    "properties",
    "will_properties",
]
CONNACK_FIELDS = [
    "packet_length",
    "session_present",
    "reason_code",
    "properties",
    "assigned_client_identifier",
    "server_reference",
]

# --- an encoder of its own, driven by the spec tables only for wire types --------------------


def encode_value(wire: int, value: Any) -> bytes:
    if wire == spec.BYTE:
        return bytes([value])
    if wire == spec.TWO_BYTE_INT:
        return value.to_bytes(2, "big")
    if wire == spec.FOUR_BYTE_INT:
        return value.to_bytes(4, "big")
    if wire == spec.UTF8_PAIR:
        return mqtt_string(value[0]) + mqtt_string(value[1])
    return mqtt_string(value)  # UTF8 and BINARY


def encode_properties(items: list[tuple[str, Any]]) -> bytes:
    body = b"".join(
        bytes([spec.PROPERTY_BY_NAME[name].id])
        + encode_value(spec.PROPERTY_BY_NAME[name].wire_type, value)
        for name, value in items
    )
    return varint(len(body)) + body


def properties_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in items:
        if name == "user_property":
            out.setdefault(spec.USER_PROPERTIES_KEY, []).append(value)
        else:
            out[name] = value
    return out


@dataclass
class ConnectModel:
    version: int
    bridge: bool
    clean_start: bool
    keepalive: int
    client_id: str
    username: str | None
    password: bytes | None
    will: tuple[str, bytes, int, bool] | None
    properties: list[tuple[str, Any]] = field(default_factory=list)
    will_properties: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def flags(self) -> int:
        topic_payload_qos_retain = self.will or ("", b"", 0, False)
        return (
            (0x02 if self.clean_start else 0)
            | (0x04 if self.will else 0)
            | (topic_payload_qos_retain[2] << 3)
            | (0x20 if topic_payload_qos_retain[3] else 0)
            | (0x40 if self.password is not None else 0)
            | (0x80 if self.username is not None else 0)
        )

    def encode(self) -> bytes:
        name = b"MQIsdp" if self.version == 3 else b"MQTT"
        v5 = self.version == 5
        body = mqtt_string(name) + bytes([self.version | (0x80 if self.bridge else 0), self.flags])
        body += self.keepalive.to_bytes(2, "big")
        body += encode_properties(self.properties) if v5 else b""
        body += mqtt_string(self.client_id)
        if self.will:
            body += encode_properties(self.will_properties) if v5 else b""
            body += mqtt_string(self.will[0]) + mqtt_string(self.will[1])
        if self.username is not None:
            body += mqtt_string(self.username)
        if self.password is not None:
            body += mqtt_string(self.password)
        return b"\x10" + varint(len(body)) + body

    def expected(self) -> dict[str, Any]:
        topic, payload, qos, retain = self.will or (None, None, 0, False)
        return {
            "protocol_name": "MQIsdp" if self.version == 3 else "MQTT",
            "protocol_version": self.version,
            "bridge": self.bridge,
            "flags": self.flags,
            "clean_start": self.clean_start,
            "keepalive": self.keepalive,
            "client_id": self.client_id,
            "username": self.username,
            "password": self.password,
            "will_topic": topic,
            "will_payload": payload,
            "will_qos": qos,
            "will_retain": retain,
            "properties": properties_dict(self.properties),
            "will_properties": properties_dict(self.will_properties),
        }


texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
u16 = st.integers(0, spec.U16_MAX)
u32 = st.integers(0, spec.U32_MAX)
CONNECT_PROPERTY_VALUES = {
    "session_expiry_interval": u32,
    "receive_maximum": st.integers(1, spec.U16_MAX),
    "maximum_packet_size": st.integers(1, spec.U32_MAX),
    "topic_alias_maximum": u16,
    "request_response_information": st.integers(0, 1),
    "request_problem_information": st.integers(0, 1),
    "authentication_method": texts,
}
WILL_PROPERTY_VALUES = {
    "will_delay_interval": u32,
    "payload_format_indicator": st.integers(0, 1),
    "message_expiry_interval": u32,
    "content_type": texts,
    "response_topic": texts,
    "correlation_data": st.binary(max_size=8),
}


@st.composite
def property_lists(draw: st.DrawFn, values: dict[str, st.SearchStrategy]) -> list:
    names = draw(st.lists(st.sampled_from(sorted(values)), unique=True))
    items = [(name, draw(values[name])) for name in names]
    if "authentication_method" in names and draw(st.booleans()):
        items.append(("authentication_data", draw(st.binary(max_size=8))))
    items += [
        ("user_property", pair) for pair in draw(st.lists(st.tuples(texts, texts), max_size=3))
    ]
    return draw(st.permutations(items))


@st.composite
def connect_models(draw: st.DrawFn) -> ConnectModel:
    version = draw(st.sampled_from(sorted(spec.PROTOCOL_LEVELS)))
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=12))
    if version < 5 and username is None:
        password = None
    will = draw(
        st.none() | st.tuples(texts, st.binary(max_size=40), st.integers(0, 2), st.booleans())
    )
    v5 = version == 5
    return ConnectModel(
        version=version,
        bridge=draw(st.booleans()),
        clean_start=draw(st.booleans()),
        keepalive=draw(u16),
        client_id=draw(texts),
        username=username,
        password=password,
        will=will,
        properties=draw(property_lists(CONNECT_PROPERTY_VALUES)) if v5 else [],
        will_properties=draw(property_lists(WILL_PROPERTY_VALUES)) if v5 and will else [],
    )


SEEDS = [v.data for v in corpus()] + [v.data for v in CONNECT_VECTORS]


@st.composite
def mutated(draw: st.DrawFn, packets: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(packets))
    kind = draw(
        st.sampled_from(["truncate", "flip", "set", "insert", "delete", "length", "append"])
    )
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "truncate":
        del data[at:]
    elif kind == "flip" and data:
        data[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set" and data:
        data[at] = draw(st.integers(0, 255))
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=4))
    elif kind == "delete":
        del data[at : at + draw(st.integers(1, 4))]
    elif kind == "length" and data:
        # a lying remaining length: same packet, another announced size
        size = 1
        while size < min(len(data), 5) and data[size] & 0x80:
            size += 1
        data[1 : size + 1] = varint(draw(st.integers(0, 2 * len(data))))
    else:
        data += draw(st.binary(min_size=1, max_size=6))
    return bytes(data)


def outcome(inspect: Any, names: list[str], data: bytes, **kwargs: Any) -> tuple:
    """What one implementation made of data; anything but MalformedPacket propagates."""
    try:
        result = inspect(data, **kwargs)
    except MalformedPacket as exc:
        return ("error", exc.reason, exc.offset, exc.level, exc.field)
    if result is None:
        return ("incomplete",)
    return ("valid", tuple(getattr(result, name) for name in names))


def same_everywhere(outcomes: list[tuple]) -> tuple:
    assert all(o == outcomes[0] for o in outcomes), outcomes
    return outcomes[0]


def assert_all_agree(data: bytes, **kwargs: Any) -> tuple:
    return same_everywhere(
        [outcome(m.inspect_connect, CONNECT_FIELDS, data, **kwargs) for m in IMPLS]
    )


# --- the properties ----------------------------------------------------------------------------


@SETTINGS
@given(connect_models())
def test_generated_connect_decodes_to_its_model(model: ConnectModel) -> None:
    data = model.encode()
    want = model.expected()
    for impl in IMPLS:
        connect = impl.inspect_connect(data)
        assert connect.packet_length == len(data)
        assert {name: getattr(connect, name) for name in want} == want


@SETTINGS
@given(connect_models())
def test_every_prefix_of_a_generated_connect_is_incomplete(model: ConnectModel) -> None:
    data = model.encode()
    for impl in IMPLS:
        assert all(impl.inspect_connect(data[:end]) is None for end in range(len(data)))


@settings(SETTINGS, max_examples=600)
@given(mutated(st.sampled_from(SEEDS) | connect_models().map(ConnectModel.encode)))
def test_mutations_get_the_same_verdict_everywhere(data: bytes) -> None:
    assert_all_agree(data)


@SETTINGS
@given(
    mutated(st.sampled_from(SEEDS)),
    st.integers(-1, 300),
    st.booleans(),
)
def test_limits_and_bridge_switch_agree(data: bytes, max_size: int, accept_bridge: bool) -> None:
    assert_all_agree(data, max_size=max_size, accept_bridge=accept_bridge)


@SETTINGS
@given(st.binary(max_size=40) | st.binary(max_size=40).map(lambda b: b"\x10" + b))
def test_arbitrary_bytes_agree(data: bytes) -> None:
    verdict = assert_all_agree(data)
    assert verdict[0] != "valid" or verdict[1][0] <= len(data)


@st.composite
def connacks(draw: st.DrawFn) -> tuple[bytes, int]:
    version = draw(st.sampled_from(sorted(spec.PROTOCOL_LEVELS)))
    codes = spec.CONNACK_REASON_CODES_V5 if version == 5 else spec.CONNACK_RETURN_CODES_V3
    code = draw(st.sampled_from(sorted(codes)))
    body = bytes([draw(st.booleans()) if code == 0 else 0, code])
    if version == 5:
        names = draw(
            st.lists(
                st.sampled_from(
                    [
                        "assigned_client_identifier",
                        "server_reference",
                        "reason_string",
                        "response_information",
                    ]
                ),
                unique=True,
            )
        )
        items = [(name, draw(texts)) for name in names]
        items += [("receive_maximum", draw(st.integers(1, spec.U16_MAX)))]
        body += encode_properties(draw(st.permutations(items)))
    return b"\x20" + varint(len(body)) + body, version


CONNACK_SEEDS = [(v.data, v.kwargs.get("protocol_version", 4)) for v in CONNACK_VECTORS]


@SETTINGS
@given(connacks(), st.sampled_from(CONNACK_SEEDS), st.data())
def test_connacks_and_their_mutations_agree(
    packet: tuple[bytes, int], seed: tuple[bytes, int], data: st.DataObject
) -> None:
    raw, version = packet
    assert all(m.inspect_connack(raw, protocol_version=version) for m in IMPLS)
    for base, level in (packet, seed):
        candidate = data.draw(mutated(st.just(base)))
        same_everywhere(
            [
                outcome(m.inspect_connack, CONNACK_FIELDS, candidate, protocol_version=level)
                for m in IMPLS
            ]
        )
