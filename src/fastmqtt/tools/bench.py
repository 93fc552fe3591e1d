"""`fastmqtt bench conn|pub`: an MQTT load generator that is not the bottleneck.

Raw sockets on uvloop with pre-encoded packets (no client library: per-connection threads do
not scale to thousands of clients), spread over several worker processes. The parent process
only coordinates: it forks the workers, tells them when the measured window starts and ends,
prints a progress line per second, samples the CPU and memory of a watched process (the load
balancer under test) at the window's edges, and merges the workers' results.

- ``bench conn``: connect ``-c`` clients and hold them for ``--duration`` seconds (PINGREQ
  keeps them alive), or with ``--churn`` run ``-c`` slots that each loop
  connect -> CONNECT -> CONNACK -> DISCONNECT -> close, as fast as they can or ``--rate``
  cycles a second each; reports CONNECT->CONNACK latency. ``--oneshot`` connects the clients
  inside the measured window, as fast as ``--concurrency`` allows, and reports connects/s.
- ``bench pub``: every connection subscribes to its own topic and publishes QoS 0 to it, at
  ``--rate`` messages/s per connection, or as fast as the echoes come back with at most
  ``--window`` messages in flight per connection; reports echo throughput and latency (the
  payload starts with the send time in nanoseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait

from fastmqtt import packets
from fastmqtt.deadline import Deadline
from fastmqtt.errors import MalformedPacket
from fastmqtt.framing import packet_at

DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
CONNACK, PUBLISH, SUBACK = 2, 3, 9
PROTOCOL_NAMES = {3: "3.1", 4: "3.1.1", 5: "5.0"}
TIMESTAMP_BYTES = 8
_STAMP = struct.Struct("<Q")  # a payload starts with its send time, perf_counter_ns
MAX_FDS_PER_PROCESS = 19_000  # the hard limit here is 20,000 open files per process
START_DELAY = 0.2  # seconds between the parent's "start" and the window: lets every worker see it
DRAIN_TIMEOUT = 1.0  # how long QoS 0 echoes still in flight may take after the window closes


# --- latency histogram (mergeable across processes) -----------------------------------------

_EXACT = 64  # values below this many microseconds get a bucket each
_SUB = 32  # then 32 buckets per power of two: about 3 % resolution
_BUCKETS = _EXACT + 26 * _SUB  # up to 2**32 us, far beyond any timeout


def _bucket(us: int) -> int:
    if us < _EXACT:
        return max(us, 0)
    shift = us.bit_length() - 6
    return min(_EXACT + (shift - 1) * _SUB + (us >> shift) - _SUB, _BUCKETS - 1)


def _bucket_value(index: int) -> float:
    """Midpoint of a bucket, in microseconds."""
    if index < _EXACT:
        return float(index)
    shift, mantissa = divmod(index - _EXACT, _SUB)
    low = (mantissa + _SUB) << (shift + 1)
    return low + (1 << (shift + 1)) / 2


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    total: int = 0

    def add(self, ns: int) -> None:
        self.counts[_bucket(ns // 1000)] += 1
        self.total += 1

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def percentile_ms(self, q: float) -> float | None:
        if not self.total:
            return None
        rank = q / 100 * self.total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if count and seen >= rank:
                return _bucket_value(index) / 1000
        return None


# --- what a worker counts ------------------------------------------------------------------


_COUNTERS = ("open", "connected", "failed", "cycles", "sent", "received")


@dataclass
class Stats:
    open: int = 0
    connected: int = 0
    failed: int = 0
    cycles: int = 0
    sent: int = 0
    received: int = 0
    received_in_window: int = 0
    cpu_s: float = 0.0
    connect_s: float = 0.0  # oneshot: how long this process took to connect its clients
    errors: Counter[str] = field(default_factory=Counter)
    connack: Histogram = field(default_factory=Histogram)
    echo: Histogram = field(default_factory=Histogram)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.errors[reason] += 1

    def progress(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in _COUNTERS}

    def merge(self, other: Stats) -> None:
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.received_in_window += other.received_in_window
        self.cpu_s += other.cpu_s
        self.connect_s = max(self.connect_s, other.connect_s)
        self.errors.update(other.errors)
        self.connack.merge(other.connack)
        self.echo.merge(other.echo)


# --- one MQTT connection -------------------------------------------------------------------


class Client(asyncio.Protocol):
    """Frames what the server sends; CONNACK and SUBACK resolve futures, PUBLISH echoes are
    timed here in bulk (one clock read per received chunk) and reported to ``on_echoes``."""

    def __init__(self, stats: Stats, echo_offset: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.stats = stats
        self.echo_offset = echo_offset  # from a PUBLISH body's start to its timestamp
        self.on_echoes: Callable[[int], None] | None = None
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.stats.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.open -= 1
        lost = ConnectionError(f"connection lost: {exc or 'closed by peer'}")
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(lost)
                fut.exception()  # retrieved here: nobody may be waiting any more
        if not self.closed.done():  # a Deadline may have cancelled it
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.buf:  # only a packet cut across reads is copied; whole ones are read in place
            self.buf += data
            data = self.buf  # type: ignore[assignment]
        used, echoes = self._frames(data)
        self.buf = bytearray(data[used:])
        if echoes:
            self.stats.received += echoes
            if self.on_echoes is not None:
                self.on_echoes(echoes)

    def _frames(self, buf: bytes | bytearray) -> tuple[int, int]:
        """Handle every complete packet in ``buf``: (bytes used, PUBLISH echoes seen)."""
        pos, end, echoes = 0, len(buf), 0
        now, record = time.perf_counter_ns(), self.stats.echo.add
        while end - pos >= 2:
            length = buf[pos + 1]
            if length < 0x80:  # one-byte remaining length: every small packet, inline
                body = pos + 2
            else:
                try:
                    body, length = packet_at(buf, pos, end)
                except MalformedPacket:
                    raise ConnectionError("malformed remaining length from the server") from None
            if body < 0 or body + length > end:
                break
            kind = buf[pos] >> 4
            if kind == PUBLISH:
                record(now - _STAMP.unpack_from(buf, body + self.echo_offset)[0])
                echoes += 1
            elif kind == CONNACK and not self.connack.done():
                self.connack.set_result(buf[body + 1])  # return code / reason code
            elif kind == SUBACK and not self.suback.done():
                self.suback.set_result(buf[body + length - 1])  # granted QoS or failure
            pos = body + length
        return pos, echoes

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        if self.transport is not None:
            self.transport.abort() if abort else self.transport.close()


# --- a worker process ----------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What one worker process does; ``first`` is the global index of its first connection."""

    mode: str  # "hold", "oneshot", "churn" or "pub"
    targets: tuple[tuple[str, int], ...]
    connections: int
    first: int
    interval: float  # seconds between two connection starts in this process
    version: int
    keepalive: int
    prefix: str
    topic: str
    size: int
    rate: float
    window: int
    timeout: float
    concurrency: int

    def client_id(self, n: int) -> str:
        return f"{self.prefix}-{self.first + n}"

    def target(self, n: int) -> tuple[str, int]:
        return self.targets[(self.first + n) % len(self.targets)]


