"""The relay engine's side of a takeover (_splice.pyx): freeze, export, release, adopt.

Two engines in one process stand for the old and the new process; the fds the new one adopts
are dup()s, as SCM_RIGHTS would give it. Real TCP sockets over loopback throughout."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from fastmqtt._accel import NO_EXTENSIONS

if NO_EXTENSIONS:
    pytest.skip("the C engine is not built (FASTMQTT_NO_EXTENSIONS=1)", allow_module_level=True)

from tests.support.sockets import keep, records, recv_exactly, tcp_pair

from fastmqtt._splice import Engine

MiB = 1 << 20
BYE = b"\xe0\x01\x8b"


@pytest.fixture
def engines() -> Iterator[tuple[Engine, Engine]]:
    old, new = Engine(pipe_pool=4, splice_threshold=16384), Engine()
    old.start()
    new.start()
    yield old, new
    old.stop()
    new.stop()


def relay(
    eng: Engine, conn_id: int, listener: socket.socket, small: bool = False, **kw: object
) -> tuple:
    client, a = tcp_pair(listener)
    b, server = tcp_pair(listener)
    for sock in (client, a, b, server) if small else ():  # so that the engine must hold bytes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    eng.add(conn_id, a.detach(), b.detach(), 0.0, 0.0, **kw)
    for sock in (client, server):
        sock.settimeout(5)
        keep(sock)
    return client, server


def move(old: Engine, new: Engine) -> list[tuple]:
    """Freeze ``old`` and move every connection to ``new`` (dup'd fds, as SCM_RIGHTS)."""
    old.freeze()
    rows = old.export()
    for row in rows:
        handle, conn_id, fast, cfd, sfd, *state = row
        assert not fast
        new.adopt(conn_id, os.dup(cfd), os.dup(sfd), *state)
        old.release(handle)
    return rows


def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_bytes_held_either_way_arrive_in_order_after_the_move(
    engines: tuple[Engine, Engine], listener: socket.socket
) -> None:
    old, new = engines
    client, server = relay(old, 1, listener, small=True)
    up, down = os.urandom(3 * MiB), os.urandom(3 * MiB)
    client.setblocking(False)
    server.setblocking(False)
    sent_up = sent_down = 0
    deadline = time.monotonic() + 5
    while (sent_up < len(up) or sent_down < len(down)) and time.monotonic() < deadline:
        for sock, data, sent in ((client, up, sent_up), (server, down, sent_down)):
            try:
                n = sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                n = 0
            if sock is client:
                sent_up += n
            else:
                sent_down += n
        time.sleep(0.001)
    wait_for(lambda: old.buffered() > 0)  # the receivers read nothing: the engine holds bytes
    rows = move(old, new)
    [(_, _, _, _, _, c2s, s2c, to_server, to_client, state, *_)] = rows
    assert to_server or to_client, "the engine held nothing: the test proves nothing"
    assert state == 0
    client.setblocking(True)
    server.setblocking(True)
    client.settimeout(5)
    server.settimeout(5)
    got_up = recv_exactly(server, sent_up)
    got_down = recv_exactly(client, sent_down)
    assert got_up == up[:sent_up]
    assert got_down == down[:sent_down]
    client.sendall(b"after")  # the new engine relays on, both ways
    assert recv_exactly(server, 5) == b"after"
    server.sendall(b"back")
    assert recv_exactly(client, 4) == b"back"
    client.close()
    server.close()
    [(conn_id, c2s_total, s2c_total, seconds, reason, _)] = records(new, 1)
    assert conn_id == 1
    assert (c2s_total, s2c_total) == (sent_up + 5, sent_down + 4)  # counters carried over
    assert c2s_total >= c2s and s2c_total >= s2c
    assert reason in ("client-closed", "server-closed", "client-reset", "server-reset")
    assert old.drain() == []  # the old engine made no record for a moved connection
    assert seconds > 0


def test_the_peers_see_no_fin_and_the_old_engine_keeps_no_fd(
    engines: tuple[Engine, Engine], listener: socket.socket
) -> None:
    old, new = engines
    client, server = relay(old, 7, listener)
    client.sendall(b"x")
    assert recv_exactly(server, 1) == b"x"
    old.freeze()
    [row] = old.export()
    cfd, sfd = row[3], row[4]
    new.adopt(7, os.dup(cfd), os.dup(sfd), *row[5:])
    old.release(row[0])
    for fd in (cfd, sfd):
        with pytest.raises(OSError):
            os.fstat(fd)
    for sock in (client, server):  # nothing arrived: no FIN, no reset
        assert select.select([sock], [], [], 0.2)[0] == []
    old.stop()  # stopping the old engine closes nothing of a moved connection
    client.sendall(b"still here")
    assert recv_exactly(server, 10) == b"still here"


def test_a_half_closed_connection_moves_half_closed(
    engines: tuple[Engine, Engine], listener: socket.socket
) -> None:
    old, new = engines
    client, server = relay(old, 3, listener)
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    assert recv_exactly(server, 10) == b"last words"
    assert server.recv(10) == b""  # the FIN was passed on
    [row] = move(old, new)
    assert row[9] == 0b101  # client EOF, its FIN sent on
    server.sendall(b"reply")
    assert recv_exactly(client, 5) == b"reply"
    server.shutdown(socket.SHUT_WR)
    assert client.recv(10) == b""
    [(_, c2s, s2c, _, reason, _)] = records(new, 1)
    assert (c2s, s2c, reason) == (10, 5, "client-closed")


def test_packet_tracking_goes_on_where_it_stopped(
    engines: tuple[Engine, Engine], listener: socket.socket
) -> None:
    old, new = engines
    client, server = relay(old, 5, listener, track_packets=True)
    publish = b"\x30\x0a\x00\x03a/b" + b"hello"  # 12 bytes: PUBLISH, remaining length 10
    server.sendall(publish[:6])  # the move happens inside the packet
    assert recv_exactly(client, 6) == publish[:6]
    [row] = move(old, new)
    state, client_pkt, server_pkt = row[9], row[14:16], row[16:18]
    assert state & 0b100000 and client_pkt == (0, 0) and server_pkt == (6, 0)
    new.goodbye(5, BYE)  # waits for the end of the packet the old engine started
    time.sleep(0.1)
    server.sendall(publish[6:] + publish)  # the rest, then a whole packet the goodbye cuts
    assert recv_exactly(client, 6) == publish[6:]
    assert recv_exactly(client, 3) == BYE
    [(_, _, _, _, reason, _)] = records(new, 1)
    assert reason == "drained"


@pytest.mark.parametrize("cut", [1, 2, 6])  # after the type, inside the length, in the body
def test_a_close_between_packets_after_the_move_lets_the_clients_packet_finish(
    engines: tuple[Engine, Engine], listener: socket.socket, cut: int
) -> None:
    old, new = engines
    client, server = relay(old, 6, listener, track_packets=True)
    body = b"\x00\x03a/b\x00\x01" + b"m" * 200  # QoS 1 PUBLISH, remaining length 207: 2 bytes
    publish = b"\x32\xcf\x01" + body
    client.sendall(publish[:cut])  # the move happens inside the client's packet
    assert recv_exactly(server, cut) == publish[:cut]
    [row] = move(old, new)
    assert row[14:16] == {1: (0, 1), 2: (0x4F, 2), 6: (204, 0)}[cut]
    assert new.goodbye(6, b"")  # MQTT 3.1.1: close once the client's packet is whole
    time.sleep(0.1)
    client.sendall(publish[cut:] + publish)  # the rest, then a whole packet the close cuts
    assert recv_exactly(server, len(publish) - cut) == publish[cut:]
    assert server.recv(10) == b""  # then the close, with nothing of the next packet
    [(_, _, _, _, reason, _)] = records(new, 1)
    assert reason == "drained"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": 1 << 6}, "state bits"),
        ({"state": 0b100}, "state bits"),  # a FIN passed on that never came
        ({"state": 0b1111}, "state bits"),  # both FINs passed on: it had ended
        ({"server_pkt_hdr": 5}, "server's stream"),
        ({"server_pkt_hdr": 2, "server_pkt_left": 200}, "server's stream"),
        ({"server_pkt_left": 1 << 28}, "server's stream"),
        ({"client_pkt_hdr": 5}, "client's stream"),
        ({"client_pkt_hdr": 1, "client_pkt_left": 1}, "client's stream"),  # no length byte yet
        ({"client_pkt_hdr": 4, "client_pkt_left": 1 << 21}, "client's stream"),
        ({"client_pkt_left": 1 << 28}, "client's stream"),
        ({"to_server": b"x" * ((1 << 24) + 262144 + 1)}, "held"),
        ({"age": float("nan")}, "duration"),
        ({"client_quiet": -1.0}, "duration"),
        ({"client_idle": -1.0}, "idle timeout"),
    ],
)
def test_adopt_checks_every_value_and_closes_the_fds_it_refuses(
    engines: tuple[Engine, Engine], change: dict, message: str
) -> None:
    _, new = engines
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    keep(a, d)
    args = {
        "bytes_in": 0, "bytes_out": 0, "to_server": b"", "to_client": b"", "state": 0,
        "client_idle": 0.0, "server_idle": 0.0, "client_quiet": 0.0, "server_quiet": 0.0,
        "client_pkt_left": 0, "client_pkt_hdr": 0, "server_pkt_left": 0, "server_pkt_hdr": 0,
        "age": 0.0,
    }  # fmt: skip
    args.update(change)
    fds = b.detach(), c.detach()
    with pytest.raises(ValueError, match=message):
        new.adopt(9, *fds, *args.values())
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_release_and_export_refuse_what_they_do_not_know(engines: tuple[Engine, Engine]) -> None:
    old, _ = engines
    with pytest.raises(RuntimeError):
        old.export()
    old.freeze()
    assert old.export() == []
    with pytest.raises(ValueError):
        old.release(12345)
    with pytest.raises(RuntimeError):
        old.freeze()
