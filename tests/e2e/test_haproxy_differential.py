"""fastmqtt's CONNECT inspector against real HAProxy 2.6, packet by packet.

HAProxy runs the recipe's rules in front of a small recording backend:

    tcp-request inspect-delay 1s   (the recipe says 10s; only the wait for incomplete input changes)
    tcp-request content reject unless { req.payload(0,0),mqtt_is_valid }

and logs ``req.payload(0,0),mqtt_field_value(connect,client_identifier)`` (hex-encoded, so any
byte survives the log) with the client's source port. Every corpus packet goes to HAProxy on
its own connection and gets one of three outcomes:

* ``accepted``: the backend received it (after a PROXY v2 header that names the client port);
* ``rejected``: HAProxy closed the connection well before the inspect delay;
* ``timed-out``: HAProxy waited for more bytes and closed at the inspect delay.

fastmqtt agrees when ``valid`` / a ``MalformedPacket`` / ``None`` line up with those three, in
that order. Every disagreement must be listed in docs/haproxy-differences.md (vector names in
backticks in its tables); a listed vector that agrees fails the test too, so the document
cannot drift from what HAProxy really does.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastmqtt import parse
from fastmqtt.errors import MalformedPacket
from fastmqtt.tools.brokers import free_port
from tests.support.corpus import INCOMPLETE, LONG_CLIENT_ID, VALID, Vector, by_name, corpus
from tests.support.haproxy import HAProxy
from tests.support.twins import Implementation

pytestmark = pytest.mark.e2e

INSPECT_DELAY = 1.0
PROBE_TIMEOUT = INSPECT_DELAY + 4.0
CONCURRENCY = 16
PAUSE = 0.3
DIFFERENCES_DOC = Path(__file__).resolve().parents[2] / "docs" / "haproxy-differences.md"

ACCEPTED, REJECTED, TIMED_OUT = "accepted", "rejected", "timed-out"

CID_FETCH = "req.payload(0,0),mqtt_field_value(connect,client_identifier)"
HAPROXY_CONFIG = """\
global
    log stdout format raw local0 info
    stats socket {workdir}/admin.sock mode 600 level admin

defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend mqtt
    bind 127.0.0.1:{port}
    tcp-request inspect-delay {delay_ms}ms
    tcp-request content reject unless {{ req.payload(0,0),mqtt_is_valid }}
    tcp-request content set-var(sess.cid) {cid_fetch},hex
    log-format "probe port=%cp cid=%[var(sess.cid)] state=%ts"
    default_backend brokers

backend brokers
    stick-table type string len 32 size 10k expire 30m
    stick on {cid_fetch}
    server broker1 127.0.0.1:{backend_port} send-proxy-v2
"""

_LOG_LINE = re.compile(r"^probe port=(\d+) cid=(\S+) state=(\S+)$", re.MULTILINE)
_PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass
class Outcome:
    kind: str  # ACCEPTED, REJECTED or TIMED_OUT
    seconds: float  # from the last byte sent to the verdict
    forwarded: bytes = b""  # what the backend received after the PROXY header
    client_id: bytes | None = None  # HAProxy's extraction; None when it logs "not found"


class RecordingBackend:
    """A TCP server that plays the broker: it answers ``ACK`` to the first payload byte and
    records everything HAProxy forwards, keyed by the client port from the PROXY v2 header."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> RecordingBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by __exit__
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = bytearray()
        with conn, contextlib.suppress(OSError):  # a stalled probe fails on its own side
            conn.settimeout(PROBE_TIMEOUT)
            while chunk := conn.recv(65536):
                data += chunk
                if len(data) - len(chunk) <= _proxy_header_length(data) < len(data):
                    conn.sendall(b"ACK")  # the first payload byte is here
        header = _proxy_header_length(data)
        with self._lock:
            self.received[_proxy_client_port(data)] = bytes(data[header:])


def _proxy_header_length(data: bytes | bytearray) -> int:
    if len(data) < 16:
        return len(data) + 1  # not even the fixed part yet
    if data[:12] != _PROXY_V2_SIGNATURE:
        raise AssertionError(f"backend got no PROXY v2 header: {bytes(data[:16])!r}")
    return 16 + int.from_bytes(data[14:16], "big")