class Worker:
    """Runs one process's share: set up, wait for the parent's window, measure, tear down."""

    def __init__(self, spec: Spec, pipe: Connection) -> None:
        self.spec = spec
        self.pipe = pipe
        self.stats = Stats()
        self.clients: dict[int, Client] = {}  # by connection index: it names the topic
        self.end_at = 0.0
        self.publishing = False

    async def main(self) -> None:
        reporter = asyncio.ensure_future(self._report_progress())
        try:
            await self._connect_all()
            gc.freeze()  # the long-lived clients leave the collector's scans: shorter pauses
            self.pipe.send(("ready", self.stats.progress()))
            start_at, self.end_at = await self._wait_for_start()
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            cpu_before = time.process_time()
            await self._measure()
            self.stats.cpu_s = time.process_time() - cpu_before
            await self._drain()
        finally:
            reporter.cancel()
            await self._close_all()
        self.pipe.send(("result", self.stats))

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.pipe.send(("progress", self.stats.progress()))

    async def _wait_for_start(self) -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[float, float]] = loop.create_future()

        def on_message() -> None:
            if not fut.done():
                fut.set_result(self.pipe.recv()[1:])

        loop.add_reader(self.pipe.fileno(), on_message)
        try:
            return await asyncio.wait_for(fut, timeout=600)
        finally:
            loop.remove_reader(self.pipe.fileno())

    # setup: hold and pub open their connections before the window; churn and oneshot inside

    async def _connect_all(self) -> None:
        if self.spec.mode in ("churn", "oneshot"):
            return
        await self._open_all()

    async def _open_all(self) -> None:
        gate = asyncio.Semaphore(self.spec.concurrency)
        tasks = []
        for n in range(self.spec.connections):
            await gate.acquire()
            task = asyncio.ensure_future(self._open(n))
            task.add_done_callback(lambda _t: gate.release())
            tasks.append(task)
            if self.spec.interval:
                await asyncio.sleep(self.spec.interval)
        await asyncio.gather(*tasks)

    async def _open(self, n: int) -> None:
        client = await self._session(n, self._connect_packet(n))
        if client is None:
            return
        if self.spec.mode == "pub" and not await self._subscribe(client, n):
            client.close()
            return
        self.clients[n] = client

    def _connect_packet(self, n: int) -> bytes:
        return packets.connect(self.spec.client_id(n), self.spec.version, self.spec.keepalive)

    async def _session(self, n: int, connect: bytes) -> Client | None:
        """Connect, send ``connect`` and wait for a successful CONNACK; failures are counted,
        not raised. Deadline, not wait_for: no extra task per attempt (churn does thousands)."""
        spec, loop = self.spec, asyncio.get_running_loop()
        topic = f"{spec.topic}/{spec.client_id(n)}"
        # a PUBLISH body starts with the topic (and, in 5.0, a property length of 0)
        client = Client(self.stats, len(packets.utf8(topic)) + (spec.version == 5))
        host, port = spec.target(n)
        try:
            with Deadline(loop, spec.timeout):
                await loop.create_connection(lambda: client, host, port)
        except OSError as exc:  # TimeoutError included
            self.stats.fail(f"connect: {_reason(exc)}")
            return None
        sent_at = time.perf_counter_ns()
        client.write(connect)
        try:
            with Deadline(loop, spec.timeout):
                code = await client.connack
        except OSError as exc:
            self.stats.fail(f"CONNACK: {_reason(exc)}")
            client.close()
            return None
        if code:
            self.stats.fail(f"CONNACK code {code}")
            client.close()
            return None
        self.stats.connack.add(time.perf_counter_ns() - sent_at)
        self.stats.connected += 1
        return client

    async def _subscribe(self, client: Client, n: int) -> bool:
        spec = self.spec
        client.write(packets.subscribe(1, f"{spec.topic}/{spec.client_id(n)}", 0, spec.version))
        try:
            with Deadline(asyncio.get_running_loop(), spec.timeout):
                granted = await client.suback
        except OSError as exc:
            self.stats.fail(f"SUBACK: {_reason(exc)}")
            return False
        if granted >= 0x80:
            self.stats.fail(f"SUBACK code {granted}")
            return False
        return True

    # the measured window

    async def _measure(self) -> None:
        if self.spec.mode == "churn":
            slots = range(self.spec.connections)
            await asyncio.gather(*(self._churn(n) for n in slots))
        elif self.spec.mode == "oneshot":
            started = time.monotonic()
            await self._open_all()
            self.stats.connect_s = time.monotonic() - started
            await self._hold()
        elif self.spec.mode == "pub":
            await self._publish()
        else:
            await self._hold()
        self.stats.received_in_window = self.stats.received

    async def _churn(self, n: int) -> None:
        connect = self._connect_packet(n)
        interval = 1 / self.spec.rate if self.spec.rate else 0.0
        due = time.monotonic() + interval * n / self.spec.connections  # slots spread out
        while time.monotonic() < self.end_at:
            if interval:  # paced: cycles start on schedule, a late one does not shift the rest
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += interval
                if time.monotonic() >= self.end_at:
                    break
            client = await self._session(n, connect)
            if client is None:
                await asyncio.sleep(0.05)  # a refusing target must not turn this into a spin
                continue
            client.write(DISCONNECT)
            client.close()
            await self._closed(client)
            self.stats.cycles += 1

    async def _hold(self) -> None:
        while (left := self.end_at - time.monotonic()) > 0:
            await asyncio.sleep(min(left, self.spec.keepalive / 2))
            if self.end_at - time.monotonic() > 0:
                for client in self.clients.values():
                    client.write(PINGREQ)

    async def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        self.publishing = True
        for n, client in self.clients.items():
            send = self._sender(client, n)
            if self.spec.rate:
                # spread the connections' first messages over one interval: no synchronized bursts
                phase = n / self.spec.connections / self.spec.rate
                loop.call_later(phase, self._tick, send, time.monotonic() + phase)
            else:
                client.on_echoes = self._refill(send)
                send(self.spec.window)
        await asyncio.sleep(max(0.0, self.end_at - time.monotonic()))
        self.publishing = False

    def _sender(self, client: Client, n: int) -> Callable[[int], None]:
        spec = self.spec
        padding = bytes(spec.size - TIMESTAMP_BYTES)
        prefix = packets.publish_header(
            f"{spec.topic}/{spec.client_id(n)}", spec.size, spec.version
        )
        stats = self.stats

        def send(count: int) -> None:
            stamp = _STAMP.pack(time.perf_counter_ns())
            client.write((prefix + stamp + padding) * count)
            stats.sent += count

        return send

    def _refill(self, send: Callable[[int], None]) -> Callable[[int], None]:
        """Closed loop: every echo that comes back lets one more message go out."""

        def on_echoes(count: int) -> None:
            if self.publishing:
                send(count)

        return on_echoes

    def _tick(self, send: Callable[[int], None], due: float) -> None:
        """Open loop at a fixed rate, scheduled by due time: one late tick shifts no others."""
        if not self.publishing:
            return
        send(1)
        due += 1 / self.spec.rate
        delay = max(0.0, due - time.monotonic())
        asyncio.get_running_loop().call_later(delay, self._tick, send, due)

    async def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.stats.received < self.stats.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _close_all(self) -> None:
        for client in self.clients.values():
            client.write(DISCONNECT)
            client.close()
        await asyncio.gather(*(self._closed(c) for c in self.clients.values()))
        self.clients.clear()

    async def _closed(self, client: Client) -> None:
        try:
            with Deadline(asyncio.get_running_loop(), self.spec.timeout):
                await client.closed
        except TimeoutError:
            client.close(abort=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _worker_process(spec: Spec, pipe: Connection) -> None:
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):  # the parent reports the interruption
        uvloop.run(Worker(spec, pipe).main())


