"""TLS: termination on frontends (mutual TLS, certificates chosen by SNI, reload), TLS towards
backends, what a finished handshake tells us (for logs and PROXY v2 TLVs), and the certificate
checks `fastmqtt check` runs.

Contexts come from the stdlib ``ssl`` module; uvloop drives the handshakes. A reload builds every
new context first and swaps them in only when all of them loaded, so a bad file never leaves a
frontend half-configured; connections already established keep the context they started with.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fastmqtt.config import BackendTLSConfig, Config, FrontendTLSConfig
from fastmqtt.proxy_protocol import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_SSL,
)
from fastmqtt.proxy_protocol import _encode_tlvs as encode_tlvs

MAX_ALPN_NAME = 255  # a protocol name is one length byte and that many bytes
VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_SNI_ATTR = "fastmqtt_sni"  # where the SNI callback leaves the name the client asked for


class TLSMaterialError(OSError):
    """Certificates, keys, CAs or settings that cannot be used; each problem names its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the client's TLS session says about it."""

    version: str  # "TLSv1.3"
    cipher: str
    sni: str | None  # the server name the client asked for
    client_cn: str | None  # common name of a verified client certificate
    client_cert: bool  # a verified client certificate was presented


def describe(ssl_object: ssl.SSLObject) -> TLSInfo:
    peer = ssl_object.getpeercert() or {}  # empty unless the certificate was verified
    return TLSInfo(
        version=ssl_object.version() or "",
        cipher=(ssl_object.cipher() or ("",))[0],
        sni=getattr(ssl_object, _SNI_ATTR, None),
        client_cn=_common_name(peer.get("subject", ())),
        client_cert=bool(peer),
    )


def ssl_tlv(info: TLSInfo) -> tuple[int, bytes]:
    """PROXY v2 ``PP2_TYPE_SSL`` (proxy-protocol.txt 2.2.5): client flags, verify result
    (0 = a client certificate was verified), then version, CN and cipher sub-TLVs."""
    client = PP2_CLIENT_SSL
    if info.client_cert:
        client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    verify = 0 if info.client_cert else 1
    subs = [(PP2_SUBTYPE_SSL_VERSION, info.version.encode())]
    if info.client_cn is not None:
        subs.append((PP2_SUBTYPE_SSL_CN, info.client_cn.encode()))
    subs.append((PP2_SUBTYPE_SSL_CIPHER, info.cipher.encode()))
    return PP2_TYPE_SSL, bytes((client,)) + verify.to_bytes(4, "big") + encode_tlvs(subs)


def _common_name(subject: object) -> str | None:
    for rdn in subject:  # type: ignore[attr-defined]  # ((("commonName", "x"),), ...)
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


# -- frontends ---------------------------------------------------------------------------


