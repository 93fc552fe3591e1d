"""Session accounting: what a session takes while it lives and gives back when it ends (its
frontend's slot and per-source limit, its server's slot, its stick entry's live mark), and the
one byte formula. Real frontends, backends and stick tables; nothing listens."""

from __future__ import annotations

from types import SimpleNamespace

from fastmqtt.backend import Backend
from fastmqtt.config import load_config_text
from fastmqtt.frontend import Frontend
from fastmqtt.session import Session

CONFIG = """
[frontend.one]
bind = "127.0.0.1:1883"
backend = "b"
rate_limit = { max_per_source = 1 }
[frontend.two]
bind = "127.0.0.1:1884"
backend = "b"
rate_limit = { max_per_source = 1 }
[backend.b]
stick = { on = "client_id" }
[[backend.b.server]]
name = "a"
address = "127.0.0.1:1"
"""
ADDR = ("192.0.2.7", 40001)


def parts() -> tuple[Frontend, Frontend, Backend]:
    config = load_config_text(CONFIG)
    backend = Backend(config.backends["b"])
    runtime = SimpleNamespace(backend_named={"b": backend}.__getitem__)
    one, two = (Frontend(fc, backend, runtime) for fc in config.frontends)  # type: ignore[arg-type]
    return one, two, backend


def test_ended_gives_back_what_the_session_took_and_nothing_else() -> None:
    one, two, backend = parts()
    server = backend.by_name["a"]
    backend.learn("dev-1", server)
    sessions = []
    for fe in (one, two):  # one client address on both frontends: each holds its own slot
        session = Session(fe, ADDR)
        session.accepted()
        fe.guard.admit_source(session)
        session.backend = backend
        session.established(server, "dev-1", 10)
        sessions.append(session)
    assert backend.stick is not None and backend.stick.entry("dev-1").live == 2  # type: ignore[union-attr]
    assert (one.counters.current, two.counters.current, server.counters.current) == (1, 1, 2)

    sessions[0].ended(5, 7, "client-closed")

    assert (sessions[0].bytes_in, sessions[0].bytes_out) == (15, 7)  # the CONNECT routed + relayed
    assert (one.counters.bytes_in, one.counters.bytes_out) == (15, 7)
    assert (server.counters.bytes_in, two.counters.bytes_in) == (15, 0)
    assert (one.counters.current, two.counters.current, server.counters.current) == (0, 1, 1)
    assert backend.stick.entry("dev-1").live == 1  # type: ignore[union-attr]
    assert one.guard.limits is not None and two.guard.limits is not None
    assert one.guard.limits.open_source(ADDR[0]) is None  # its slot came back
    assert two.guard.limits.open_source(ADDR[0]) == "max-per-source"  # the other's did not
    assert sessions[0].ended_at is not None


def test_a_refused_session_gives_back_its_frontend_slot_only() -> None:
    one, _, backend = parts()
    session = Session(one, ADDR)
    session.accepted()
    one.guard.admit_source(session)
    session.ended(0, 0, "denied-rule-0")
    assert (one.counters.current, session.bytes_in, session.end_reason) == (0, 0, "denied-rule-0")
    assert backend.by_name["a"].counters.current == 0
    assert one.guard.limits is not None and one.guard.limits.open_source(ADDR[0]) is None


def test_a_session_of_a_retired_backend_ends_without_its_stick_table() -> None:
    """A reload removed the backend while the session was relayed: its table is closed."""
    one, _, backend = parts()
    server = backend.by_name["a"]
    session = Session(one, ADDR)
    session.accepted()
    session.backend = backend
    session.established(server, "dev-1", 0)
    backend.retire()
    session.ended(0, 0, "client-closed")
    assert (backend.stick, server.counters.current, one.counters.current) == (None, 0, 0)


def test_an_engine_record_only_credits_its_bytes() -> None:
    """The fast path's sessions are built from the engine's records: the engine held the
    slots, so ending one in Python only credits its bytes."""
    one, _, backend = parts()
    one.counters.current = 3  # what the engine reports
    session = Session(one, ADDR)
    session.backend, session.server = backend, backend.by_name["a"]
    session.ended(40, 2, "client-closed")
    assert (one.counters.current, one.counters.bytes_in, session.ended_at) == (3, 40, None)
    assert backend.by_name["a"].counters.bytes_out == 2