def _proxy_client_port(data: bytes | bytearray) -> int:
    if data[13] != 0x11:  # TCP over IPv4: src addr, dst addr, src port, dst port
        raise AssertionError(f"unexpected PROXY v2 family {data[13]:#x}")
    return int.from_bytes(data[24:26], "big")


def probe(port: int, vector: Vector) -> tuple[int, str, float]:
    """Send the vector on a fresh connection; return (client port, outcome, seconds to verdict)."""
    with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_port = sock.getsockname()[1]
        with contextlib.suppress(OSError):  # HAProxy may close on us mid-send: a rejection
            _send(sock, vector)
        sent = time.monotonic()
        reply = _recv_or_reset(sock)
        seconds = time.monotonic() - sent
        if reply != b"ACK":
            return client_port, _rejection_kind(seconds), seconds
        sock.shutdown(socket.SHUT_WR)  # the backend records on EOF, then closes
        while _recv_or_reset(sock):
            pass
        return client_port, ACCEPTED, seconds


def _send(sock: socket.socket, vector: Vector) -> None:
    if vector.pause_at:
        sock.sendall(vector.data[: vector.pause_at])
        time.sleep(PAUSE)  # long enough for HAProxy to evaluate its rules on the first piece
    sock.sendall(vector.data[vector.pause_at :])


def _recv_or_reset(sock: socket.socket) -> bytes:
    try:
        return sock.recv(16)
    except ConnectionResetError:
        return b""


def _rejection_kind(seconds: float) -> str:
    if seconds < INSPECT_DELAY * 0.5:
        return REJECTED
    if seconds >= INSPECT_DELAY * 0.9:
        return TIMED_OUT
    raise AssertionError(f"HAProxy closed after {seconds:.2f}s: neither prompt nor at the delay")


@dataclass
class HAProxyRun:
    outcomes: dict[str, Outcome]
    stick_table: str


@pytest.fixture(scope="module")
def haproxy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxyRun]:
    vectors = corpus()
    workdir = tmp_path_factory.mktemp("haproxy")
    with RecordingBackend() as backend:
        port = free_port()
        config = HAPROXY_CONFIG.format(
            workdir=workdir,
            port=port,
            backend_port=backend.port,
            delay_ms=int(INSPECT_DELAY * 1000),
            cid_fetch=CID_FETCH,
        )
        with HAProxy(config, port, workdir=str(workdir)) as haproxy:
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                probes = list(pool.map(lambda v: probe(port, v), vectors))
            logged = _wait_for_log(Path(haproxy.log_path), {p for p, _, _ in probes})
            table = _admin(workdir / "admin.sock", "show table brokers")
        outcomes = {
            vector.name: Outcome(
                kind, seconds, backend.received.get(client_port, b""), logged.get(client_port)
            )
            for vector, (client_port, kind, seconds) in zip(vectors, probes, strict=True)
        }
    yield HAProxyRun(outcomes, table)


