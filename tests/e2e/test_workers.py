"""Worker processes: shared listeners, a killed worker comes back, signals reach them all."""

from __future__ import annotations

import glob
import os
import signal

import pytest

from fastmqtt.stick import PRIVATE_PREFIX
from tests.support.lb import FastMQTT, landed, lb_port, raw_connect, recipe, wait_until

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


def _private_stick_dirs(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/{PRIVATE_PREFIX}{pid}-*")


def _processes_of(workdir: str) -> list[int]:
    """Live processes whose command line names a file in ``workdir`` (supervisor, workers)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if workdir.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_a_stop_while_the_workers_start_stops_them_and_removes_the_stick_tables(brokers):
    """systemd may stop a unit that is still starting: the supervisor's SIGTERM then reaches
    the workers it spawned, it removes its stick tables and exits 0, instead of dying on the
    default action with its tables left in /dev/shm."""
    nodes = brokers(2)
    config = recipe(nodes, lb_port()).replace("[global]\n", "[global]\nworkers = 2\n")
    lb = FastMQTT(config).start()
    try:
        assert wait_until(lambda: _private_stick_dirs(lb.proc.pid), 10, interval=0.005)
        lb.signal(signal.SIGTERM)  # the workers are still importing: none is ready yet
        assert lb.proc.wait(timeout=20) == 0, lb.logs()
        assert "stopped while the workers started" in lb.logs()
        assert not _private_stick_dirs(lb.proc.pid)
        assert wait_until(lambda: not _processes_of(lb.workdir), 10)
    finally:
        lb.stop()


def test_a_sighup_while_the_workers_start_reloads_once_they_serve(brokers):
    """A reload sent as soon as the port answers may reach the supervisor before its workers
    all said ready: it must not kill it (SIGHUP's default action), and it is applied then."""
    nodes = brokers(2)
    port = lb_port()
    config = recipe(nodes, port).replace("[global]\n", "[global]\nworkers = 2\n")
    lb = FastMQTT(config).start()
    try:
        assert wait_until(lambda: _private_stick_dirs(lb.proc.pid), 10, interval=0.005)
        lb.signal(signal.SIGHUP)  # the workers are still importing
        assert wait_until(lambda: "2 workers serving" in lb.logs(), 20), lb.logs()
        assert wait_until(lambda: lb.logs().count(" reloaded ") == 2, 10), lb.logs()
        assert lb.proc.poll() is None
        raw_connect(port, "after-the-reload").close()
    finally:
        lb.stop()
