"""Several processes on one stick table file, over the compiled table and its twin: no live
count is lost, no entry is ever read torn, a SIGKILLed lock holder wedges nobody, and a dead
worker's live counts can be taken back. Every wait is bounded."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from types import ModuleType

import pytest
from tests.support.twins import Implementation

from fastmqtt import stick_file

KEY = bytes(range(16))  # fixed, so which keys share buckets is the same every run

CTX = multiprocessing.get_context("fork")  # the children attach the file themselves
KEYS = 12
NOW = 10_000_000  # a fixed clock: nothing expires while they hammer
JOIN = 120.0  # seconds any child may take, on a busy 2-core box


@pytest.fixture(scope="module")
def impl(implementation: Implementation) -> ModuleType:
    """The stick table module under test (compiled, then the twin)."""
    return implementation.stick


def impl_by_name(name: str):
    return importlib.import_module(f"fastmqtt.{name}")


def server_for(key: int, worker: int) -> int:
    """Servers that name their key: an entry whose server names another key is torn."""
    return key * 16 + worker + 1


def hammer(impl: str, path: str, worker: int, rounds: int, go: Event, out: Connection) -> None:
    file = stick_file.attach(path, worker, impl=impl_by_name(impl))
    table = file.table
    digests = [table.digest(f"key-{k}".encode()) for k in range(KEYS)]
    rng = random.Random(worker)
    go.wait(JOIN)  # all at once
    held = [0] * KEYS
    torn = lost = 0
    for _ in range(rounds):
        k = rng.randrange(KEYS)
        roll = rng.random()
        if roll < 0.4:
            ok = table.connected(digests[k], NOW)
            held[k] += ok
            lost += not ok
        elif roll < 0.8 and held[k]:
            lost += not table.disconnected(digests[k], NOW)
            held[k] -= 1
        else:
            table.put(digests[k], server_for(k, worker), NOW)
        found = table.get(digests[k], NOW)
        torn += not found or (found - 1) // 16 != k
    out.send((worker, held, torn, lost))


def test_processes_hammering_the_same_keys_lose_nothing(tmp_path, impl) -> None:
    procs, rounds = 4, 200_000 if impl.__name__.endswith("_stick") else 15_000
    path = str(tmp_path / "t.stick")
    file = stick_file.create(path, 64, 3_600_000, procs, 0, key=KEY, impl=impl)
    digests = [file.table.digest(f"key-{k}".encode()) for k in range(KEYS)]
    for k, d in enumerate(digests):
        assert file.table.put(d, server_for(k, 0), NOW)
    pipes = [CTX.Pipe(duplex=False) for _ in range(procs)]
    go = CTX.Event()
    name = impl.__name__.split(".")[-1]
    children = [
        CTX.Process(target=hammer, args=(name, path, w, rounds, go, tx))
        for w, (_, tx) in enumerate(pipes)
    ]
    for child in children:
        child.start()
    started = time.monotonic()
    go.set()
    results = []
    for child, (rx, _) in zip(children, pipes, strict=True):
        child.join(max(0.0, started + JOIN - time.monotonic()))
        assert child.exitcode == 0, "a child failed or did not finish in time (deadlock?)"
        results.append(rx.recv())
    elapsed = time.monotonic() - started
    entries = {d: (server, live) for d, server, _, live in file.table.entries(NOW)}
    for worker, held, torn, lost in results:
        assert (torn, lost) == (0, 0), f"worker {worker}"
        for k, d in enumerate(digests):
            assert entries[d][1][worker] == held[k], f"worker {worker}, key {k}"
    for k, d in enumerate(digests):
        server, live = entries[d]
        assert (server - 1) // 16 == k
        assert file.table.peek(d, NOW)[1] == sum(live)  # the total agrees with the columns
    assert elapsed < JOIN
    file.close()


def hold(impl: str, path: str, worker: int, buckets: list[int], ready: Connection) -> None:
    file = stick_file.attach(path, worker, impl=impl_by_name(impl))
    for bucket in buckets:
        file.table.hold_for_test(bucket)
    ready.send(True)
    time.sleep(JOIN)  # killed long before


def touch(impl: str, path: str, digest: bytes, out: Connection) -> None:
    table = stick_file.attach(path, 0, impl=impl_by_name(impl)).table
    out.send((table.get(digest, NOW), table.put(digest, 7, NOW), table.get(digest, NOW)))


def kill_holder(impl, path: str, worker: int, buckets: list[int]) -> int:
    """A child takes the locks of ``buckets`` and is SIGKILLed holding them (and reaped, as
    the supervisor reaps a dead worker); returns its pid."""
    rx, tx = CTX.Pipe(duplex=False)
    name = impl.__name__.split(".")[-1]
    child = CTX.Process(target=hold, args=(name, path, worker, buckets, tx))
    child.start()
    assert rx.poll(JOIN) and rx.recv()
    os.kill(child.pid, signal.SIGKILL)
    child.join(JOIN)
    assert child.exitcode == -signal.SIGKILL
    return child.pid


def test_a_sigkilled_lock_holder_wedges_nobody(tmp_path, impl) -> None:
    path = str(tmp_path / "t.stick")
    file = stick_file.create(path, 800, 3_600_000, 2, 0, key=KEY, impl=impl)
    table = file.table
    victim, bystander = table.digest(b"victim"), table.digest(b"bystander")
    buckets = sorted({int.from_bytes(victim[:8], "little") % table.nbuckets,
                      int.from_bytes(victim[8:], "little") % table.nbuckets})  # fmt: skip
    assert not {
        int.from_bytes(bystander[:8], "little") % table.nbuckets,
        int.from_bytes(bystander[8:], "little") % table.nbuckets,
    } & set(buckets), "pick other names: the two keys share a bucket"
    assert table.put(victim, 3, NOW) and table.put(bystander, 4, NOW)
    kill_holder(impl, path, 1, buckets)

    rx, tx = CTX.Pipe(duplex=False)
    name = impl.__name__.split(".")[-1]
    started = time.monotonic()
    child = CTX.Process(target=touch, args=(name, path, victim, tx))
    child.start()
    assert rx.poll(10), "the dead holder's lock was never taken over"
    # its buckets may have been half-written: they were emptied, then the put went in
    assert rx.recv() == (0, True, 7)
    child.join(JOIN)
    assert time.monotonic() - started < 10
    assert table.get(bystander, NOW) == 4  # other buckets are untouched
    file.close()


def test_a_dead_workers_live_counts_are_taken_back(tmp_path, impl) -> None:
    path = str(tmp_path / "t.stick")
    file = stick_file.create(path, 100, 60_000, 2, 0, key=KEY, impl=impl)
    table = file.table
    shared, solo, alone = (table.digest(n) for n in (b"shared", b"solo", b"alone"))
    for d in (shared, solo, alone):
        assert table.put(d, 1, NOW)
    dead = impl.Table(file.mapping, file.fd, 1)  # worker 1's view, as its process had it
    for d in (shared, solo, alone, alone):
        assert dead.connected(d, NOW)
    assert table.connected(shared, NOW)  # worker 0 holds one too
    del dead
    # worker 1 dies holding the lock of the bucket ``alone`` is in (its first: a tie)
    alone_bucket = int.from_bytes(alone[:8], "little") % table.nbuckets
    pid = kill_holder(impl, path, 1, [alone_bucket])

    later = NOW + 5000
    assert table.recover_worker(1, pid, later) == 2  # shared's and solo's; alone's bucket went
    assert table.peek(alone, later) is None  # half-written, for all anyone knows: emptied
    assert table.peek(shared, later)[:2] == (1, 1)  # worker 0's connection stays
    assert table.peek(solo, later) == (1, 0, later)  # idle from the recovery on
    assert table.get(solo, later + 60_000) == 0
    assert table.get(shared, NOW + 10 * 60_000) == 1
    file.close()
