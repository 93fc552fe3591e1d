"""Soak: churn connections and messages through fastmqtt for a long time, and show whether
its file descriptors and memory stay flat.

Two Mosquitto brokers behind `fastmqtt serve` (the recipe, sticky on client id). Worker
threads connect (client ids from a pool, so the stick table fills and turns over), publish a
few QoS 0 messages (a subscriber that stays connected sees those of its own broker, about
half), disconnect, and every tenth round
send one input from the hostile catalogue instead. Every ``--sample`` seconds a line reports
connections, messages, refusals, fds and RSS; the last lines compare the end with the start.

    python bench/soak.py                    # 30 minutes
    python bench/soak.py --duration 120     # a quick look
"""

from __future__ import annotations

import argparse
import errno
import itertools
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the launchers and probes the tests use

from tests.support.hostile import (  # noqa: E402
    PIPE_POOL_FDS,
    catalogue,
    fd_kinds,
    fds_back_to,
    rss_kib,
    send_and_read,
)
from tests.support.lb import Client, FastMQTT, raw_connect, recipe  # noqa: E402

from fastmqtt import packets  # noqa: E402
from fastmqtt.tools.brokers import free_port, start_brokers  # noqa: E402

HOSTILE = [case for case in catalogue() if not case.hold]


@dataclass
class Tally:
    connections: int = 0
    messages: int = 0
    hostile: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.why: Counter[str] = Counter()  # failures by exception and errno

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def failed(self, exc: OSError) -> None:
        with self.lock:
            self.failures += 1
            self.why[f"{type(exc).__name__}:{errno.errorcode.get(exc.errno or 0, '-')}"] += 1


def churn(
    port: int, worker: int, args: argparse.Namespace, stop: threading.Event, tally: Tally
) -> None:
    """One worker: connect, publish, disconnect, at ``args.rate / args.workers`` rounds a
    second; one hostile input every tenth round."""
    period = args.workers / args.rate
    next_round = time.monotonic()
    for n in itertools.count():
        if stop.wait(max(0.0, next_round - time.monotonic())):
            return
        next_round += period
        if n % 10 == 9:
            send_and_read(port, HOSTILE[(worker + n) % len(HOSTILE)])
            tally.add(hostile=1)
            continue
        try:
            sock = raw_connect(port, f"soak-{(worker * 7919 + n) % args.ids}")
            for i in range(args.messages):
                sock.sendall(packets.publish(f"soak/{worker}", b"m%d" % i))
            sock.sendall(packets.DISCONNECT)
            sock.close()
            tally.add(connections=1, messages=args.messages)
        except OSError as exc:
            tally.failed(exc)


def sample(pid: int, started: float, tally: Tally, received: int) -> tuple[Counter[str], int]:
    fds, rss = fd_kinds(pid), rss_kib(pid)
    print(
        f"{time.monotonic() - started:7.0f}s  conns {tally.connections:8d}  "
        f"msgs {tally.messages:9d} (received {received:9d})  hostile {tally.hostile:7d}  "
        f"failures {tally.failures:4d}  fds {fds.total():5d} ({fds['socket']} sockets, "
        f"{fds['pipe']} pipes)  rss {rss / 1024:7.1f} MiB",
        flush=True,
    )
    return fds, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 30 min)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="connections a second, all workers (default 300: a client's TIME_WAIT sockets "
        "stay within loopback's ephemeral ports; thousands a second exhaust them in a minute)",
    )
    parser.add_argument("--messages", type=int, default=5, help="publishes per connection")
    parser.add_argument("--ids", type=int, default=5000, help="distinct client ids")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between reports")
    args = parser.parse_args()

    brokers = start_brokers(2)
    port = free_port()
    lb = FastMQTT(recipe(brokers, port, backend="stick = true\n"), port=port).start()
    pid = lb.proc.pid  # type: ignore[union-attr]
    subscriber = Client("soak-subscriber", port)
    subscriber.subscribe("soak/#")
    stop, tally = threading.Event(), Tally()
    threads = [
        threading.Thread(target=churn, args=(port, w, args, stop, tally), daemon=True)
        for w in range(args.workers)
    ]
    try:
        time.sleep(1.0)
        start_fds, start_rss = sample(pid, time.monotonic(), tally, 0)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while (left := started + args.duration - time.monotonic()) > 0:
            time.sleep(min(args.sample, left))
            sample(pid, started, tally, len(subscriber.messages))
        stop.set()
        for thread in threads:
            thread.join(30)
        settled = fds_back_to(pid, start_fds, timeout=30)
        end_fds, end_rss = sample(pid, started, tally, len(subscriber.messages))
        growth = (end_rss - start_rss) / start_rss
        print(f"start: {dict(start_fds)} fds, {start_rss / 1024:.1f} MiB RSS")
        print(f"end:   {dict(end_fds)} fds, {end_rss / 1024:.1f} MiB RSS ({growth:+.1%})")
        print(f"(pipes beyond the start are the relay's pool of empty pipes, <= {PIPE_POOL_FDS})")
        if tally.failures:
            print(f"failures: {dict(tally.why)}")
        flat = settled and growth < 0.25
        print("verdict: " + ("flat" if flat else "NOT flat"))
        return 0 if flat and not tally.failures else 1
    finally:
        stop.set()
        subscriber.close()
        lb.stop()
        for broker in brokers:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
