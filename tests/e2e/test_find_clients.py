"""Where are these clients? RelayHub.find for many client ids at once (what a rebalance asks
every second about the clients it moved, rebalance_view.LocalView.locate): an in-process
Runtime, a real broker, raw MQTT clients on the fast path and on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
import uvloop

from fastmqtt import packets, runtime
from fastmqtt.config import load_config
from fastmqtt.parse import inspect_connack
from fastmqtt.rebalance_view import LocalView
from tests.e2e.conftest import on_path
from tests.support.lb import lb_port, recipe

pytestmark = pytest.mark.e2e

# client ids that share prefixes, an empty one, some not ASCII; each connected once
FLEET = ["dev", "dev-1", "dev-10", "dev-100", "de", "", "dév-1", "dev-1 ", "x" * 300]
MAX_FIND_KEYS = 4096  # _fastpath.MAX_FIND_KEYS: one engine query asks for so many ids at most


def _connect(port: int, client_id: str) -> socket.socket:
    """A 3.1.1 client (no id is assigned to the empty one), its CONNACK read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(packets.connect(client_id))
    data = b""
    while inspect_connack(data, 4) is None:
        chunk = sock.recv(256)
        assert chunk, f"{client_id!r}: closed before its CONNACK"
        data += chunk
    return sock


def test_find_by_client_ids_returns_exactly_their_connections(brokers, path, tmp_path) -> None:
    """Two frontends (the second always on the event loop): one find() for many ids returns
    each connection of every id named, once however often named, none of ids not connected,
    and no more than its limit; more ids than one engine query takes (the connected ones
    first and last) still find all; locate() says the server of each."""
    nodes = brokers(2)
    port, loop_port = lb_port(), lb_port()
    second = (
        f'[frontend.loop]\nbind = "127.0.0.1:{loop_port}"\nprotocol = "mqtt"\n'
        'backend = "cluster"\nfast_path = false\n\n'
    )
    text = on_path(recipe(nodes, port), path).replace(
        "[backend.cluster]", second + "[backend.cluster]"
    )
    config_path = tmp_path / "lb.toml"
    config_path.write_text(text)
    config = load_config(config_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        proxy = runtime.Runtime(config, loop)
        proxy.start()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(proxy.shutdown, 0.0)
            for i, cid in enumerate(FLEET):
                sock = await loop.run_in_executor(None, _connect, port if i % 2 else loop_port, cid)
                stack.enter_context(sock)
            hub = proxy.hub
            everyone = await hub.find()
            assert sorted(c.client_id or "" for c in everyone) == sorted(FLEET)
            on_fast = {c.client_id for c in everyone if c.path == "fast"}
            assert on_fast == (set() if path == "loop" else set(FLEET[1::2]))
            by_id = {c.client_id: c for c in everyone}

            async def ids_of(*ids: str, limit: int = 1000) -> list[int]:
                found = await hub.find(client_ids=ids, limit=limit)
                return sorted(c.conn_id for c in found)

            def conns(*ids: str) -> list[int]:
                return sorted(by_id[i].conn_id for i in ids)

            assert await ids_of("dev-1", "dev-1", "dev-10", "nobody", "dev-1000", "de") == conns(
                "dev-1", "dev-10", "de"
            )
            assert await ids_of("dév-1", "dev-1 ", "x" * 300, "x" * 299) == conns(
                "dév-1", "dev-1 ", "x" * 300
            )
            assert await ids_of("") == conns("")
            assert await ids_of() == []
            assert await ids_of(*FLEET) == conns(*FLEET)
            assert len(await ids_of(*FLEET, limit=5)) == 5
            fillers = [f"absent-{i}" for i in range(2 * MAX_FIND_KEYS)]
            many = FLEET[:4] + fillers + FLEET[4:]
            assert await ids_of(*many) == conns(*FLEET)
            with pytest.raises(ValueError):
                await hub.find(client_id="dev", client_ids=["dev"])
            where = await LocalView(proxy).locate("cluster", ["dev", "dev", "nobody", "de"])
            assert where == {"dev": by_id["dev"].server, "de": by_id["de"].server}
            assert set(where.values()) <= {n.name for n in nodes}

    uvloop.run(scenario())
