"""How long a rebalance's `locate` takes (rebalance_view.LocalView.locate: where are the
clients it asked to leave?) with N fast-path connections held open through fastmqtt.

An in-process Runtime (uvloop) over two Mosquitto brokers; a child process opens the N
clients (3.1.1, no keepalive) and holds them, so this process holds only the balancer's 2 fds
per connection (N <= 9,500 under a 20,000-fd limit); with --loop, on the event-loop path
(fast_path = false: Python sessions, the pairs relayed by the engine). Each row: one locate
of K connected client ids picked at random, the best and the median of --repeat runs.

    PYTHONPATH=src python bench/e2e/locate.py --conns 5000 9000 --ids 500 1500
    PYTHONPATH=src python bench/e2e/locate.py --conns 5000 --ids 500 1500 --loop
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.support.lb import lb_port, recipe

from fastmqtt import packets, runtime
from fastmqtt.config import load_config
from fastmqtt.rebalance_view import LocalView
from fastmqtt.tools.brokers import start_brokers

BATCH = 200  # connects in flight (a burst of thousands would overflow the listen backlog)


async def _hold(port: int, count: int) -> None:
    """The child: ``count`` clients bench-0.. connected, "ready" on stdout, held until stdin
    closes."""
    writers = []

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(packets.connect(f"bench-{i}", keepalive=0))
        assert (await reader.readexactly(4))[:2] == b"\x20\x02", f"bench-{i}: no CONNACK"
        writers.append(writer)

    for start in range(0, count, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + BATCH))))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()


async def _measure(config_path: str, port: int, conns: int, sizes: list[int], repeat: int) -> None:
    loop = asyncio.get_running_loop()
    proxy = runtime.Runtime(load_config(config_path), loop)
    proxy.start()
    child = subprocess.Popen(
        [sys.executable, __file__, "--hold", str(port), str(conns)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        started = time.monotonic()
        line = await loop.run_in_executor(None, child.stdout.readline)
        assert line == b"ready\n", "the clients did not all connect"
        while len(proxy.hub) < conns and time.monotonic() - started < 120:
            await asyncio.sleep(0.1)
        found = await proxy.hub.find(limit=conns + 1)
        paths = {c.path for c in found}
        took = time.monotonic() - started
        print(f"{conns} connections ({', '.join(sorted(paths))}) in {took:.1f} s")
        view = LocalView(proxy)
        ids = [f"bench-{i}" for i in range(conns)]
        for size in sizes:
            times = []
            for _ in range(repeat):
                wanted = random.sample(ids, size)
                t0 = time.perf_counter()
                where = await view.locate("cluster", wanted)
                times.append(time.perf_counter() - t0)
                assert sorted(where) == sorted(wanted), "locate missed clients"
            print(
                f"  locate of {size:5d} ids: best {min(times) * 1000:9.1f} ms, "
                f"median {statistics.median(times) * 1000:9.1f} ms ({repeat} runs)"
            )
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)
        await proxy.shutdown(0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, nargs="+", default=[5000, 9000])
    parser.add_argument("--ids", type=int, nargs="+", default=[500, 1500])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--loop", action="store_true", help="fast_path = false")
    parser.add_argument("--hold", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        asyncio.run(_hold(*args.hold))
        return
    import uvloop

    logging.basicConfig(level=logging.WARNING)
    for conns in args.conns:
        nodes = start_brokers(2)
        try:
            port = lb_port()
            text = recipe(nodes, port).replace(
                "[global]\n",
                "[global]\nmaxconn = 19000\nlog_connections = false\n"
                + ("fast_path = false\n" if args.loop else ""),
                1,
            )
            text = text.replace(
                "[defaults]\n", '[defaults]\nmaxconn = 19000\ntimeout_client = "1h"\n', 1
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "lb.toml")
                with open(path, "w") as f:
                    f.write(text)
                uvloop.run(_measure(path, port, conns, args.ids, args.repeat))
        finally:
            for node in nodes:
                node.stop()


if __name__ == "__main__":
    main()
