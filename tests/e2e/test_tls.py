"""TLS termination end to end: trustme certificates, real paho clients, real Mosquitto."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from fastmqtt import packets
from fastmqtt.parse import inspect_connack
from tests.support.certs import Certs, make_certs, tls_line
from tests.support.lb import Client, closed_by_peer, landed, lb_port, recipe, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_client(client_id: str, port: int, context: ssl.SSLContext, **kwargs: object) -> Client:
    client = Client(client_id, port, connect=False, **kwargs)
    client.mqtt.tls_set_context(context)
    return client.connect()


def exchange(port: int, context: ssl.SSLContext, server_hostname: str = "localhost") -> bytes:
    """TLS handshake, a CONNECT, and what comes back (b"" when the connection is refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(packets.connect("refused-device"))
                return tls.recv(64)
        except (ssl.SSLError, ConnectionError):
            return b""


def peer_names(port: int, server_hostname: str | None, certs: Certs) -> list[str]:
    """The DNS names of the certificate fastmqtt presents for ``server_hostname``."""
    context = certs.client_context()
    context.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        return [name for kind, name in tls.getpeercert()["subjectAltName"] if kind == "DNS"]


def test_paho_over_tls_round_trip_and_inspection(brokers, fastmqtt, certs):
    nodes = brokers(2)
    port = lb_port()
    lb = fastmqtt(recipe(nodes, port, frontend=tls_line(cert=certs.server)), port=port)
    client = tls_client("tls-device-1", port, certs.client_context())
    client.subscribe("t/tls")
    client.publish("t/tls", b"over tls")
    assert client.wait_message()
    assert client.messages == [("t/tls", b"over tls")]
    client.close()
    assert "tls-device-1" in landed(nodes)  # the CONNECT was read after termination
    assert wait_until(lambda: any('cid="tls-device-1"' in line for line in lb.connection_log()))


def test_separate_key_file_and_alpn(brokers, fastmqtt, certs):
    (node,) = brokers(1)
    port = lb_port()
    frontend = tls_line(cert=certs.server_cert, key=certs.server_key, alpn=["mqtt"])
    fastmqtt(recipe([node], port, frontend=frontend), port=port)
    context = certs.client_context()
    context.set_alpn_protocols(["mqtt"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "mqtt"
        tls.sendall(packets.connect("alpn-device"))
        assert inspect_connack(tls.recv(64)) is not None


def test_mutual_tls_required(brokers, fastmqtt, certs):
    nodes = brokers(1)
    port = lb_port()
    frontend = tls_line(cert=certs.server, ca=certs.ca, verify="required")
    lb = fastmqtt(recipe(nodes, port, frontend=frontend), port=port)
    device = tls_client("device-7", port, certs.client_context(certs.client))
    device.close()
    before = nodes[0].tcp_connection_count()
    assert exchange(port, certs.client_context()) == b""  # no client certificate
    assert exchange(port, certs.client_context(certs.stranger)) == b""  # another CA's
    assert nodes[0].tcp_connection_count() == before  # refused before any broker connection
    reasons = ("tls-peer-did-not-return-a-certificate", "tls-certificate-verify-failed")
    for reason in reasons:
        assert wait_until(
            lambda r=reason: any(line.endswith(f" {r}") for line in lb.connection_log())
        )


def test_silent_and_plain_clients_on_a_tls_port(brokers, fastmqtt, certs):
    """The handshake is bounded by inspect_delay; plain MQTT on a TLS port is a failed
    handshake; both are counted and never reach a broker."""
    nodes = brokers(1)
    port = lb_port()
    config = recipe(nodes, port, frontend=tls_line(cert=certs.server), inspect_delay="1s")
    lb = fastmqtt(config, port=port)
    before = nodes[0].tcp_connection_count()
    with socket.create_connection(("127.0.0.1", port)) as silent:
        started = time.monotonic()
        assert closed_by_peer(silent, timeout=5)
        assert time.monotonic() - started >= 0.9
    with socket.create_connection(("127.0.0.1", port)) as plain:
        plain.sendall(packets.connect("plain-on-tls"))
        assert closed_by_peer(plain, timeout=5)
    log = lb.connection_log
    assert wait_until(lambda: any(x.endswith(" tls-handshake-timeout") for x in log()))
    assert wait_until(lambda: any(" tls-" in x and "timeout" not in x for x in log()))
    assert nodes[0].tcp_connection_count() == before


def test_sni_chooses_the_certificate(brokers, fastmqtt, certs):
    nodes = brokers(1)
    port = lb_port()
    sni = [
        {"name": "a.example", "cert": certs.a_example},
        {"name": "*.b.example", "cert": certs.b_wildcard},
    ]
    frontend = tls_line(cert=certs.server, sni=sni)
    fastmqtt(recipe(nodes, port, frontend=frontend), port=port)
    assert peer_names(port, "a.example", certs) == ["a.example"]
    assert peer_names(port, "x.b.example", certs) == ["*.b.example"]
    assert peer_names(port, "other.example", certs) == ["localhost"]  # the default
    assert peer_names(port, None, certs) == ["localhost"]  # no SNI at all


def test_sighup_reloads_certificates_without_dropping_connections(
    brokers, fastmqtt, certs, tmp_path
):
    nodes = brokers(1)
    port = lb_port()
    live = tmp_path / "live.pem"
    shutil.copy(certs.server, live)
    lb = fastmqtt(recipe(nodes, port, frontend=tls_line(cert=str(live))), port=port)
    device = tls_client("reload-device", port, certs.client_context())
    device.subscribe("t/reload")
    assert peer_names(port, "localhost", certs) == ["localhost"]
    shutil.copy(certs.a_example, live)
    lb.signal(signal.SIGHUP)
    assert wait_until(lambda: peer_names(port, "localhost", certs) == ["a.example"])
    live.write_text("not a certificate\n")  # a broken file: the previous certificates stay
    lb.signal(signal.SIGHUP)
    assert wait_until(lambda: "keeping the previous certificates" in lb.logs())
    assert peer_names(port, "localhost", certs) == ["a.example"]
    device.publish("t/reload", b"still here")
    assert device.wait_message()
    assert not device.disconnected.is_set()
    device.close()


def test_backend_tls_with_client_certificate(brokers, fastmqtt, certs):
    """fastmqtt -> TLS (verify required, SNI, client certificate) -> fastmqtt -> Mosquitto."""
    nodes = brokers(1)
    inner_port, outer_port = lb_port(), lb_port()
    inner_tls = tls_line(cert=certs.server, ca=certs.ca, verify="required")
    inner = fastmqtt(recipe(nodes, inner_port, frontend=inner_tls), port=inner_port)
    backend_tls = tls_line(ca=certs.ca, sni="localhost", cert=certs.client)
    outer_conf = recipe([], outer_port, backend=backend_tls) + (
        f'[[backend.cluster.server]]\nname = "inner"\naddress = "127.0.0.1:{inner_port}"\n'
    )
    fastmqtt(outer_conf, port=outer_port)
    client = Client("through-two", outer_port)
    client.subscribe("t/two")
    client.publish("t/two", b"hop")
    assert client.wait_message()
    client.close()
    assert "through-two" in landed(nodes)
    assert wait_until(lambda: any('cid="through-two"' in line for line in inner.connection_log()))


def test_check_reports_unusable_material(certs, tmp_path: Path, capsys):
    from fastmqtt.cli import main

    config = tmp_path / "lb.toml"
    config.write_text(
        '[frontend.f]\nbind = "127.0.0.1:8883"\nbackend = "b"\n'
        + tls_line(cert=certs.server_cert, key=certs.a_example, ca="missing-ca.pem")
        + '[backend.b]\n[[backend.b.server]]\nname = "s"\naddress = "127.0.0.1:1883"\n'
    )
    assert main(["check", str(config)]) == 1
    err = capsys.readouterr().err
    assert "frontend.f.tls.key: " in err and "does not match the certificate" in err
    assert "frontend.f.tls.ca: " in err and "no such file" in err


def test_check_reports_alpn_names_the_handshake_cannot_offer(certs, tmp_path: Path, capsys):
    """What `serve` would fail to load (a ValueError or an SSLError from OpenSSL), `check`
    reports with the key path."""
    from fastmqtt.cli import main

    config = tmp_path / "lb.toml"
    config.write_text(
        '[frontend.f]\nbind = "127.0.0.1:8883"\nbackend = "b"\n'
        + tls_line(cert=certs.server, alpn=["mqtt", "x" * 256, "mqtté", "mqtt\u00a0v5"])
        + '[backend.b]\n[[backend.b.server]]\nname = "s"\naddress = "127.0.0.1:1883"\n'
    )
    assert main(["check", str(config)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "frontend.f.tls.alpn[1]",
        "frontend.f.tls.alpn[2]",
        "frontend.f.tls.alpn[3]",
    ]
    assert lines[1].endswith(
        'expected 1 to 255 ASCII characters (RFC 7301), got "mqtté" (5 characters)'
    )


def test_clients_closing_with_close_notify_leave_no_warnings(brokers, fastmqtt, certs):
    """A TLS client that ends with close_notify (an orderly TLS close) ends its pair: TLS has no
    half-close, and the relay says so instead of asking to keep the transport open, which
    asyncio answers with a WARNING line per connection."""
    nodes = brokers(1)
    port = lb_port()
    lb = fastmqtt(recipe(nodes, port, frontend=tls_line(cert=certs.server)), port=port)
    for i in range(20):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(packets.connect(f"notify-{i}"))
            assert inspect_connack(tls.recv(64)) is not None
            tls.unwrap().close()  # close_notify, and the balancer's answer to it
    assert wait_until(lambda: sum(" client-closed" in x for x in lb.connection_log()) == 20)
    assert "eof_received" not in lb.read("stderr.log")
