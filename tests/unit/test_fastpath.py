"""The engine's fast path driven directly (_fastpath.pyx): real sockets on loopback, real
Mosquitto brokers where a broker answers, raw sockets where a server misbehaves. Each test
reads what happened from the completion records, as FastPathHub does."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.hostile import MisbehavingBroker, read_until_closed
from tests.support.lb import wait_until
from tests.vectors import CONNECT_VECTORS, VALID

from fastmqtt import _choose, packets, proxy_protocol
from fastmqtt._admit import AdmissionRef
from fastmqtt._fastpath import (
    FAST_IDS,
    MAX_FIND_KEY_BYTES,
    MAX_FIND_KEYS,
    FastPath,
    proxy_header,
)
from fastmqtt._parse import inspect_connect
from fastmqtt._splice import Engine
from fastmqtt.access import malformed_connack
from fastmqtt.errors import MalformedPacket
from fastmqtt.fastpath import refusal_table
from fastmqtt.parse import inspect_connack
from fastmqtt.tools.brokers import Mosquitto

FIELDS = [
    "frontend",
    "backend",
    "server",
    "ip",
    "port",
    "client_id",
    "username",
    "version",
    "keepalive",
    "connack",
    "start",
    "wait_ms",
    "connect_ms",
    "total_ms",
    "bytes_in",
    "bytes_out",
    "reason",
    "denied",
    "errno",
    "conn_id",
]


@dataclass
class Lane:
    """An engine with the fast path serving one listening socket over ``servers``."""

    servers: list[tuple[str, int]]
    algorithm: str = "roundrobin"
    settings: dict = field(default_factory=dict)
    backend: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    threads: int = 1

    def __post_init__(self) -> None:
        self.engine = Engine(threads=self.threads)
        self.fast = FastPath(self.engine, self.settings.pop("global_maxconn", 1000))
        self.refs = [
            _choose.ServerRef(i + 1, socket.AF_INET, host, port)
            for i, (host, port) in enumerate(self.servers)
        ]
        self.pool = _choose.PoolRef(1)
        self.pool.configure(self.algorithm, self.refs, **self.backend)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        settings = {"inspect_delay": 2.0, "max_connect_size": 65536, "maxconn": 1000}
        self.fast.frontend(7, self.listener.fileno(), self.pool, [], **(settings | self.settings))
        self.engine.start()
        self.fast.listen(7, True)

    def connect(self, client_id: str = "dev", version: int = 4, **kwargs: object) -> bytes:
        """A client's CONNECT through the lane: the first bytes it gets back (b"": closed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(packets.connect(client_id, version=version, **kwargs))  # type: ignore[arg-type]
            data = b""
            with contextlib.suppress(MalformedPacket):  # not a CONNACK: what came is the answer
                while inspect_connack(data, version) is None:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    data += chunk
            return data  # and closes: its FIN comes first, the broker's follows

    def wait(self, count: int, timeout: float = 5.0) -> list[dict]:
        """The records so far, once there are ``count``."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            self.engine.drain()
            self.records += [dict(zip(FIELDS, r, strict=True)) for r in self.fast.drain()]
            time.sleep(0.01)
        assert len(self.records) >= count, self.records
        return self.records

    def close(self) -> None:
        self.engine.stop()
        self.listener.close()


@pytest.fixture
def lane() -> Iterator[Callable[..., Lane]]:
    made: list[Lane] = []

    def make(servers: list[tuple[str, int]], **kwargs: object) -> Lane:
        made.append(Lane(servers, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for lane_ in made:
        lane_.close()


def _addresses(nodes: list[Mosquitto]) -> list[tuple[str, int]]:
    return [("127.0.0.1", n.port) for n in nodes]


def test_ten_clients_land_4_3_3_and_each_leaves_a_record(brokers, lane) -> None:
    nodes = brokers(3)
    fast = lane(_addresses(nodes))
    for i in range(10):
        assert fast.connect(f"dev-{i}", username="u") == packets.connack(0)
    records = fast.wait(10)
    assert sorted(r["server"] for r in records) == [1] * 4 + [2] * 3 + [3] * 3
    first = next(r for r in records if r["client_id"] == "dev-0")
    assert (first["frontend"], first["backend"], first["username"], first["version"]) == (
        7, 1, "u", 4,
    )  # fmt: skip
    assert (first["connack"], first["reason"], first["denied"]) == (0, "client-closed", False)
    connect = packets.connect("dev-0", username="u")
    assert (first["bytes_in"], first["bytes_out"]) == (len(connect), 4)
    assert 0 <= first["wait_ms"] <= first["connect_ms"] <= first["total_ms"]
    assert abs(first["start"] - time.time()) < 30
    assert fast.fast.counters(7)[:3] == (10, 0, 0)
    assert [ref.counters()[0] for ref in fast.refs] == [4, 3, 3]


def test_what_the_setup_hands_the_relay_is_counted_as_held_until_sent(brokers, lane) -> None:
    """Engine.buffered(): the CONNACK and CONNECT the setup hands to the relay are counted
    while held and no longer once sent (never below zero)."""
    fast = lane(_addresses(brokers(1)))
    # accepted sockets inherit TCP_NODELAY from the listening one, which the engine sets
    assert fast.listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    clients = [_open_client(fast, f"held-{i}") for i in range(5)]
    assert fast.engine.buffered() == 0
    for sock in clients:
        sock.sendall(packets.PINGREQ)
        assert sock.recv(16) == b"\xd0\x00"  # PINGRESP, through the relay
        sock.close()
    fast.wait(5)
    assert fast.engine.buffered() == 0


INVALID = [v for v in CONNECT_VECTORS if v.expect not in (VALID, "incomplete") and not v.kwargs]


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v.name)
def test_invalid_connect_is_refused_with_the_scanners_word_and_no_server_sees_it(
    lane, vector
) -> None:
    """The record's reason is what inspect_connect raises; the refusal CONNACK, if any, is
    the one access.malformed_connack writes; no connection reaches the server."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.3)
    fast = lane([server.getsockname()], settings={"refusals": refusal_table()})
    with pytest.raises(MalformedPacket) as caught:
        inspect_connect(vector.data)
    with socket.create_connection(("127.0.0.1", fast.port), timeout=5) as sock:
        sock.sendall(vector.data)
        answer = read_until_closed(sock)
    [record] = fast.wait(1)
    assert (record["reason"], record["denied"]) == (caught.value.reason, True)
    expected = malformed_connack(caught.value)
    assert answer == (expected or b"")
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()


