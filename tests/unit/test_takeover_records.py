"""The handover's connection records (takeover.py): what one process packs the other reads
back exactly, and anything else (it comes from another process) is refused before use."""

from __future__ import annotations

import json

import pytest

from fastmqtt import takeover
from fastmqtt.takeover import RECORD, TakeoverError, pack_record, unpack_records

FACTS = {
    "frontend": "mqtt", "backend": "cluster", "server": "b1", "ip": "127.0.0.1", "port": 40001,
    "client_id": "dévice-1", "username": None, "version": 4, "keepalive": 60, "connack": 0,
    "wall_start": 1733478123.25, "wait_ms": 1, "connect_ms": 2, "routed_in": 0,
    "stick_key": "dévice-1",
}  # fmt: skip
# bytes in, out, held for the server, for the client, state bits, idle and quiet seconds, the
# client's stream 3 bytes into a body of 207, the server's inside its length, age
ROW = (1000, 2000, b"to server", b"to client!", 0b100000, 60.0, 0.0, 1.5, 0.5, 204, 0, 0x4F,
       2, 30.0)  # fmt: skip


def test_a_record_reads_back_as_it_was_packed() -> None:
    payload = pack_record(ROW, FACTS) + pack_record(ROW, {**FACTS, "port": 40002})
    first, second = unpack_records(payload, 2)
    assert first.state == second.state == ROW
    assert first.facts == FACTS and second.facts == {**FACTS, "port": 40002}


def _with_facts(facts: object) -> bytes:
    """A record of ROW whose facts are ``facts`` as JSON."""
    c2s, s2c, to_server, to_client, *rest = ROW
    blob = json.dumps(facts).encode()
    head = RECORD.pack(c2s, s2c, len(to_server), len(to_client), *rest, len(blob))
    return head + to_server + to_client + blob


def _changed(key: str, value: object) -> list:
    return [value if k == key else v for k, v in FACTS.items()]


CASES = {
    "cut in the bytes": (pack_record(ROW, FACTS)[:-1], 1, "cut short"),
    "cut in the head": (pack_record(ROW, FACTS)[: RECORD.size - 1], 1, "cut short"),
    "a byte after": (pack_record(ROW, FACTS) + b"x", 1, "after the last"),
    "fewer records": (pack_record(ROW, FACTS), 2, "cut short"),
    "format 1 facts": (_with_facts(FACTS), 1, "as many"),  # an object, not format 2's array
    "a fact missing": (_with_facts(list(FACTS.values())[:-1]), 1, "as many"),
    "not JSON": (_with_facts(FACTS)[:-1] + b"{", 1, "not JSON"),
    "bool for int": (_with_facts(_changed("port", True)), 1, "'port'"),
    "int out of range": (_with_facts(_changed("port", 1 << 63)), 1, "range"),
    "int for str": (_with_facts(_changed("client_id", 7)), 1, "'client_id'"),
}


@pytest.mark.parametrize(("payload", "count", "message"), CASES.values(), ids=CASES)
def test_a_record_that_is_not_what_we_pack_is_refused(
    payload: bytes, count: int, message: str
) -> None:
    with pytest.raises(TakeoverError, match=message):
        unpack_records(payload, count)


def test_held_bytes_larger_than_the_engine_holds_are_refused_before_reading() -> None:
    head = RECORD.pack(0, 0, takeover.MAX_HELD + 1, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0.0, 2)
    with pytest.raises(TakeoverError, match="larger"):
        unpack_records(head + b"[]", 1)
