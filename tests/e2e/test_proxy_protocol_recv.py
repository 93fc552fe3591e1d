"""PROXY protocol both ways: fastmqtt behind a balancer (``accept_proxy``, ``trusted_proxies``)
and the v2 TLVs it sends on (ssl with CN and version, authority = SNI, a custom client-id TLV),
seen by a small broker stand-in that parses the header it gets."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from fastmqtt import packets
from fastmqtt.parse import inspect_connack, inspect_connect
from fastmqtt.proxy_protocol import (
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    ProxyHeader,
    encode_v1,
    encode_v2,
    parse,
)
from tests.support.certs import Certs, make_certs, tls_line
from tests.support.haproxy import HAProxy
from tests.support.lb import closed_by_peer, lb_port, wait_until

pytestmark = pytest.mark.e2e

CONNACK_OK = b"\x20\x02\x00\x00"
CLIENT_ID_TLV = 0xE5


class HeaderBackend:
    """Accepts connections, reads the PROXY header (if any) and the CONNECT, answers with a
    CONNACK and keeps the connection until the peer closes. ``headers`` is what it saw."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers: list[ProxyHeader] = []
        self.client_ids: list[str] = []
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listening socket closed: done
            while True:
                conn, _ = self.sock.accept()
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        with conn, contextlib.suppress(OSError):
            while (header := parse(data)) is None:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.headers.append(header)
            data = data[header.length :]
            if header.command == "LOCAL":
                return  # a health check
            while (connect := inspect_connect(data)) is None:
                data += conn.recv(4096)
            self.client_ids.append(connect.client_id)
            conn.sendall(CONNACK_OK)
            while conn.recv(4096):
                pass

    def proxied(self) -> list[ProxyHeader]:
        return [h for h in self.headers if h.command == "PROXY"]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def backend() -> Iterator[HeaderBackend]:
    server = HeaderBackend()
    yield server
    server.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def lb_config(port: int, backend: HeaderBackend, frontend: str = "", extra: str = "") -> str:
    return (
        f'[defaults]\ninspect_delay = "2s"\n'
        f'[frontend.edge]\nbind = "127.0.0.1:{port}"\nbackend = "brokers"\n{frontend}\n'
        f'[backend.brokers]\nsend_proxy = "v2"\n{extra}\n'
        f'[[backend.brokers.server]]\nname = "b1"\naddress = "127.0.0.1:{backend.port}"\n'
    )


def mqtt_connect(sock: socket.socket, client_id: str, prefix: bytes = b"") -> bool:
    """Send [prefix +] CONNECT; True when a CONNACK comes back."""
    sock.sendall(prefix + packets.connect(client_id))
    try:
        return inspect_connack(sock.recv(64)) is not None
    except (ConnectionError, ssl.SSLError):
        return False


def from_address(host: str, port: int) -> socket.socket:
    """A connection to fastmqtt from a chosen loopback source address."""
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(host, 0))


def test_accept_proxy_trusts_only_trusted_proxies(fastmqtt, backend):
    port = lb_port()
    frontend = 'accept_proxy = true\ntrusted_proxies = ["127.0.0.1/32"]\n'
    lb = fastmqtt(lb_config(port, backend, frontend), port=port)
    real = ("203.0.113.7", 4242)
    with from_address("127.0.0.1", port) as s:  # a trusted balancer, v2 header
        assert mqtt_connect(s, "behind-nlb", encode_v2(real, ("198.51.100.1", 1883)))
    with from_address("127.0.0.1", port) as s:  # v1 header
        assert mqtt_connect(s, "behind-v1", encode_v1(("203.0.113.8", 999), ("10.0.0.1", 1883)))
    with from_address("127.0.0.2", port) as s:  # not a balancer, no header: a direct client
        assert mqtt_connect(s, "direct-client")
    with from_address("127.0.0.2", port) as s:  # not a balancer, but claims to be one
        assert not mqtt_connect(s, "spoofer", encode_v2(("192.0.2.66", 1), ("10.0.0.1", 1883)))
        assert closed_by_peer(s)
    with from_address("127.0.0.1", port) as s:  # a balancer that forgot the header
        assert not mqtt_connect(s, "forgetful")
    assert wait_until(lambda: len(backend.proxied()) == 3)
    sources = sorted(h.src for h in backend.proxied() if h.src is not None)
    assert sources[0][0] == "127.0.0.2"  # the direct client's own address
    assert ("203.0.113.7", 4242) in sources and ("203.0.113.8", 999) in sources
    assert backend.client_ids == ["behind-nlb", "behind-v1", "direct-client"]
    for reason in ("untrusted-proxy-header", "missing-proxy-header"):
        assert wait_until(lambda r=reason: any(x.endswith(f" {r}") for x in lb.connection_log()))
    # the carried address (its line comes once the relay's record is taken: wait for it)
    assert wait_until(lambda: any(x.startswith("203.0.113.7:4242 [") for x in lb.connection_log()))