def test_invalid_connect_is_forwarded_as_is_when_asked(lane) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    fast = lane([server.getsockname()], settings={"reject_invalid": False})
    junk = b"\x10\x04" + b"ABCD" + b"and more"
    with socket.create_connection(("127.0.0.1", fast.port), timeout=5) as sock:
        sock.sendall(junk)
        conn, _ = server.accept()
        conn.settimeout(5)
        got = b""
        while len(got) < len(junk):
            got += conn.recv(100)
        conn.sendall(b"back")
        assert sock.recv(100) == b"back"
        conn.close()
    [record] = fast.wait(1)
    assert got == junk and record["version"] == 0 and record["client_id"] is None
    with pytest.raises(MalformedPacket) as caught:
        inspect_connect(junk)
    assert fast.fast.counters(7)[4] == {caught.value.reason: 1}
    server.close()


def test_slow_clients_are_cut_at_inspect_delay(lane) -> None:
    fast = lane([("127.0.0.1", 9)], settings={"inspect_delay": 0.5})
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", fast.port), timeout=5) as sock:
        sock.sendall(packets.connect("slow")[:7])
        assert read_until_closed(sock) == b""
    assert 0.5 <= time.monotonic() - started < 1.5
    with socket.create_connection(("127.0.0.1", fast.port), timeout=5):
        pass  # closes without a byte
    reasons = sorted(r["reason"] for r in fast.wait(2))
    assert reasons == ["client-closed-early", "inspect-timeout"]