# --- the watched process (the load balancer under test) ------------------------------------


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (worker processes of a pre-forking server)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except FileNotFoundError:
                pass
    return found


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    rss_kb: int


def sample_usage(pid: int) -> Usage:
    """CPU seconds and resident memory of ``pid`` and its descendants."""
    cpu_s, rss_pages = 0.0, 0
    for p in _process_tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                rss_pages += int(f.read().split()[1])
            cpu_s += _cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    return Usage(cpu_s, rss_pages * page_kb)


def _cpu_seconds(pid: int) -> float:
    """The CPU time of ``pid``'s threads, from their schedstat in nanoseconds: stat's utime
    and stime count 10 ms ticks, and 1,500 one-shot connects cost 7 or 8 of those, too coarse
    for a ratio. A thread that ends within the window takes its time with it (the balancers'
    threads live as long as they do)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


# --- the parent ----------------------------------------------------------------------------


def _split(args: argparse.Namespace, targets: tuple[tuple[str, int], ...]) -> list[Spec]:
    if args.mode == "pub":
        mode = "pub"
    else:
        mode = "churn" if args.churn else ("oneshot" if args.oneshot else "hold")
    base = Spec(
        mode=mode,
        targets=targets,
        connections=0,
        first=0,
        interval=args.interval / 1000 * args.processes,
        version=args.mqtt_version,
        keepalive=args.keepalive,
        prefix=args.prefix,
        topic=getattr(args, "topic", "bench"),
        size=getattr(args, "size", TIMESTAMP_BYTES),
        rate=getattr(args, "rate", 0.0),
        window=getattr(args, "window", 1),
        timeout=args.timeout,
        concurrency=args.concurrency,
    )
    share, extra = divmod(args.connections, args.processes)
    specs, first = [], 0
    for p in range(args.processes):
        count = share + (p < extra)
        specs.append(replace(base, connections=count, first=first))
        first += count
    return [s for s in specs if s.connections]


@dataclass
class Run:
    """The parent's view of the workers: their pipes, progress and results."""

    live: dict[Connection, int]  # pipe -> worker index, while the worker may still talk
    quiet: bool
    progress: dict[int, dict[str, int]] = field(default_factory=dict)
    ready: set[int] = field(default_factory=set)
    results: dict[int, Stats] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_print: float = 0.0

    def pump(self, until: float, done: Callable[[], bool]) -> None:
        """Handle worker messages until ``done()`` or the deadline; print progress each second."""
        while not done() and (left := until - time.monotonic()) > 0:
            if not self.live:
                return
            for pipe in wait(list(self.live), timeout=min(left, 0.25)):
                self._handle(pipe)
            self._print_progress()

    def _handle(self, pipe: Connection) -> None:
        index = self.live[pipe]
        try:
            kind, payload = pipe.recv()
        except EOFError:  # the worker is gone; a result, if any, came before
            del self.live[pipe]
            self.ready.add(index)
            return
        if kind == "result":
            self.results[index] = payload
        else:
            self.progress[index] = payload
            if kind == "ready":
                self.ready.add(index)

    def _print_progress(self) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last_print < 1.0:
            return
        self.last_print = now
        total = Counter[str]()
        for counters in self.progress.values():
            total.update(counters)
        keys = ("open", "failed", "cycles", "sent", "received")
        line = ", ".join(f"{k} {total[k]:,}" for k in keys)
        print(f"[{now - self.started:5.1f}s] {line}", file=sys.stderr, flush=True)


