"""Hitless reload: SIGHUP applies a new config while thousands of clients stay connected."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fastmqtt import packets
from fastmqtt.parse import inspect_connack
from tests.support.lb import landed, lb_port, raw_connect, servers_toml, wait_until

pytestmark = pytest.mark.e2e

PINGRESP = b"\xd0\x00"


def config(listeners: dict[str, int], nodes, weights: dict[str, int] | None = None) -> str:
    frontends = "".join(
        f'[frontend.{name}]\nbind = "127.0.0.1:{port}"\nbackend = "cluster"\n\n'
        for name, port in listeners.items()
    )
    servers = {n.name: {"weight": (weights or {}).get(n.name, 1)} for n in nodes}
    return (
        '[global]\ngrace = "1s"\n[defaults]\ninspect_delay = "5s"\n\n'
        + frontends
        + '[backend.cluster]\nstick = { on = "client_id" }\n'
        + servers_toml("cluster", nodes, **servers)
    )


async def _connect(port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(packets.connect(client_id, keepalive=0))
    data = b""
    while inspect_connack(data) is None:
        chunk = await asyncio.wait_for(reader.read(16), 10)
        assert chunk, f"{client_id} closed before CONNACK"
        data += chunk
    return reader, writer


async def _alive(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    """One publish and a ping: the connection still reaches a broker."""
    reader, writer = conn
    try:
        writer.write(packets.publish("reload/t", b"x") + packets.PINGREQ)
        return await asyncio.wait_for(reader.readexactly(2), 10) == PINGRESP
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return False


async def _connect_many(port: int, prefix: str, count: int, batch: int = 100) -> list:
    conns = []
    for start in range(0, count, batch):
        conns += await asyncio.gather(
            *(_connect(port, f"{prefix}-{i}") for i in range(start, min(count, start + batch)))
        )
    return conns


async def _all_alive(conns: list) -> list[bool]:
    return list(await asyncio.gather(*(_alive(c) for c in conns)))


async def _close_all(conns: list) -> None:
    for _reader, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _r, w in conns), return_exceptions=True)


def test_reloads_keep_every_client_connected(brokers, fastmqtt):
    node1, node2, node3 = brokers(3)
    ports = {"a": lb_port(), "b": lb_port(), "c": lb_port()}
    lb = fastmqtt(config({"a": ports["a"], "b": ports["b"]}, [node1, node2]), port=ports["a"])
    loop = asyncio.new_event_loop()
    stay: list = []
    leave: list = []
    try:
        stay = loop.run_until_complete(_connect_many(ports["a"], "stay", 1800))
        leave = loop.run_until_complete(_connect_many(ports["b"], "leave", 200))

        # 1: add a server - new clients reach it, old ones are untouched
        assert " reloaded " in lb.reload(
            config({"a": ports["a"], "b": ports["b"]}, [node1, node2, node3])
        )
        assert all(loop.run_until_complete(_all_alive(stay + leave)))
        for i in range(30):
            raw_connect(ports["a"], f"new-{i}").close()
        assert wait_until(lambda: sum(c.startswith("new-") for c in landed([node3])) >= 9)

        # 2: change weights
        heavy = config({"a": ports["a"], "b": ports["b"]}, [node1, node2, node3], {"node1": 8})
        assert " reloaded " in lb.reload(heavy)
        for i in range(100):
            raw_connect(ports["a"], f"heavy-{i}").close()
        assert wait_until(lambda: sum(c.startswith("heavy-") for c in landed([node1])) >= 75)
        assert all(loop.run_until_complete(_all_alive(stay + leave)))

        # an invalid config is refused and changes nothing
        assert "reload refused" in lb.reload("[frontend.x]\nbind = 5\n")
        raw_connect(ports["b"], "still-b").close()

        # 3: remove listener b, add listener c
        third = config({"a": ports["a"], "c": ports["c"]}, [node1, node2, node3])
        assert " reloaded " in lb.reload(third)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["b"]), timeout=2)
        raw_connect(ports["c"], "on-c").close()
        assert all(loop.run_until_complete(_all_alive(stay)))
    finally:
        loop.run_until_complete(_close_all(stay + leave))
        loop.close()
    assert lb.proc is not None and lb.proc.poll() is None