def _closed_port() -> tuple[str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


def test_connect_errors_are_retried_elsewhere_then_fail_as_no_server(brokers, lane) -> None:
    [node] = brokers(1)
    fast = lane([_closed_port(), ("127.0.0.1", node.port)], backend={"retries": 2})
    for i in range(4):
        assert fast.connect(f"r-{i}") == packets.connack(0)
    records = fast.wait(4)
    assert {r["server"] for r in records} == {2}
    total, econ, _, retries, redispatches, _ = fast.refs[0].counters()
    assert (total, econ, retries, redispatches) == (0, 2, 2, 2)
    alone = lane([_closed_port()], backend={"retries": 1, "redispatch": False})
    assert alone.connect("nowhere") == b""
    [record] = alone.wait(1)
    assert (record["reason"], record["denied"], record["server"]) == ("no-server", True, 1)
    assert alone.refs[0].counters()[1:5] == (2, 0, 1, 0)  # the same server, twice


def test_a_server_that_hangs_up_before_its_connack_is_retried(brokers, lane) -> None:
    [node] = brokers(1)
    closer = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def hang_up() -> None:
        closer.settimeout(0.1)
        while not stop.is_set():
            try:
                closer.accept()[0].close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        fast = lane([closer.getsockname(), ("127.0.0.1", node.port)])
        for i in range(4):
            assert fast.connect(f"h-{i}") == packets.connack(0)
        only = lane([closer.getsockname()], backend={"retries": 0})
        assert only.connect("h-x") == b""
    finally:
        stop.set()
        thread.join(5)
        closer.close()
    assert {r["server"] for r in fast.wait(4)} == {2}
    [record] = only.wait(1)
    assert (record["reason"], record["denied"]) == ("server-closed", False)


def test_a_silent_server_times_out_and_garbage_is_relayed(lane) -> None:
    silent, garbage = MisbehavingBroker("silent"), MisbehavingBroker("garbage")
    try:
        quiet = lane([("127.0.0.1", silent.port)], backend={"timeout_server": 5})
        started = time.monotonic()
        assert quiet.connect("q") == b""
        assert 0.5 <= time.monotonic() - started < 1.5  # 5 ticks of 100 ms
        [record] = quiet.wait(1)
        assert (record["reason"], record["denied"]) == ("server-timeout", True)
        assert quiet.refs[0].counters()[2] == 1  # a response error
        noisy = lane([("127.0.0.1", garbage.port)])
        assert noisy.connect("g").startswith(b"HTTP/1.1 400")
        assert noisy.refs[0].counters()[2] == 1
    finally:
        silent.close()
        garbage.close()


def test_frontend_maxconn_leaves_clients_in_the_backlog(brokers, lane) -> None:
    [node] = brokers(1)
    fast = lane([("127.0.0.1", node.port)], settings={"maxconn": 2})
    held = []
    for i in range(2):
        sock = socket.create_connection(("127.0.0.1", fast.port), timeout=5)
        sock.sendall(packets.connect(f"held-{i}"))
        assert sock.recv(4) == packets.connack(0)
        held.append(sock)
    waiting = socket.create_connection(("127.0.0.1", fast.port), timeout=5)
    waiting.sendall(packets.connect("waiting"))
    waiting.settimeout(0.5)
    with pytest.raises(TimeoutError):
        waiting.recv(4)
    assert fast.fast.live == 2
    held[0].close()
    waiting.settimeout(5)
    assert waiting.recv(4) == packets.connack(0)
    for sock in (held[1], waiting):
        sock.close()


def test_the_event_loop_paths_connections_count_against_the_process_maxconn(brokers, lane) -> None:
    [node] = brokers(1)
    fast = lane([("127.0.0.1", node.port)], settings={"global_maxconn": 3})
    fast.fast.set_limits(3, 2)  # the event-loop path holds two
    one = socket.create_connection(("127.0.0.1", fast.port), timeout=5)
    one.sendall(packets.connect("one"))
    assert one.recv(4) == packets.connack(0)
    two = socket.create_connection(("127.0.0.1", fast.port), timeout=5)
    two.sendall(packets.connect("two"))
    two.settimeout(0.5)
    with pytest.raises(TimeoutError):
        two.recv(4)
    fast.fast.set_limits(3, 1)  # one of them ended
    two.settimeout(5)
    assert two.recv(4) == packets.connack(0)
    one.close()
    two.close()


def test_records_python_has_not_drained_hold_back_accepts(brokers, lane) -> None:
    """Ended connections wait for drain() with their client ids: past 1 MiB of them the
    engine accepts no more until Python catches up (as the event loop would be busy)."""
    [node] = brokers(1)
    fast = lane([("127.0.0.1", node.port)])
    tail = "x" * 65_000
    for i in range(17):  # 17 x 65,006 bytes: just over 1 MiB
        assert fast.connect(f"dev-{i:05d}-{tail}") == packets.connack(0)
    time.sleep(0.2)  # their ends reach the engine
    late = socket.create_connection(("127.0.0.1", fast.port), timeout=5)
    late.sendall(packets.connect("late"))
    late.settimeout(0.5)
    with pytest.raises(TimeoutError):
        late.recv(4)
    fast.wait(17)
    late.settimeout(5)
    assert late.recv(4) == packets.connack(0)
    late.close()
    assert fast.wait(18)[-1]["client_id"] == "late"


def test_access_rules_and_refusal_connacks(brokers, lane) -> None:
    nodes = brokers(1)
    admission = AdmissionRef(
        "allow",
        [("deny", [], b"banned-", True)],
        deny_empty_client_id=True,
        per_client_id=(2.0, 1.0),
        max_delay=1.0,
    )
    fast = lane(_addresses(nodes), settings={"admission": admission, "refusals": refusal_table()})
    assert fast.connect("banned-1", version=5) == packets.connack(0x87, 5)
    assert fast.connect("", version=4) == packets.connack(2, 4)
    started = time.monotonic()
    for _ in range(2):  # 2/s, burst 1: the second waits about half a second
        assert fast.connect("pacer") == packets.connack(0)
    assert time.monotonic() - started >= 0.4
    reasons = [r["reason"] for r in fast.wait(4)]
    assert reasons[:2] == ["denied-rule-0", "empty-client-id"]


@given(
    st.ip_addresses(),
    st.ip_addresses(),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=300),
    st.sampled_from([-1, 0xE0, 0xEF]),
)
def test_proxy_headers_are_proxy_protocols(src, dst, sport, dport, client_id, tlv) -> None:
    """Byte for byte what fastmqtt.proxy_protocol encodes (v1, and v2 with the client id
    TLV), for IPv4, IPv6 and mixed families."""
    s, d = (str(src), sport), (str(dst), dport)
    assert proxy_header(1, s, d) == proxy_protocol.encode_v1(s, d)
    tlvs = [(tlv, client_id)] if tlv >= 0 and client_id else []
    assert proxy_header(2, s, d, client_id, tlv) == proxy_protocol.encode_v2(s, d, tlvs)


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_half_sent_connects_hold_at_most_max_connect_size_and_go_at_inspect_delay(lane) -> None:
    """500 clients each announce a CONNECT of 60 KiB and send 30 KiB of it: the engine holds
    their bytes (no more than max_connect_size each), then drops them all at inspect_delay,
    and a flood of oversized packets is refused before it is held."""
    fast = lane([("127.0.0.1", 9)], settings={"inspect_delay": 1.0, "max_connect_size": 61440})
    head = b"\x10" + packets.varint(61000)
    before = _rss_kib()
    clients = []
    for _ in range(500):
        sock = socket.create_connection(("127.0.0.1", fast.port), timeout=5)
        sock.sendall(head + bytes(30000))
        clients.append(sock)
    time.sleep(0.3)
    held = _rss_kib() - before
    records = fast.wait(500, timeout=10)
    assert {r["reason"] for r in records} == {"inspect-timeout"}
    for sock in clients:
        sock.close()
    print(f"500 half CONNECTs of 30 KB: engine + sockets grew {held} KiB")
    assert held < 500 * 61440 // 1024  # at most max_connect_size each, and less in practice
    big = b"\x10" + packets.varint(1 << 20) + bytes(60000)
    before = _rss_kib()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", fast.port), timeout=5) as sock:
            sock.sendall(big)
            read_until_closed(sock)
    assert {r["reason"] for r in fast.wait(700)[500:]} == {"packet-too-large"}
    assert _rss_kib() - before < 4096