def _setup_timeout(args: argparse.Namespace) -> float:
    per_process = args.connections / args.processes
    connect_time = per_process * (args.interval / 1000) + per_process / 50
    return 30.0 + connect_time + args.timeout


def run_workers(args: argparse.Namespace, targets: tuple[tuple[str, int], ...]) -> dict:
    specs = _split(args, targets)
    context = multiprocessing.get_context("fork")
    before = sample_usage(args.watch_pid) if args.watch_pid else None
    pipes, processes = [], []
    for spec in specs:
        ours, theirs = context.Pipe()
        proc = context.Process(target=_worker_process, args=(spec, theirs), daemon=True)
        proc.start()
        theirs.close()
        pipes.append(ours)
        processes.append(proc)
    run = Run({pipe: i for i, pipe in enumerate(pipes)}, args.quiet)
    try:
        return _coordinate(args, run, before, specs)
    finally:
        for proc in processes:
            proc.join(timeout=args.timeout + 5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def _coordinate(
    args: argparse.Namespace, run: Run, before: Usage | None, specs: list[Spec]
) -> dict:
    workers = len(specs)
    run.pump(time.monotonic() + _setup_timeout(args), lambda: len(run.ready) == workers)
    start_at = time.monotonic() + START_DELAY
    end_at = start_at + args.duration
    for pipe in run.live:
        pipe.send(("start", start_at, end_at))
    run.pump(start_at, lambda: False)
    at_start = sample_usage(args.watch_pid) if args.watch_pid else None
    run.pump(end_at, lambda: False)
    at_end = sample_usage(args.watch_pid) if args.watch_pid else None
    finish = end_at + DRAIN_TIMEOUT + 2 * args.timeout + 10
    run.pump(finish, lambda: len(run.results) == workers)
    total = Stats()
    for stats in run.results.values():
        total.merge(stats)
    for _ in range(workers - len(run.results)):
        total.fail("worker process gave no result")
    return summarize(args, specs, total, before, at_start, at_end)


def summarize(
    args: argparse.Namespace,
    specs: list[Spec],
    total: Stats,
    before: Usage | None,
    at_start: Usage | None,
    at_end: Usage | None,
) -> dict:
    mode = specs[0].mode if specs else "hold"
    result: dict = {
        "mode": mode,
        "targets": [f"{h}:{p}" for h, p in specs[0].targets] if specs else [],
        "connections": args.connections,
        "processes": len(specs),
        "mqtt_version": args.mqtt_version,
        "duration_s": args.duration,
        "connected": total.connected,
        "failed": total.failed,
        "errors": dict(total.errors.most_common(10)),
        "connack_p50_ms": total.connack.percentile_ms(50),
        "connack_p99_ms": total.connack.percentile_ms(99),
        "generator_cpu_s": round(total.cpu_s, 3),
    }
    if mode == "churn":
        result["cycles"] = total.cycles
        result["cycles_per_s"] = total.cycles / args.duration
        result["rate_per_slot"] = specs[0].rate if specs else 0.0
    if mode == "oneshot":
        result["connect_s"] = round(total.connect_s, 3)
        result["connects_per_s"] = total.connected / total.connect_s if total.connect_s else 0.0
    if mode == "pub":
        result.update(
            payload_bytes=specs[0].size,
            rate_per_connection=specs[0].rate,
            sent=total.sent,
            received=total.received,
            lost=max(total.sent - total.received, 0),
            msgs_per_s=total.received_in_window / args.duration,
            latency_p50_ms=total.echo.percentile_ms(50),
            latency_p99_ms=total.echo.percentile_ms(99),
        )
    if before and at_start and at_end:
        result["watch"] = {
            "pid": args.watch_pid,
            "cpu_s": round(at_end.cpu_s - at_start.cpu_s, 3),
            "rss_before_kb": before.rss_kb,
            "rss_kb": at_end.rss_kb,
        }
    return result


# --- output --------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def summary_lines(r: dict) -> Iterable[str]:
    version = PROTOCOL_NAMES[r["mqtt_version"]]
    yield (
        f"fastmqtt bench {r['mode']}: {', '.join(r['targets'])}, {r['connections']:,} "
        f"{'slots' if r['mode'] == 'churn' else 'connections'} over {r['processes']} "
        f"processes, MQTT {version}, {r['duration_s']:g} s measured"
    )
    yield f"  connections     {r['connected']:,} connected, {r['failed']:,} failed"
    for reason, count in r["errors"].items():
        yield f"    {count:>8,}  {reason}"
    yield f"  CONNACK latency p50 {_ms(r['connack_p50_ms'])}  p99 {_ms(r['connack_p99_ms'])}"
    if "cycles" in r:
        yield f"  churn           {r['cycles']:,} cycles, {r['cycles_per_s']:,.0f} cycles/s"
    if "connects_per_s" in r:
        yield (
            f"  oneshot         {r['connected']:,} connected in {r['connect_s']:.2f} s, "
            f"{r['connects_per_s']:,.0f} connects/s"
        )
    if "sent" in r:
        yield (
            f"  messages        {r['sent']:,} sent, {r['received']:,} received, "
            f"{r['lost']:,} lost ({r['payload_bytes']} B payload)"
        )
        yield f"  throughput      {r['msgs_per_s']:,.0f} msg/s"
        yield f"  echo latency    p50 {_ms(r['latency_p50_ms'])}  p99 {_ms(r['latency_p99_ms'])}"
    yield f"  generator CPU   {r['generator_cpu_s']:.2f} s (all worker processes)"
    if "watch" in r:
        w = r["watch"]
        yield (
            f"  pid {w['pid']:<11} {w['cpu_s']:.2f} s CPU in the window, RSS "
            f"{w['rss_before_kb'] / 1024:.1f} -> {w['rss_kb'] / 1024:.1f} MiB"
        )


# --- command line --------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    # mqttx-style short flags; -h is the host as in mqttx, so help is --help only
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument(
        "-h",
        "--hostname",
        default="127.0.0.1",
        help="host, or comma-separated host[:port] list (connections go round robin)",
    )
    parser.add_argument("-p", "--port", type=int, default=1883)
    parser.add_argument("-c", "--count", dest="connections", type=int, default=1000)
    parser.add_argument(
        "-i", "--interval", type=float, default=10.0, help="ms between connection starts"
    )
    parser.add_argument(
        "-V",
        "--mqtt-version",
        type=mqtt_version,
        default=4,
        metavar="{3.1,3.1.1,5}",
        help="MQTT version, as mqttx writes it (default 3.1.1; 3, 4, 5 are protocol levels)",
    )
    parser.add_argument("--prefix", default="bench", help="client id prefix")
    parser.add_argument("-k", "--keepalive", type=int, default=60)
    parser.add_argument("-P", "--processes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--timeout", type=float, default=10.0, help="per connect / ack, s")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="connects in flight per process"
    )
    parser.add_argument(
        "--watch-pid", type=int, help="report this process tree's CPU and RSS (the LB)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


# mqttx's -V values, and the protocol levels they stand for (3.1 = 3, 3.1.1 = 4, 5.0 = 5)
MQTT_VERSIONS = {"3.1": 3, "3": 3, "3.1.1": 4, "4": 4, "5": 5, "5.0": 5}


def mqtt_version(text: str) -> int:
    """The protocol level for ``-V``: mqttx's ``3.1``, ``3.1.1``, ``5``, or a level 3..5."""
    if text not in MQTT_VERSIONS:
        raise argparse.ArgumentTypeError(f"expected 3.1, 3.1.1 or 5, got {text!r}")
    return MQTT_VERSIONS[text]


SHORT_HELP = False  # -h is the host, as in mqttx: --help is the only help flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help", action="help", help="show this help and exit")
    modes = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    conn = modes.add_parser(
        "conn", add_help=False, help="connect clients and hold them, or churn them"
    )
    _common(conn)
    conn.add_argument(
        "--churn",
        action="store_true",
        help="each of -c slots loops CONNECT -> CONNACK -> DISCONNECT",
    )
    conn.add_argument(
        "--rate", type=float, default=0.0, help="churn: cycles/s per slot; 0: as fast as it can"
    )
    conn.add_argument(
        "--oneshot",
        action="store_true",
        help="connect the -c clients inside the measured window (reports connects/s)",
    )
    pub = modes.add_parser(
        "pub", add_help=False, help="each connection publishes QoS 0 to its own topic"
    )
    _common(pub)
    pub.add_argument("-t", "--topic", default="bench", help="topic prefix")
    pub.add_argument("-s", "--size", type=int, default=64, help="payload bytes (>= 8)")
    pub.add_argument(
        "--rate", type=float, default=0.0, help="msgs/s per connection; 0: closed loop"
    )
    pub.add_argument("--window", type=int, default=16, help="in flight per connection (rate 0)")


def parse_targets(hostname: str, port: int) -> tuple[tuple[str, int], ...]:
    targets = []
    for item in hostname.split(","):
        host, sep, given = item.strip().rpartition(":")
        targets.append((host, int(given)) if sep and "]" not in given else (item.strip(), port))
    return tuple(targets)


def _check(args: argparse.Namespace) -> str | None:
    if args.connections < 1 or args.processes < 1 or args.duration <= 0:
        return "-c, -P and --duration must be positive"
    if args.connections / args.processes > MAX_FDS_PER_PROCESS:
        return f"more than {MAX_FDS_PER_PROCESS:,} connections per process: raise -P"
    if getattr(args, "size", TIMESTAMP_BYTES) < TIMESTAMP_BYTES:
        return f"-s must be at least {TIMESTAMP_BYTES} (the payload carries its send time)"
    if getattr(args, "window", 1) < 1 or getattr(args, "rate", 0) < 0:
        return "--window must be positive and --rate not negative"
    if getattr(args, "churn", False) and getattr(args, "oneshot", False):
        return "--churn and --oneshot are two different loads: choose one"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        print(f"fastmqtt bench: {problem}", file=sys.stderr)
        return 2
    args.processes = min(args.processes, args.connections)
    try:
        result = run_workers(args, parse_targets(args.hostname, args.port))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(summary_lines(result)))
    return 1 if result["failed"] else 0
