"""How long a takeover takes (takeover.py): N pinging clients and 20 QoS 1 publishers through
fastmqtt, then `serve --takeover` starts a new process.

Reports the old process's "stopped accepting -> every connection handed over" time, the new
process's "stopped accepting -> every connection adopted" time (both from their logs), and the
longest round trip of any ping sent around the takeover (the gap a relayed connection saw).

    PYTHONPATH=src python bench/e2e/takeover.py --clients 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.support.lb import FastMQTT, lb_port, recipe, wait_until
from tests.support.swarm import load_around, longest_gap

from fastmqtt.serve import raise_fd_limit
from fastmqtt.tools.brokers import start_brokers

PING_EVERY = 2.0


async def main(clients: int, workers: int) -> None:
    raise_fd_limit()  # this process and the brokers it starts hold a socket per client
    brokers = start_brokers(1)  # the subscriber sees every publisher
    port, path = lb_port(), os.path.join(tempfile.mkdtemp(), "takeover.sock")
    config = recipe(brokers, port).replace(
        "[global]\n", f'[global]\ntakeover_socket = "{path}"\nworkers = {workers}\n', 1
    )
    old = FastMQTT(config, port=port).start()
    new: list[FastMQTT] = []

    def take_over() -> None:
        new.append(FastMQTT(config, port=port, args=["--takeover", path]).start())
        wait_until(lambda: old.proc.poll() is not None, 60)

    try:
        pingers, pubs, sub, started, ended = await load_around(
            port, clients, 20, take_over, PING_EVERY, 0.05, 2 * PING_EVERY, 3 * PING_EVERY
        )
        # one line per worker: the slowest one is the takeover's time
        handed = max(re.findall(r"handed over to pid \d+ \(\d+ adopted\) in (\d+) ms", old.logs()),
                     key=int, default=None)  # fmt: skip
        adopted = re.findall(
            r"adopted (\d+) connections in (\d+) ms .*?receiving took (\d+) ms", new[0].logs()
        )
        lost = sum(1 for p in [*pingers, *pubs] if p.lost)
        acked = [m for p in pubs for m in p.acked]
        exact = all(sub.received[m] == 1 for m in acked) and len(sub.received) == len(acked)
        print(f"connections: {clients + 21}")
        print(f"old: handed over in {handed} ms (the slowest worker)")
        print(f"new: adopted (connections, ms, of which receiving ms) per worker: {adopted}")
        gap = longest_gap(pingers, started - PING_EVERY, ended)
        print(f"longest ping round trip around the takeover: {gap * 1000:.0f} ms")
        print(
            f"clients that lost their connection: {lost}; QoS 1 exactly once: {exact} "
            f"({len(acked)} acknowledged, {sum(sub.received.values())} received)"
        )
    finally:
        for lb in [old, *new]:
            lb.stop()
        for broker in brokers:
            broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.clients, args.workers))