def test_v2_tlvs_ssl_authority_client_id_and_local_checks(fastmqtt, backend, certs):
    """A trusted PROXY header, then TLS on the same socket; the header sent on carries the
    real address, the TLS facts and the client id; health checks send LOCAL."""
    port = lb_port()
    frontend = 'accept_proxy = true\ntrusted_proxies = ["127.0.0.0/8"]\n' + tls_line(
        cert=certs.server, ca=certs.ca, verify="optional"
    )
    extra = (
        f'proxy_tlvs = ["ssl", "authority", "client_id"]\nproxy_client_id_tlv = {CLIENT_ID_TLV}\n'
        'check = { type = "tcp", interval = "300ms", send_proxy = true }\n'
    )
    fastmqtt(lb_config(port, backend, frontend, extra), port=port)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.sendall(encode_v2(("203.0.113.9", 5555), ("198.51.100.1", 8883)))
    context = certs.client_context(certs.client)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert mqtt_connect(tls, "tlv-device")
        version = tls.version()
    assert wait_until(lambda: backend.proxied() != [])
    header = backend.proxied()[0]
    assert header.src == ("203.0.113.9", 5555)
    tlvs = dict(header.tlvs)
    assert tlvs[PP2_TYPE_AUTHORITY] == b"localhost"
    assert tlvs[CLIENT_ID_TLV] == b"tlv-device"
    ssl_value = tlvs[PP2_TYPE_SSL]
    assert ssl_value[0] == 0x07  # PP2_CLIENT_SSL | CERT_CONN | CERT_SESS
    assert ssl_value[1:5] == b"\x00\x00\x00\x00"  # the client certificate was verified
    subs = dict(_sub_tlvs(ssl_value[5:]))
    assert subs[PP2_SUBTYPE_SSL_VERSION] == version.encode()
    assert subs[PP2_SUBTYPE_SSL_CN] == b"device-7"
    assert wait_until(lambda: any(h.command == "LOCAL" for h in backend.headers))


def _sub_tlvs(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 3 <= len(data):
        size = int.from_bytes(data[pos + 1 : pos + 3], "big")
        yield data[pos], data[pos + 3 : pos + 3 + size]
        pos += 3 + size


def test_haproxy_in_front_sends_the_real_address(fastmqtt, backend):
    """client (127.0.0.3) -> HAProxy send-proxy-v2 -> fastmqtt accept_proxy -> broker."""
    port, edge = lb_port(), lb_port()
    frontend = 'accept_proxy = true\ntrusted_proxies = ["127.0.0.1/32"]\n'
    fastmqtt(lb_config(port, backend, frontend), port=port)
    config = (
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n"
        f"listen edge\n  bind 127.0.0.1:{edge}\n"
        f"  server fastmqtt 127.0.0.1:{port} send-proxy-v2 source 127.0.0.1\n"
    )
    with HAProxy(config, wait_port=edge), from_address("127.0.0.3", edge) as s:
        assert mqtt_connect(s, "via-haproxy")
        client_port = s.getsockname()[1]
    assert wait_until(lambda: backend.proxied() != [])
    assert backend.proxied()[0].src == ("127.0.0.3", client_port)
