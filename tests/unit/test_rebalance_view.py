"""The supervisor's rebalance view asks its workers over their real channel (a socketpair,
workers.Channel on one end, a worker's answering task on the other); the worker's
connections are a stand-in hub (RelayHub.find is tested on real connections in
tests/e2e/test_find_clients.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from types import SimpleNamespace

from fastmqtt import workers
from fastmqtt.rebalance_view import LOCATE_REQUEST, WorkerView, _json_batches


class _Hub:
    """Where each client is, and every batch of ids it was asked about."""

    def __init__(self, where: dict[str, str]) -> None:
        self.where = where
        self.asked: list[list[str]] = []

    async def find(self, client_ids=None, backend=None, limit=1000, **_: object) -> list:
        self.asked.append(list(client_ids))
        found = [c for c in client_ids if c in self.where][:limit]
        return [SimpleNamespace(client_id=c, server=self.where[c]) for c in found]


def test_locate_asks_a_worker_in_requests_it_can_read() -> None:
    """3,000 ids of 40 characters are more than one line a worker reads (workers.MAX_REQUEST):
    they go in several requests, each id once, and every connected one is located; an id
    too long for any request is left out, and the worker keeps answering."""
    ids = [f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd-ééé" for i in range(3000)]
    where = {cid: f"node{i % 3 + 1}" for i, cid in enumerate(ids) if i % 4}
    hub = _Hub(where)

    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        source = SimpleNamespace(runtime=SimpleNamespace(hub=hub, fast=None), close=lambda: None)
        answering = asyncio.get_running_loop().create_task(workers._answer(source, theirs))
        worker = SimpleNamespace(index=0, channel=workers.Channel(ours))
        view = WorkerView(SimpleNamespace(live_workers=lambda: [worker]), change=None)
        try:
            located = await view.locate("cluster", [*ids, *ids[:10], "x" * 70000])
            assert located == where
            assert len(hub.asked) > 1
            assert sorted(c for batch in hub.asked for c in batch) == sorted(ids)
            assert not answering.done()
            assert await view.locate("cluster", ids[1:2]) == {ids[1]: where[ids[1]]}
        finally:
            worker.channel.close()
            await asyncio.wait_for(answering, 5)

    asyncio.run(scenario())


def test_json_batches_fit_their_budget() -> None:
    ids = ["a", 'quo"te', "\x00ctl", "dév", "x" * 100, "a"] * 50
    batches = list(_json_batches(ids, 300))
    assert [c for batch in batches for c in batch] == list(dict.fromkeys(ids))
    assert all(len(json.dumps(batch)) <= 300 for batch in batches)
    assert list(_json_batches(["y" * 400, "z"], 300)) == [["z"]]
    assert LOCATE_REQUEST + 1024 < workers.MAX_REQUEST  # the rest of the request fits too
