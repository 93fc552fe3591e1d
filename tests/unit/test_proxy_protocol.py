"""PROXY protocol v1/v2: spec vectors, round trips, malformed input, and a real HAProxy."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.haproxy import HAProxy

from fastmqtt import proxy_protocol as pp
from fastmqtt.errors import MalformedPacket
from fastmqtt.tools.brokers import free_port

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")


# -- v1 (spec 2.1) ---------------------------------------------------------------------


def test_v1_spec_example() -> None:
    header = pp.encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert pp.parse(header + b"GET /") == pp.ProxyHeader(
        1, "PROXY", ("192.168.0.1", 56324), ("192.168.0.11", 443), (), len(header)
    )


def test_v1_worst_case_lengths_from_the_spec() -> None:
    v4 = pp.encode_v1(("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert len(v4) == 56  # "worst case (optional fields set to 0xff)" for TCP4
    ffff = ":".join(["ffff"] * 8)
    v6 = pp.encode_v1((ffff, 65535), (ffff, 65535))
    assert len(v6) == 104
    unknown = f"PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n".encode()
    assert len(unknown) == pp.V1_MAX == 107
    assert pp.parse(unknown) == pp.ProxyHeader(1, "PROXY", None, None, (), 107)


def test_v1_families() -> None:
    assert pp.encode_v1(("::1", 1), ("::2", 2)) == b"PROXY TCP6 ::1 ::2 1 2\r\n"
    assert pp.encode_v1(("::1", 1), ("10.0.0.1", 2)) == b"PROXY UNKNOWN\r\n"
    # A [::] listener reports IPv4 clients as IPv4-mapped: they are sent as IPv4.
    assert pp.encode_v1(("::ffff:10.0.0.9", 1), ("10.0.0.1", 2)).startswith(b"PROXY TCP4 10.0.0.9 ")


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", 6),  # field count
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 6),
        (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", 19),  # family mismatch
        (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", 11),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", 11),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", 27),  # leading zero
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", 29),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", 27),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", 6),  # double space
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xb2\r\n", 29),
        (b"PROXY " + b"x" * 101, 106),  # 107 bytes and no CRLF
        (b"PRXY", 2),
        (b"GET / HTTP/1.1\r\n", 0),
    ],
)
def test_v1_malformed(data: bytes, offset: int) -> None:
    with pytest.raises(MalformedPacket) as err:
        pp.parse(data)
    assert err.value.reason == "bad-proxy-header"
    assert err.value.offset == offset


# -- v2 (spec 2.2) -------------------------------------------------------------------


def test_v2_ipv4_bytes_per_spec() -> None:
    header = pp.encode_v2(("127.0.0.1", 56324), ("127.0.0.2", 1883))
    assert header == (
        SIG
        + b"\x21"  # version 2, command PROXY
        + b"\x11"  # AF_INET, STREAM
        + b"\x00\x0c"  # 12 bytes of addresses
        + bytes([127, 0, 0, 1, 127, 0, 0, 2])
        + (56324).to_bytes(2, "big")
        + (1883).to_bytes(2, "big")
    )


def test_v2_ipv6_with_tlvs_bytes_per_spec() -> None:
    tlvs = [(pp.PP2_TYPE_AUTHORITY, b"mqtt.example.com"), (pp.PP2_TYPE_NOOP, b"")]
    header = pp.encode_v2(("2001:db8::7", 1), ("2001:db8::1", 8883), tlvs)
    body = (
        ipaddress.IPv6Address("2001:db8::7").packed
        + ipaddress.IPv6Address("2001:db8::1").packed
        + b"\x00\x01\x22\xb3"
        + b"\x02\x00\x10mqtt.example.com"
        + b"\x04\x00\x00"
    )
    assert header == SIG + b"\x21\x21" + len(body).to_bytes(2, "big") + body
    parsed = pp.parse(header)
    assert parsed.tlvs == tuple(tlvs)
    assert (parsed.src, parsed.dst) == (("2001:db8::7", 1), ("2001:db8::1", 8883))


def test_v2_local_and_mixed_families() -> None:
    assert pp.encode_v2_local() == SIG + b"\x20\x00\x00\x00"
    assert pp.parse(pp.encode_v2_local()) == pp.ProxyHeader(2, "LOCAL", None, None, (), 16)
    mixed = pp.parse(pp.encode_v2(("10.0.0.1", 5), ("::1", 6)))  # mapped into IPv6, as HAProxy
    assert mixed.src == (str(ipaddress.IPv6Address("::ffff:10.0.0.1")), 5)


def test_v2_unspec_and_unix_carry_no_address() -> None:
    unix = SIG + b"\x21\x31" + (216).to_bytes(2, "big") + b"/tmp/a".ljust(216, b"\x00")
    assert pp.parse(unix)[2:4] == (None, None)
    unspec = SIG + b"\x21\x00\x00\x03" + b"\x04\x00\x00"
    assert pp.parse(unspec) == pp.ProxyHeader(2, "PROXY", None, None, ((4, b""),), 19)


@pytest.mark.parametrize(
    ("tail", "reason", "offset"),
    [
        (b"\x11\x11\x00\x0c" + b"\x00" * 12, "bad-proxy-header", 12),  # version 1 in v2 form
        (b"\x22\x11\x00\x0c" + b"\x00" * 12, "bad-proxy-header", 12),  # command 2
        (b"\x21\x41\x00\x0c" + b"\x00" * 12, "bad-proxy-header", 13),  # family 4
        (b"\x21\x13\x00\x0c" + b"\x00" * 12, "bad-proxy-header", 13),  # transport 3
        (b"\x21\x21\x00\x0c" + b"\x00" * 12, "bad-proxy-header", 14),  # 12 < 36 for IPv6
        (b"\x21\x11\x00\x0e" + b"\x00" * 14, "bad-proxy-tlv", 28),  # 2 stray bytes
        (b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\x01\x00\x05\x00", "bad-proxy-tlv", 29),
    ],
)
def test_v2_malformed(tail: bytes, reason: str, offset: int) -> None:
    with pytest.raises(MalformedPacket) as err:
        pp.parse(SIG + tail)
    assert (err.value.reason, err.value.offset) == (reason, offset)


def test_v2_bad_signature() -> None:
    with pytest.raises(MalformedPacket) as err:
        pp.parse(SIG[:5] + b"X" + SIG[6:] + b"\x21\x11\x00\x00")
    assert err.value.offset == 5


@pytest.mark.parametrize(
    "header",
    [
        pp.encode_v1(("10.1.2.3", 4567), ("10.0.0.1", 1883)),
        pp.encode_v2(("10.1.2.3", 4567), ("10.0.0.1", 1883), [(pp.PP2_TYPE_ALPN, b"mqtt")]),
        pp.encode_v2_local(),
    ],
)
def test_every_prefix_is_incomplete_and_payload_is_left_alone(header: bytes) -> None:
    for cut in range(len(header)):
        assert pp.parse(header[:cut]) is None
    connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd"
    for form in (bytes, bytearray, memoryview):
        assert pp.parse(form(header + connect)).length == len(header)


@pytest.mark.parametrize(
    ("src", "dst", "tlvs"),
    [
        (("example.com", 1), ("10.0.0.1", 2), ()),
        (("10.0.0.1", 65536), ("10.0.0.1", 2), ()),
        (("10.0.0.1", -1), ("10.0.0.1", 2), ()),
        (("10.0.0.1", 1), ("10.0.0.1", 2), [(256, b"")]),
        (("10.0.0.1", 1), ("10.0.0.1", 2), [(1, b"x" * 65536)]),
    ],
)
def test_encode_rejects(src: pp.Address, dst: pp.Address, tlvs: list) -> None:
    with pytest.raises(ValueError):
        pp.encode_v2(src, dst, tlvs)
    if not tlvs:
        with pytest.raises(ValueError):
            pp.encode_v1(src, dst)


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(str)
ports = st.integers(0, 65535)
tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=64)), max_size=5)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, tlv_lists)
def test_round_trip(hosts: tuple[str, str], sport: int, dport: int, tlvs: list) -> None:
    src, dst = (hosts[0], sport), (hosts[1], dport)
    v1 = pp.encode_v1(src, dst)
    assert pp.parse(v1) == pp.ProxyHeader(1, "PROXY", src, dst, (), len(v1))
    v2 = pp.encode_v2(src, dst, tlvs)
    assert pp.parse(v2) == pp.ProxyHeader(2, "PROXY", src, dst, tuple(tlvs), len(v2))


@given(st.binary(max_size=80))
def test_garbage_never_crashes(data: bytes) -> None:
    try:
        pp.parse(pp.V2_SIGNATURE + data)
        pp.parse(b"PROXY " + data)
    except MalformedPacket:
        pass


# -- against a real HAProxy --------------------------------------------------------------
# Our header goes to an HAProxy bind with accept-proxy; HAProxy forwards to a socket we
# listen on with its own send-proxy(-v2) header, which `parse` reads: the address we
# claimed must arrive, so HAProxy accepted our encoding and we parse HAProxy's.

HAPROXY_CFG = """
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{front} accept-proxy
    default_backend be