# ---------------------------------------------------------------- find() and leave()


def _open_client(fast: Lane, client_id: str, version: int = 4, **kwargs: object) -> socket.socket:
    """A client that stays connected through the lane, its CONNACK read."""
    sock = socket.create_connection(("127.0.0.1", fast.port), timeout=5)
    sock.sendall(packets.connect(client_id, version=version, **kwargs))  # type: ignore[arg-type]
    data = b""
    while inspect_connack(data, version) is None:
        chunk = sock.recv(256)
        assert chunk, f"{client_id}: closed before its CONNACK"
        data += chunk
    return sock


def _ask(fast: Lane, call: Callable[[], None]) -> None:
    call()
    assert wait_until(fast.fast.answered, 2.0), "the engine's threads did not answer"


VIEW = ["conn_id", "frontend", "backend", "server", "ip", "port", "client_id", "version",
        "start", "bytes_in", "bytes_out", "clean_start", "session_expiry", "tracked",
        "username"]  # fmt: skip


def _found(fast: Lane, *args: object) -> list[dict]:
    _ask(fast, lambda: fast.fast.find(*args))
    complete, views = fast.fast.found()
    assert complete
    return [dict(zip(VIEW, v, strict=True)) for v in views]


def test_find_shows_each_relayed_connection_as_its_record_will(brokers, lane) -> None:
    """Two engine threads: both answer. A view says what the connection's record says once it
    ends (id, frontend, backend, server, address, client id, version, start, bytes), plus the
    CONNECT's clean start, session expiry and username."""
    nodes = brokers(3)
    fast = lane(_addresses(nodes), threads=2, settings={"track": 2})
    socks = {f"dev-{i}": _open_client(fast, f"dev-{i}") for i in range(4)}
    socks["other"] = _open_client(
        fast, "other", version=5, clean=False, session_expiry=300, username="fleet-7"
    )
    [view] = _found(fast, [b"dev-2"])
    assert view["conn_id"] >= FAST_IDS and view["client_id"] == "dev-2"
    assert (view["frontend"], view["backend"], view["ip"]) == (7, 1, "127.0.0.1")
    assert view["port"] == socks["dev-2"].getsockname()[1]
    assert (view["version"], view["clean_start"], view["session_expiry"]) == (4, True, None)
    assert view["bytes_in"] == len(packets.connect("dev-2")) and view["bytes_out"] == 4
    assert view["tracked"] and abs(view["start"] - time.time()) < 30
    assert view["username"] is None
    [v5] = _found(fast, [b"other"])
    assert (v5["version"], v5["clean_start"], v5["session_expiry"]) == (5, False, 300)
    assert v5["username"] == "fleet-7"
    assert sorted(v["client_id"] for v in _found(fast, [b"dev-"], True)) == [
        f"dev-{i}" for i in range(4)
    ]
    assert len(_found(fast, [b"dev-"], True, 0, 0, 2)) == 2  # the limit
    assert _found(fast, [b"dev"]) == []  # exact unless a prefix is asked for
    everyone = _found(fast)
    assert len(everyone) == 5
    for server in (1, 2, 3):
        on_it = _found(fast, None, False, 1, server)
        assert {v["conn_id"] for v in on_it} == {
            v["conn_id"] for v in everyone if v["server"] == server
        }
    assert _found(fast, None, False, 2) == []  # another backend
    for sock in socks.values():
        sock.close()
    records = {r["client_id"]: r for r in fast.wait(5)}
    for view in everyone:
        record = records[view["client_id"]]
        assert record["conn_id"] == view["conn_id"] and record["server"] == view["server"]
        assert (record["port"], record["start"]) == (view["port"], view["start"])