def server_context(config: FrontendTLSConfig, cert: str, key: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[config.min_version]
    context.load_cert_chain(cert, key)
    if config.ca is not None:
        context.load_verify_locations(cafile=config.ca)
    context.verify_mode = VERIFY_MODES[config.verify]
    if config.ciphers is not None:
        context.set_ciphers(config.ciphers)
    if config.alpn:
        context.set_alpn_protocols(list(config.alpn))
    return context


class ServerTLS:
    """The contexts of one frontend: a default, and one per SNI name. Built whole or not at
    all: TLSMaterialError lists every problem (what `fastmqtt check` reports), and a reload
    that meets one keeps the frontend's previous ServerTLS."""

    def __init__(self, config: FrontendTLSConfig, where: str) -> None:
        problems = list(_frontend_problems(config, where))  # where: "frontend.NAME.tls"
        if problems:
            raise TLSMaterialError(problems)
        try:
            default = server_context(config, config.cert, config.key)
            by_name = {e.name: server_context(config, e.cert, e.key) for e in config.sni}
        except (ssl.SSLError, ValueError) as exc:  # a file changed since it was checked
            raise TLSMaterialError([f"{where}: {exc}"]) from None
        default.sni_callback = self._on_sni
        self.config, self.context, self._by_name = config, default, by_name

    def _on_sni(self, ssl_object: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        setattr(ssl_object, _SNI_ATTR, name)
        chosen = self.lookup(name) if name else None
        if chosen is not None:
            ssl_object.context = chosen

    def lookup(self, name: str) -> ssl.SSLContext | None:
        """The context for an SNI name: exact match, then "*." + the name minus its first label."""
        name = name.lower()
        exact = self._by_name.get(name)
        if exact is not None or "." not in name:
            return exact
        return self._by_name.get("*." + name.split(".", 1)[1])


# -- backends ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)  # one per backend TLS table; cleared by a reload
def client_context(config: BackendTLSConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.verify == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif config.ca is not None:
        context.load_verify_locations(cafile=config.ca)
    else:
        context.load_default_certs()
    if config.cert is not None:
        context.load_cert_chain(config.cert, config.key)
    return context


# -- `fastmqtt check`: every file loaded, problems named by config key ------------------------


def check_material(config: Config) -> list[str]:
    """Problems with the certificates, keys and CAs of ``config``: "key.path: text" lines."""
    problems: list[str] = []
    for fe in config.frontends:
        if fe.tls is not None:
            problems += _server_problems(fe.tls, f"frontend.{fe.name}.tls")
    for be in config.backends.values():
        if be.tls is not None:
            problems += _backend_problems(be.tls, f"backend.{be.name}.tls")
    if config.stats is not None and config.stats.tls is not None:
        problems += _server_problems(config.stats.tls, "stats.tls")
    return problems


def _server_problems(tls: FrontendTLSConfig, where: str) -> list[str]:
    """Exactly what serve loads: ServerTLS built, its problems listed."""
    try:
        ServerTLS(tls, where)
    except TLSMaterialError as exc:
        return exc.problems
    return []


def _frontend_problems(tls: FrontendTLSConfig, where: str) -> Iterator[str]:
    yield from _pair_problems(tls.cert, tls.key, where)
    for i, entry in enumerate(tls.sni):
        yield from _pair_problems(entry.cert, entry.key, f"{where}.sni[{i}]")
    if tls.ca is not None:
        yield from _ca_problems(tls.ca, f"{where}.ca")
    if tls.ciphers is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(tls.ciphers)
        except ssl.SSLError:
            yield f"{where}.ciphers: no cipher matches {tls.ciphers!r}"
    for i, name in enumerate(tls.alpn):
        if not (name.isascii() and 1 <= len(name) <= MAX_ALPN_NAME):
            shown = json.dumps(name if len(name) <= 40 else name[:40] + "...", ensure_ascii=False)
            what = f"1 to {MAX_ALPN_NAME} ASCII characters (RFC 7301)"
            yield f"{where}.alpn[{i}]: expected {what}, got {shown} ({len(name)} characters)"


def _backend_problems(tls: BackendTLSConfig, where: str) -> Iterator[str]:
    if tls.cert is not None:
        yield from _pair_problems(tls.cert, tls.key, where)
    if tls.ca is not None:
        yield from _ca_problems(tls.ca, f"{where}.ca")


def _pair_problems(cert: str, key: str | None, where: str) -> Iterator[str]:
    """A certificate (and its key, or the key inside the same PEM) that loads and is valid now."""
    unreadable = [p for p in _unreadable((f"{where}.cert", cert), (f"{where}.key", key))]
    if unreadable:
        yield from unreadable
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        yield f"{where}.{'key' if key else 'cert'}: {_load_error(exc, cert, key)}"
        return
    yield from _validity_problems(cert, f"{where}.cert")


def _unreadable(*entries: tuple[str, str | None]) -> Iterator[str]:
    for where, path in entries:
        if path is not None and not os.access(path, os.R_OK):
            why = "no such file" if not os.path.exists(path) else "not readable"
            yield f"{where}: {path}: {why}"


def _load_error(exc: ssl.SSLError, cert: str, key: str | None) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"{key or cert}: the private key does not match the certificate in {cert}"
    if key is None and exc.reason in ("PEM_LIB", "NO_START_LINE"):
        return f"{cert}: needs the certificate chain and the private key (or set `key`)"
    return f"{key or cert}: cannot load: {exc.reason or exc}"


def _validity_problems(cert: str, where: str) -> Iterator[str]:
    # The stdlib decodes a PEM certificate only through this helper (used by its own tests).
    decoded = ssl._ssl._test_decode_cert(cert)  # type: ignore[attr-defined]
    now = time.time()
    not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    if not_after < now:
        yield f"{where}: {cert}: certificate expired on {decoded['notAfter']}"
    elif ssl.cert_time_to_seconds(decoded["notBefore"]) > now:
        yield f"{where}: {cert}: certificate not valid before {decoded['notBefore']}"


def _ca_problems(ca: str, where: str) -> Iterator[str]:
    unreadable = list(_unreadable((where, ca)))
    if unreadable:
        yield from unreadable
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        yield f"{where}: {ca}: not a PEM CA bundle ({exc.reason or exc})"