backend be
    server s1 127.0.0.1:{back} {send}
"""


@pytest.fixture
def backend_socket() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(5)
        yield srv


@contextlib.contextmanager
def client_via_haproxy(backend: socket.socket, send: str) -> Iterator[socket.socket]:
    """A client connected to an HAProxy (accept-proxy) that forwards to ``backend``."""
    front = free_port()
    cfg = HAPROXY_CFG.format(front=front, back=backend.getsockname()[1], send=send)
    with HAProxy(cfg, wait_port=front), socket.create_connection(("127.0.0.1", front)) as c:
        c.settimeout(5)
        yield c


def relay_through_haproxy(backend: socket.socket, send: str, header: bytes) -> bytes:
    """Send ``header`` + payload via HAProxy; what our backend received."""
    with client_via_haproxy(backend, send) as client:
        client.sendall(header + b"hello")
        conn, _ = backend.accept()
        with conn:
            return read_header_and_payload(conn)


def read_header_and_payload(conn: socket.socket) -> bytes:
    conn.settimeout(5)
    data = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        parsed = pp.parse(data)
        if parsed is not None and len(data) >= parsed.length + 5:
            break
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("ours", "send", "src", "dst"),
    [
        ("v1", "send-proxy", ("203.0.113.7", 40001), ("198.51.100.1", 1883)),
        ("v2", "send-proxy-v2", ("203.0.113.7", 40001), ("198.51.100.1", 1883)),
        ("v2", "send-proxy-v2", ("2001:db8::7", 40002), ("2001:db8::1", 8883)),
        ("v1", "send-proxy-v2", ("2001:db8::7", 40002), ("2001:db8::1", 8883)),
    ],
)
def test_haproxy_accepts_our_headers(
    backend_socket: socket.socket, ours: str, send: str, src: pp.Address, dst: pp.Address
) -> None:
    header = pp.encode_v1(src, dst) if ours == "v1" else pp.encode_v2(src, dst)
    got = relay_through_haproxy(backend_socket, send, header)
    parsed = pp.parse(got)
    assert parsed is not None, got
    assert (parsed.src, parsed.dst) == (src, dst)
    assert got[parsed.length :] == b"hello"  # our header was consumed exactly


@pytest.mark.e2e
def test_haproxy_passes_our_authority_tlv(backend_socket: socket.socket) -> None:
    src, dst = ("203.0.113.9", 5555), ("198.51.100.1", 1883)
    header = pp.encode_v2(src, dst, [(pp.PP2_TYPE_AUTHORITY, b"broker.example.com")])
    got = relay_through_haproxy(
        backend_socket, "send-proxy-v2 proxy-v2-options authority,crc32c", header
    )
    parsed = pp.parse(got)
    assert parsed is not None and parsed.src == src
    tlvs = dict(parsed.tlvs)
    assert tlvs[pp.PP2_TYPE_AUTHORITY] == b"broker.example.com"
    assert len(tlvs[pp.PP2_TYPE_CRC32C]) == 4  # HAProxy's own TLV, parsed alongside


@pytest.mark.e2e
def test_haproxy_refuses_a_broken_header(backend_socket: socket.socket) -> None:
    broken = b"PROXY TCP4 203.0.113.7 198.51.100.1 40001\r\n"  # one port missing
    with client_via_haproxy(backend_socket, "send-proxy-v2") as client:
        client.sendall(broken + b"hello")
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(100) == b""  # HAProxy hung up on us...
    backend_socket.settimeout(0.2)
    with pytest.raises(TimeoutError):
        backend_socket.accept()  # ...and never opened a backend connection