def _wait_for_log(path: Path, ports: set[int]) -> dict[int, bytes | None]:
    """HAProxy logs a connection when it ends; wait (bounded) until every probe is there."""
    deadline = time.monotonic() + 10
    while True:
        found = {
            int(p): (None if cid == "-" else bytes.fromhex(cid))
            for p, cid, _ in _LOG_LINE.findall(path.read_text(errors="replace"))
        }
        if ports <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _admin(sock_path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode(errors="replace")


# --------------------------------------------------------------------------- fastmqtt's side

Inspector = Callable[[bytes], object]
MALFORMED = "malformed"
# fastmqtt's verdict -> the HAProxy outcome that agrees with it
AGREEING_OUTCOME = {VALID: ACCEPTED, MALFORMED: REJECTED, INCOMPLETE: TIMED_OUT}


@dataclass
class Inspection:
    verdict: str  # VALID, MALFORMED or INCOMPLETE
    reason: str  # VALID, INCOMPLETE or the MalformedPacket reason
    client_id: str | None = None


def inspect_vector(vector: Vector, impl: Inspector = parse.inspect_connect) -> Inspection:
    """fastmqtt's verdict on what the sender sent; a first piece must not be judged early."""
    if vector.pause_at:
        first = inspect(vector.data[: vector.pause_at], impl)
        if first.verdict != INCOMPLETE:
            return first
    return inspect(vector.data, impl)


def inspect(data: bytes, impl: Inspector) -> Inspection:
    try:
        connect = impl(data)
    except MalformedPacket as exc:
        return Inspection(MALFORMED, exc.reason)
    if connect is None:
        return Inspection(INCOMPLETE, INCOMPLETE)
    return Inspection(VALID, VALID, connect.client_id)


def documented_differences(markdown: str) -> dict[str, str]:
    """Vector names -> the row that documents them, from every table of the document with a
    column whose header mentions "vector" (names in backticks in that column)."""
    documented: dict[str, str] = {}
    column = None
    for line in markdown.splitlines():
        cells = (
            [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        )
        if not cells:
            column = None  # a table ends at the first line that is not a row
        elif column is None:
            column = next((i for i, c in enumerate(cells) if "vector" in c.lower()), -1)
        elif column >= 0 and len(cells) > column and not set(cells[column]) <= set("-: "):
            for name in re.findall(r"`([^`]+)`", cells[column]):
                documented[name] = cells[0]
    return documented


@pytest.fixture(scope="module")
def documented() -> dict[str, str]:
    return documented_differences(DIFFERENCES_DOC.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("vector", corpus(), ids=lambda v: v.name)
def test_inspector_gives_the_corpus_verdict(vector: Vector, implementation: Implementation) -> None:
    result = inspect_vector(vector, implementation.parse.inspect_connect)
    assert result.reason == vector.verdict
    if vector.verdict == VALID:
        assert result.client_id == vector.client_id


def test_documented_vectors_exist(documented: dict[str, str]) -> None:
    names = {v.name for v in corpus()}
    assert sorted(set(documented) - names) == [], "docs name vectors the corpus does not have"


def test_haproxy_agrees_except_documented_differences(
    haproxy_run: HAProxyRun, documented: dict[str, str]
) -> None:
    differing = {}
    for vector in corpus():
        ours = inspect_vector(vector)
        theirs = haproxy_run.outcomes[vector.name]
        if AGREEING_OUTCOME[ours.verdict] != theirs.kind:
            differing[vector.name] = f"fastmqtt {ours.reason}, HAProxy {theirs.kind}"
    undocumented = {n: d for n, d in differing.items() if n not in documented}
    stale = {n: documented[n] for n in documented if n not in differing}
    assert undocumented == {}, "differences missing from docs/haproxy-differences.md"
    assert stale == {}, "documented differences that HAProxy no longer shows"


def test_client_ids_agree_where_both_accept(haproxy_run: HAProxyRun) -> None:
    """HAProxy 2.6 extracts an empty client id as "not found": it logs ``-`` for it."""
    compared = 0
    for vector in corpus():
        ours, theirs = inspect_vector(vector), haproxy_run.outcomes[vector.name]
        if ours.verdict == VALID and theirs.kind == ACCEPTED:
            assert ours.client_id is not None
            assert theirs.client_id == (ours.client_id.encode() or None), vector.name
            compared += 1
    assert compared > 200


def test_haproxy_forwards_accepted_bytes_unchanged(haproxy_run: HAProxyRun) -> None:
    for vector in corpus():
        outcome = haproxy_run.outcomes[vector.name]
        expected = vector.data if outcome.kind == ACCEPTED else b""
        assert outcome.forwarded == expected, vector.name


def test_haproxy_stick_table_cuts_client_ids(haproxy_run: HAProxyRun) -> None:
    """`stick-table type string len 32` keeps the first 32 bytes of a key, and a key ends at
    its first NUL: ids that share those bytes share a server. The fetch itself returns the
    whole id (test above); fastmqtt hashes the whole id and refuses U+0000."""
    keys = re.findall(r" key=(\S+) ", haproxy_run.stick_table)
    assert LONG_CLIENT_ID[:32] in keys
    assert not any(key.startswith(LONG_CLIENT_ID[:33]) for key in keys)
    assert by_name()["client-id-nul"].data.endswith(b"dev\x00ice")
    assert "dev" in keys
