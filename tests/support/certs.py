"""TLS material for tests, from trustme: a CA, server certificates, client certificates, and
a second CA whose certificates fastmqtt must not trust."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certs:
    ca: str  # PEM of the trusted CA
    server: str  # chain + key, for localhost / 127.0.0.1
    server_cert: str  # the same, split into certificate and key
    server_key: str
    a_example: str  # chain + key for a.example
    b_wildcard: str  # chain + key for *.b.example
    client: str  # client certificate (CN "device-7") + key, signed by the CA
    stranger: str  # client certificate + key from another CA
    ca_obj: trustme.CA

    def client_context(self, cert: str | None = None) -> ssl.SSLContext:
        """What a device uses: trusts our CA, optionally presents ``cert``."""
        context = ssl.create_default_context(cafile=self.ca)
        if cert is not None:
            context.load_cert_chain(cert)
        return context


def make_certs(directory: Path) -> Certs:
    ca, other = trustme.CA(), trustme.CA()

    def write(name: str, blob: trustme.Blob) -> str:
        path = directory / name
        blob.write_to_path(str(path))
        return str(path)

    server = ca.issue_cert("localhost", "127.0.0.1")
    return Certs(
        ca=write("ca.pem", ca.cert_pem),
        server=write("server.pem", server.private_key_and_cert_chain_pem),
        server_cert=write("server.crt", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        a_example=write("a.pem", ca.issue_cert("a.example").private_key_and_cert_chain_pem),
        b_wildcard=write("b.pem", ca.issue_cert("*.b.example").private_key_and_cert_chain_pem),
        client=write(
            "client.pem",
            ca.issue_cert("device-7", common_name="device-7").private_key_and_cert_chain_pem,
        ),
        stranger=write("stranger.pem", other.issue_cert("evil").private_key_and_cert_chain_pem),
        ca_obj=ca,
    )


def toml_value(value: object) -> str:
    """A TOML inline value: strings, numbers, booleans, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def tls_line(**keys: object) -> str:
    """``tls = { ... }`` for a frontend or backend section."""
    return f"tls = {toml_value(keys)}\n"
