"""PROXY protocol v1/v2 headers: tell the broker the real client address.

Spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt (sections 2.1, 2.2).
Encoding runs once per backend connection and parsing once per accepted connection
(``accept_proxy``, test backends), so plain Python is fast enough; ``parse`` still
checks every length against the bytes present before reading them.

Addresses are ``(host, port)`` with ``host`` an IP literal. IPv4-mapped IPv6
addresses (what a ``[::]`` listener reports for IPv4 clients) are sent as IPv4.
When source and destination families differ, v1 sends ``PROXY UNKNOWN`` and v2
maps the IPv4 side into IPv6, as HAProxy does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

from fastmqtt.errors import MalformedPacket

Address = tuple[str, int]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address

V1_PREFIX = b"PROXY "
V1_MAX = 107  # longest v1 line, CRLF included (spec 2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16  # signature, version/command, family/transport, length
V2_MAX = V2_HEADER + 0xFFFF

# v2 version/command byte (high nibble version 2, low nibble command).
V2_LOCAL = 0x20
V2_PROXY = 0x21
# v2 family/transport byte: address family (high nibble), transport (low nibble).
AF_UNSPEC = 0x00
TCP_OVER_IPV4 = 0x11
UDP_OVER_IPV4 = 0x12
TCP_OVER_IPV6 = 0x21
UDP_OVER_IPV6 = 0x22
UNIX_STREAM = 0x31
UNIX_DGRAM = 0x32
# Length of the address block per family nibble (spec 2.2: ipv4, ipv6, unix).
_ADDRESS_LEN = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}

# TLV types (spec 2.2.1 - 2.2.7).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
# Aliases under the names the brief uses for the SSL sub-TLVs.
PP2_TYPE_SSL_VERSION = PP2_SUBTYPE_SSL_VERSION
PP2_TYPE_SSL_CN = PP2_SUBTYPE_SSL_CN
PP2_TYPE_SSL_CIPHER = PP2_SUBTYPE_SSL_CIPHER
PP2_TYPE_SSL_SIG_ALG = PP2_SUBTYPE_SSL_SIG_ALG
PP2_TYPE_SSL_KEY_ALG = PP2_SUBTYPE_SSL_KEY_ALG
# Bits of the first byte of a PP2_TYPE_SSL value.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


class ProxyHeader(NamedTuple):
    """A parsed header. ``src``/``dst`` are None for LOCAL, UNKNOWN, UNSPEC and unix."""

    version: int
    command: str  # "PROXY" or "LOCAL"
    src: Address | None
    dst: Address | None
    tlvs: tuple[tuple[int, bytes], ...]
    length: int  # bytes of the header; the payload starts here


# -- encoding ---------------------------------------------------------------------


def _ip(host: str) -> IP:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port!r}")
    return port


def encode_v1(src: Address, dst: Address) -> bytes:
    """Text header: ``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` (UNKNOWN if families differ)."""
    sip, dip = _ip(src[0]), _ip(dst[0])
    sport, dport = _port(src[1]), _port(dst[1])
    if sip.version != dip.version:
        return b"PROXY UNKNOWN\r\n"
    return f"PROXY TCP{sip.version} {sip} {dip} {sport} {dport}\r\n".encode("ascii")


def _as_v6(ip: IP) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
    return ip


def _encode_tlvs(tlvs: Sequence[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"TLV type must be 0..255 and value at most 65535 bytes: {kind!r}")
        out += bytes((kind,)) + len(value).to_bytes(2, "big") + bytes(value)
    return bytes(out)


def _v2(command: int, family: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 header longer than 65535 bytes")
    return V2_SIGNATURE + bytes((command, family)) + len(body).to_bytes(2, "big") + body


def encode_v2(
    src: Address | None, dst: Address | None, tlvs: Sequence[tuple[int, bytes]] = ()
) -> bytes:
    """Binary header: PROXY over TCP/IPv4 or TCP/IPv6, or LOCAL when ``src`` is None."""
    if src is None or dst is None:
        return _v2(V2_LOCAL, AF_UNSPEC, _encode_tlvs(tlvs))
    sip, dip = _ip(src[0]), _ip(dst[0])
    ports = _port(src[1]).to_bytes(2, "big") + _port(dst[1]).to_bytes(2, "big")
    if sip.version == dip.version == 4:
        family = TCP_OVER_IPV4
    else:
        family, sip, dip = TCP_OVER_IPV6, _as_v6(sip), _as_v6(dip)
    return _v2(V2_PROXY, family, sip.packed + dip.packed + ports + _encode_tlvs(tlvs))


def encode_v2_local() -> bytes:
    """LOCAL command: the connection is the proxy's own (health checks)."""
    return encode_v2(None, None)


# -- parsing ----------------------------------------------------------------------


def _bad(offset: int, detail: str, reason: str = "bad-proxy-header") -> MalformedPacket:
    return MalformedPacket(reason, offset, detail)


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """Parse a v1 or v2 header at the start of ``data``; None when more bytes are needed.

    Raises ``MalformedPacket`` (reason ``bad-proxy-header``, or ``bad-proxy-tlv``)
    with the offset of the offending byte.
    """
    head = bytes(data[:1])
    if head == b"P":
        return _parse_v1(bytes(data[:V1_MAX]))
    if head == b"\r":
        return _parse_v2(bytes(data[:V2_MAX]))
    if not head:
        return None
    raise _bad(0, "neither a PROXY v1 nor a v2 signature")


def _check_prefix(buf: bytes, prefix: bytes) -> bool:
    """True when ``buf`` holds all of ``prefix``; False when it holds a part of it."""
    n = min(len(buf), len(prefix))
    for i in range(n):
        if buf[i] != prefix[i]:
            raise _bad(i, "bad signature")
    return n == len(prefix)


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    if not _check_prefix(buf, V1_PREFIX):
        return None
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) >= V1_MAX:
            raise _bad(V1_MAX - 1, "v1 line longer than 107 bytes")
        return None
    try:
        line = buf[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise _bad(exc.start, "v1 line is not ASCII") from None
    parts = line.split(" ")
    if parts[1] == "UNKNOWN":  # the rest of the line is to be ignored (spec 2.1)
        return ProxyHeader(1, "PROXY", None, None, (), end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise _bad(len(V1_PREFIX), f"expected TCP4, TCP6 or UNKNOWN and 4 fields: {line!r}")
    version = int(parts[1][3])
    src = (_v1_ip(parts[2], version, line), _v1_port(parts[4], line))
    dst = (_v1_ip(parts[3], version, line), _v1_port(parts[5], line))
    return ProxyHeader(1, "PROXY", src, dst, (), end + 2)


def _v1_ip(text: str, version: int, line: str) -> str:
    try:
        ip = None if "%" in text else ipaddress.ip_address(text)  # no IPv6 zone ids
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        raise _bad(line.index(text), f"not an IPv{version} address: {text!r}")
    return str(ip)


def _v1_port(text: str, line: str) -> int:
    # Decimal 0..65535 without sign or leading zeros (spec 2.1).
    if not text.isascii() or not text.isdigit() or len(text) > 5 or text != str(int(text)):
        raise _bad(line.rindex(text), f"bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise _bad(line.rindex(text), f"port out of range: {port}")
    return port


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    if not _check_prefix(buf, V2_SIGNATURE) or len(buf) < V2_HEADER:
        return None
    ver_cmd, fam = buf[12], buf[13]
    if ver_cmd >> 4 != 2:
        raise _bad(12, f"version {ver_cmd >> 4}, expected 2")
    if ver_cmd & 0x0F > 1:
        raise _bad(12, f"unknown command {ver_cmd & 0x0F}")
    if fam >> 4 not in _ADDRESS_LEN or fam & 0x0F > 2:
        raise _bad(13, f"unknown family/transport 0x{fam:02x}")
    total = V2_HEADER + int.from_bytes(buf[14:16], "big")
    if len(buf) < total:
        return None
    addr_len = _ADDRESS_LEN[fam >> 4]
    if total - V2_HEADER < addr_len:
        raise _bad(14, f"length {total - V2_HEADER} too short for family 0x{fam:02x}")
    tlvs = _parse_tlvs(buf, V2_HEADER + addr_len, total)
    if ver_cmd == V2_LOCAL:
        return ProxyHeader(2, "LOCAL", None, None, tlvs, total)
    src, dst = _v2_addresses(buf[V2_HEADER : V2_HEADER + addr_len], fam >> 4)
    return ProxyHeader(2, "PROXY", src, dst, tlvs, total)


def _v2_addresses(block: bytes, family: int) -> tuple[Address | None, Address | None]:
    if family not in (0x1, 0x2):  # UNSPEC and unix sockets carry no IP address
        return None, None
    n = 4 if family == 0x1 else 16
    src = ipaddress.ip_address(block[:n])
    dst = ipaddress.ip_address(block[n : 2 * n])
    sport = int.from_bytes(block[2 * n : 2 * n + 2], "big")
    dport = int.from_bytes(block[2 * n + 2 : 2 * n + 4], "big")
    return (str(src), sport), (str(dst), dport)


def _parse_tlvs(buf: bytes, pos: int, end: int) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    while pos < end:
        if end - pos < 3:
            raise _bad(pos, "truncated TLV header", "bad-proxy-tlv")
        size = int.from_bytes(buf[pos + 1 : pos + 3], "big")
        if end - pos - 3 < size:
            raise _bad(pos + 1, f"TLV length {size} beyond the header", "bad-proxy-tlv")
        tlvs.append((buf[pos], buf[pos + 3 : pos + 3 + size]))
        pos += 3 + size
    return tuple(tlvs)
