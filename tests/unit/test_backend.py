"""Backend.open: which server a client gets and what a failure costs, over real sockets (a
closed port, a server that hangs up after reading the CONNECT, a real Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from fastmqtt import packets
from fastmqtt.backend import Backend, NoServerAvailable
from fastmqtt.config import load_config_text
from fastmqtt.metrics import FrontendCounters
from fastmqtt.parse import inspect_connect
from fastmqtt.session import Session
from fastmqtt.streams import SocketStream
from fastmqtt.tools.brokers import free_port
from fastmqtt.upstream import HungUp

CLIENT = ("192.0.2.7", 40001)


class HangUp:
    """Accepts, reads what the client sent, closes without a word (HAProxy: empty response)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.accepted += 1
                with conn:
                    conn.recv(65536)


@pytest.fixture
def hang_up() -> Iterator[HangUp]:
    server = HangUp()
    yield server
    server.listener.close()


def backend(servers: list[tuple[str, int]], **keys: object) -> Backend:
    lines = "".join(
        f'[[backend.b.server]]\nname = "{name}"\naddress = "127.0.0.1:{port}"\n'
        for name, port in servers
    )
    options = "".join(f"{key} = {value}\n" for key, value in keys.items())
    text = (
        '[frontend.f]\nbind = "127.0.0.1:1883"\nbackend = "b"\n'
        f'[backend.b]\ntimeout_connect = "1s"\ntimeout_server = "2s"\n{options}{lines}'
    )
    return Backend(load_config_text(text).backends["b"])


def session(client_id: str = "dev-1") -> Session:
    s = Session(SimpleNamespace(name="f", counters=FrontendCounters()), CLIENT)  # type: ignore[arg-type]
    s.client_id, s.protocol_version, s.inspected_at = client_id, 4, time.monotonic()
    return s


def open_once(b: Backend, s: Session, mqtt: bool = True):
    async def run():
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        client = SocketStream(asyncio.get_running_loop(), ours)
        hello = packets.connect(s.client_id or "")
        connect = inspect_connect(hello) if mqtt else None
        try:
            opened = await b.open(s, connect, hello, client, ("127.0.0.1", 1883))  # type: ignore[arg-type]
            opened.upstream.close()
            return opened
        finally:
            client.close()
            theirs.close()

    return asyncio.run(run())


def test_connect_errors_retry_the_same_server_without_redispatch() -> None:
    b = backend([("gone", free_port())], retries=2, redispatch="false")
    with pytest.raises(NoServerAvailable):
        open_once(b, session(), mqtt=False)
    gone = b.by_name["gone"].counters
    assert (gone.connect_errors, gone.retries, gone.redispatches) == (3, 2, 0)


def test_connect_errors_redispatch_to_the_server_that_answers(brokers) -> None:
    [node] = brokers(1)
    b = backend([("gone", free_port()), ("node", node.port)], retries=1, redispatch="true")
    for _ in range(4):  # whichever the balancer picks first, the client lands on the live one
        assert open_once(b, session(), mqtt=False).server.name == "node"
    gone = b.by_name["gone"].counters
    assert gone.connect_errors == gone.retries == gone.redispatches >= 1


def test_a_hang_up_redispatches_and_the_stick_table_follows(brokers, hang_up) -> None:
    [node] = brokers(1)
    b = backend(
        [("quiet", hang_up.port), ("node", node.port)],
        retries=1,
        redispatch="true",
        stick='{ on = "client_id" }',
    )
    b.learn("dev-1", b.by_name["quiet"])  # the sticky server answers first, then hangs up
    opened = open_once(b, session())
    assert (opened.server.name, opened.stick_key) == ("node", "dev-1")
    assert hang_up.accepted == 1
    quiet = b.by_name["quiet"].counters
    assert (quiet.retries, quiet.redispatches, quiet.connect_errors) == (1, 1, 0)
    assert b.stick is not None and b.stick.get("dev-1") == "node"


def test_connect_errors_and_hang_ups_spend_one_budget(hang_up) -> None:
    """One failure of each kind with retries = 1: the second has no retry left (the hang-up
    comes first: sticky), whatever kind it is."""
    b = backend(
        [("quiet", hang_up.port), ("gone", free_port())],
        retries=1,
        redispatch="true",
        stick='{ on = "client_id" }',
    )
    b.learn("dev-1", b.by_name["quiet"])
    with pytest.raises(NoServerAvailable):
        open_once(b, session())
    assert hang_up.accepted == 1
    assert b.by_name["gone"].counters.connect_errors == 1
    assert b.by_name["gone"].counters.retries == 0  # the budget was spent on the hang-up


def test_a_hang_up_without_redispatch_is_not_retried(hang_up) -> None:
    b = backend([("quiet", hang_up.port)], retries=3, redispatch="false")
    with pytest.raises(HungUp):
        open_once(b, session())
    assert hang_up.accepted == 1
    assert b.by_name["quiet"].counters.retries == 0


def test_keys_a_client_is_known_by() -> None:
    b = backend([("a", 1883)], balance='"consistent"', stick='{ on = "client_id" }')
    assert (b.hash_key(session("dev-1")), b.stick_key(session("dev-1"))) == (b"dev-1", "dev-1")
    # an empty id (the broker assigns one) neither sticks nor piles onto one server
    assert (b.hash_key(session("")), b.stick_key(session(""))) == (b"192.0.2.7:40001", None)
    source = backend([("a", 1883)], balance='"source"', stick='{ on = "source" }')
    assert (source.hash_key(session()), source.stick_key(session())) == (b"192.0.2.7", CLIENT[0])