# client ids that share prefixes, one of them empty, some not ASCII
FLEET = ["dev", "dev-1", "dev-10", "dev-100", "de", "", "dév-1", "dev-1 ", "x" * 300]


@pytest.fixture
def fleet() -> Iterator[Callable[[Lane], list[socket.socket]]]:
    """``fleet(lane)``: a 3.1.1 client per FLEET id connected through it (no id is assigned to
    the empty one), closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda fast: [stack.enter_context(_open_client(fast, cid)) for cid in FLEET]


def test_find_by_many_ids_returns_exactly_their_connections(brokers, lane, fleet) -> None:
    """One query for many exact client ids (two threads answer it): the connections of the ids
    named, whatever their prefixes, each once however often named; none for ids not
    connected; combined with the backend and server; a bounded query (MAX_FIND_KEYS ids,
    MAX_FIND_KEY_BYTES bytes, no id longer than an MQTT string) refuses more."""
    nodes = brokers(2)
    fast = lane(_addresses(nodes), threads=2)
    fleet(fast)
    everyone = _found(fast)
    by_id = {v["client_id"]: v["conn_id"] for v in everyone}
    assert sorted(by_id) == sorted(FLEET)

    def ids_of(*keys: str) -> list[int]:
        return sorted(v["conn_id"] for v in _found(fast, [k.encode() for k in keys]))

    assert ids_of("dev-1", "dev-1", "dev-10", "nobody", "dev-1000", "de") == sorted(
        by_id[k] for k in ("dev-1", "dev-10", "de")
    )
    assert ids_of("dév-1", "dev-1 ", "x" * 300, "x" * 299) == sorted(
        by_id[k] for k in ("dév-1", "dev-1 ", "x" * 300)
    )
    assert ids_of("") == [by_id[""]]
    assert ids_of() == []  # an empty set names nobody (None: anybody)
    assert ids_of(*FLEET) == sorted(by_id.values())
    on_1 = [v for v in everyone if v["server"] == 1]
    assert 0 < len(on_1) < len(FLEET)
    wanted = [k.encode() for k in FLEET]
    assert {v["conn_id"] for v in _found(fast, wanted, False, 1, 1)} == {v["conn_id"] for v in on_1}
    assert _found(fast, wanted, False, 2) == []
    assert len(_found(fast, wanted, False, 0, 0, 3)) == 3  # the limit
    most = [b"%05d" % i for i in range(MAX_FIND_KEYS - 1)] + [b"dev-10"]
    assert [v["client_id"] for v in _found(fast, most)] == ["dev-10"]
    for too_many in (
        [*most, b"dev"],
        [b"y" * 60000] * (MAX_FIND_KEY_BYTES // 60000 + 1),
        [b"z" * 65536],
    ):
        with pytest.raises(ValueError):
            fast.fast.find(too_many)
    with pytest.raises(TypeError):
        fast.fast.find(["dev"])
    with pytest.raises(ValueError):
        fast.fast.find([b"dev", b"de"], True)  # a prefix find names one prefix


def test_find_by_ids_matches_as_python_does(brokers, lane, fleet) -> None:
    """The engine's matching (hashes looked up, then the bytes compared) against a set in
    Python, for id sets drawn from the connected ids, their prefixes and extensions."""
    nodes = brokers(1)
    fast = lane(_addresses(nodes), threads=2)
    fleet(fast)
    everyone = _found(fast)
    near = FLEET + [c[:-1] for c in FLEET if c] + [c + "0" for c in FLEET] + ["DEV", "dev-"]

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.sampled_from(near) | st.text(max_size=12), max_size=30))
    def same(keys: list[str]) -> None:
        wanted = {k.encode() for k in keys}
        expected = sorted(v["conn_id"] for v in everyone if v["client_id"].encode() in wanted)
        assert sorted(v["conn_id"] for v in _found(fast, [k.encode() for k in keys])) == expected

    same()


def test_leave_ends_connections_between_two_packets(brokers, lane) -> None:
    """leave(): the v5 client gets the packet, the 3.1.1 one a close (its half-sent PUBLISH
    completes first), an unknown id is not found, an untracked connection is closed at once."""
    nodes = brokers(1)
    fast = lane(_addresses(nodes), threads=2, settings={"track": 1})  # drain_disconnect alone
    v5 = _open_client(fast, "five", version=5)
    v4 = _open_client(fast, "four")
    ids = {v["client_id"]: v["conn_id"] for v in _found(fast)}
    assert not any(v["tracked"] for v in _found(fast, [b"four"]))
    bye = packets.disconnect_v5(packets.ADMINISTRATIVE_ACTION)
    _ask(fast, lambda: fast.fast.leave([ids["five"], ids["four"], 12345], bye))
    assert sorted(fast.fast.left()[1]) == sorted([ids["five"], ids["four"]])
    assert v5.recv(16) == bye
    assert v4.recv(16) == b""  # untracked: closed at once
    reasons = {r["client_id"]: r["reason"] for r in fast.wait(2)}
    assert reasons == {"five": "drained", "four": "killed"}
    v5.close()
    v4.close()
    tracked = lane(_addresses(nodes), settings={"track": 2})
    v4 = _open_client(tracked, "four")
    [view] = _found(tracked, [b"four"])
    body = packets.utf8("t") + b"\x00\x01" + b"x" * 2000  # QoS 1, packet id 1
    publish = b"\x32" + packets.varint(len(body)) + body
    v4.sendall(publish[:700])
    _ask(tracked, lambda: tracked.fast.leave([view["conn_id"]], bye))
    time.sleep(0.2)
    assert tracked.wait(0, 0.1) == []  # still waiting for the rest of the PUBLISH
    v4.sendall(publish[700:])
    v4.settimeout(5)
    assert v4.recv(16) == b""  # no DISCONNECT for 3.1.1: a close after the PUBLISH
    v4.close()
    [record] = tracked.wait(1)
    assert record["reason"] == "drained" and record["bytes_in"] == len(
        packets.connect("four")
    ) + len(publish)
