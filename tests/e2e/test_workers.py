"""Worker processes: shared listeners, a killed worker comes back, signals reach them all."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.lb import landed, lb_port, raw_connect, recipe, wait_until

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _sockets(pid: int) -> int:
    fds = os.listdir(f"/proc/{pid}/fd")
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in fds)


def test_two_workers_share_listeners_and_survive_a_kill(brokers, fastmqtt):
    nodes = brokers(3)
    port = lb_port()
    config = recipe(nodes, port, balance="consistent").replace(
        "[global]\n", "[global]\nworkers = 2\n"
    )
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())  # both have bound
    workers = _children(lb.proc.pid)
    idle = {pid: _sockets(pid) for pid in workers}

    held = [raw_connect(port, f"w-{i}") for i in range(200)]
    assert wait_until(lambda: len(landed(nodes)) == 200)
    # SO_REUSEPORT spread the clients: both workers hold some of them
    assert all(_sockets(pid) - idle[pid] >= 20 for pid in workers)
    for s in held:
        s.close()

    os.kill(workers[0], signal.SIGKILL)
    assert wait_until(lambda: len(set(_children(lb.proc.pid)) - set(workers)) == 1, timeout=10)
    for i in range(50):
        raw_connect(port, f"after-kill-{i}").close()  # raises if a client is refused

    survivors = _children(lb.proc.pid)
    lb.signal(signal.SIGTERM)
    assert lb.proc.wait(timeout=15) == 0
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in survivors))
