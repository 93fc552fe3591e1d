"""fastmqtt vs HAProxy 2.6, same recipe, same brokers, same load, same run.

Starts three Mosquitto brokers, then for each target (direct to the brokers as the floor,
HAProxy with bench/haproxy.cfg, fastmqtt with bench/fastmqtt.toml) runs the same phases with
`fastmqtt bench` and prints one table with the ratios fastmqtt/HAProxy. Each balancer is
started fresh, and measured idle first so its memory baseline is clean.

    python bench/e2e/run.py --quick      # about 1-2 minutes
    python bench/e2e/run.py              # about 5-8 minutes, 9,000 idle connections

The load generator, the balancer and the brokers share this machine's cores: nothing is
pinned, so absolute figures are noise and the side-by-side ratios are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.support.haproxy: the same launcher the tests use

from tests.support.haproxy import HAProxy, find_haproxy  # noqa: E402

import fastmqtt  # noqa: E402
from fastmqtt.tools.brokers import Mosquitto, find_mosquitto, free_port, wait_for_port  # noqa: E402

MAXCONN = 9600  # two fds per proxied connection, 20,000 files per process


@dataclass(frozen=True)
class Plan:
    idle: int  # clients connected at once (one-shot connects/s), then held (memory row)
    idle_s: float
    churn_slots: int
    churn_s: float
    paced_slots: int  # paced churn: paced_slots x paced_rate cycles/s in total
    paced_rate: float
    pub_conns: int  # closed-loop throughput (window 16 per connection)
    pub_s: float
    rate_conns: int  # fixed-rate latency: rate_conns x rate msgs/s in total
    rate: float
    processes: int


# The fixed-rate rows run at 20,000 msgs/s, hundreds per connection: there a relay that leaves
# Nagle's algorithm on delays small packets behind unacknowledged ones (milliseconds at p50).
QUICK = Plan(1500, 3, 16, 5, 20, 100, 50, 4, 20, 1000, 2)
FULL = Plan(9000, 6, 32, 20, 20, 100, 100, 15, 40, 500, 2)


# --- targets --------------------------------------------------------------------------------


def fill(template: str, brokers: Sequence[Mosquitto], bind: str) -> str:
    servers = {f"SERVER{i}": b.address for i, b in enumerate(brokers, 1)}
    text = (ROOT / "bench" / template).read_text()
    return Template(text).substitute(MAXCONN=MAXCONN, BIND=bind, **servers)


class Direct:
    """No balancer: connections go round robin straight to the brokers."""

    name = "direct"
    pid: int | None = None

    def __init__(self, brokers: Sequence[Mosquitto]) -> None:
        self.address = ",".join(b.address for b in brokers)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class HAProxyTarget:
    name = "haproxy"

    def __init__(self, brokers: Sequence[Mosquitto]) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.lb = HAProxy(fill("haproxy.cfg", brokers, self.address), wait_port=port)
        self.pid: int | None = None

    def start(self) -> None:
        self.lb.start()
        assert self.lb.proc is not None
        self.pid = self.lb.proc.pid

    def stop(self) -> None:
        self.lb.stop()


def _holders(pid: int | None, port: int) -> int:
    """How many children of ``pid`` hold a socket listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    held = 0
    for child in children:
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{child}/fd")
            held += any(_link(child, fd) in inodes for fd in fds)
    return held


def _link(pid: str, fd: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""


class FastMQTTTarget:
    """`python -m fastmqtt serve` as a child process; its workers, if any, count too."""

    name = "fastmqtt"

    def __init__(
        self,
        brokers: Sequence[Mosquitto],
        workdir: Path,
        workers: int = 1,
        settings: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        self.config = workdir / "fastmqtt.toml"
        text = fill("fastmqtt.toml", brokers, self.address)
        extra = "".join(f"{line}\n" for line in settings)  # --set KEY=VALUE, into [global]
        self.config.write_text(
            text.replace("[global]\n", f"[global]\nworkers = {workers}\n{extra}", 1)
        )
        self.log = workdir / "fastmqtt.log"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastmqtt", "serve", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        try:
            wait_for_port("127.0.0.1", self.port, 20, self.proc)
            self._wait_for_workers(20)
        except Exception as exc:
            tail = self.log.read_text(errors="replace")[-600:]
            raise RuntimeError(f"fastmqtt serve did not start: {exc}\n{tail}") from None

    def _wait_for_workers(self, timeout: float) -> None:
        """The port answers once one worker has bound; wait until every worker holds a
        listening socket of it (the supervisor's log line is INFO, below the bench's level)."""
        deadline = time.monotonic() + timeout
        while self.workers > 1 and _holders(self.pid, self.port) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.workers} workers not ready after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --- phases -------------------------------------------------------------------------------


def bench(target: Direct | HAProxyTarget | FastMQTTTarget, plan: Plan, *argv: object) -> dict:
    """One `fastmqtt bench ... --json` run against ``target``, watching its balancer."""
    cmd = [sys.executable, "-m", "fastmqtt", "bench", *map(str, argv)]
    cmd += ["-h", target.address, "-P", str(plan.processes), "-i", "0", "--json", "-q"]
    if target.pid is not None:
        cmd += ["--watch-pid", str(target.pid)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if not proc.stdout.strip():
        raise RuntimeError(f"{' '.join(cmd)} printed nothing: {proc.stderr[-600:]}")
    return json.loads(proc.stdout)


def phases(plan: Plan) -> Iterator[tuple[str, list[object]]]:
    yield "idle", ["conn", "--oneshot", "-c", plan.idle, "--duration", plan.idle_s,
                   "--prefix", "idle"]  # fmt: skip
    yield "churn", ["conn", "--churn", "-c", plan.churn_slots, "--duration", plan.churn_s,
                    "--prefix", "churn"]  # fmt: skip
    yield "paced", ["conn", "--churn", "-c", plan.paced_slots, "--rate", plan.paced_rate,
                    "--duration", plan.churn_s, "--prefix", "paced"]  # fmt: skip
    for size in (64, 4096):
        yield f"pub{size}", ["pub", "-c", plan.pub_conns, "-s", size, "--duration", plan.pub_s,
                             "--prefix", f"pub{size}"]  # fmt: skip
        yield f"rate{size}", ["pub", "-c", plan.rate_conns, "-s", size, "--rate", plan.rate,
                              "--duration", plan.pub_s, "--prefix", f"rate{size}"]  # fmt: skip


def measure(target: Direct | HAProxyTarget | FastMQTTTarget, plan: Plan) -> dict[str, dict]:
    results: dict[str, dict] = {}
    target.start()
    try:
        for phase, argv in phases(plan):
            if phase == "idle" and target.pid is None:
                continue  # no balancer, no memory to measure
            results[phase] = r = bench(target, plan, *argv)
            # the machine's 1-minute load after the phase: a busy neighbour shows up here
            r["loadavg_1m"] = os.getloadavg()[0]
            note = f", {r['failed']} FAILED {r['errors']}" if r["failed"] else ""
            line = f"{target.name:<9} {phase:<8} {headline(r)}{note} (load {r['loadavg_1m']:.1f})"
            print(f"  {line}", file=sys.stderr)
    finally:
        target.stop()
    return results


def headline(r: dict) -> str:
    if r["mode"] == "churn":
        return f"{r['cycles_per_s']:,.0f} cycles/s"
    if r["mode"] == "oneshot":
        return f"{r['connected']:,} connected, {r['connects_per_s']:,.0f} connects/s"
    if r["mode"] == "pub":
        return f"{r['msgs_per_s']:,.0f} msg/s, p99 {r['latency_p99_ms']} ms"
    return f"{r['connected']:,} connected"


# --- the table -----------------------------------------------------------------------------


def _get(r: dict[str, dict], phase: str, key: str) -> float | None:
    return r.get(phase, {}).get(key)


def _cpu_per(r: dict[str, dict], phase: str, per: float) -> float | None:
    """Balancer CPU seconds per ``per`` units of work done in the measured window."""
    run = r.get(phase)
    if not run or "watch" not in run:
        return None
    if run["mode"] == "churn":
        work = run["cycles"]
    elif run["mode"] == "oneshot":
        work = run["connected"]
    else:
        work = run["msgs_per_s"] * run["duration_s"]
    return run["watch"]["cpu_s"] / work * per if work else None


def _kb_per_idle(r: dict[str, dict]) -> float | None:
    run = r.get("idle")
    if not run or "watch" not in run or not run["connected"]:
        return None
    w = run["watch"]
    return (w["rss_kb"] - w["rss_before_kb"]) / run["connected"]


def rows(plan: Plan) -> list[tuple[str, Callable[[dict[str, dict]], float | None]]]:
    at = f"@ {plan.rate_conns * plan.rate:,.0f} msg/s"
    paced = f"@ {plan.paced_slots * plan.paced_rate:,.0f}/s"
    return [
        ("churn: cycles/s", lambda r: _get(r, "churn", "cycles_per_s")),
        ("churn: CONNECT->CONNACK p50 ms", lambda r: _get(r, "churn", "connack_p50_ms")),
        ("churn: CONNECT->CONNACK p99 ms", lambda r: _get(r, "churn", "connack_p99_ms")),
        ("churn: LB CPU us / conn", lambda r: _cpu_per(r, "churn", 1e6)),
        (f"churn {paced}: CONNECT->CONNACK p50 ms", lambda r: _get(r, "paced", "connack_p50_ms")),
        (f"churn {paced}: CONNECT->CONNACK p99 ms", lambda r: _get(r, "paced", "connack_p99_ms")),
        (f"churn {paced}: LB CPU us / conn", lambda r: _cpu_per(r, "paced", 1e6)),
        ("one-shot: connects/s", lambda r: _get(r, "idle", "connects_per_s")),
        ("one-shot: LB CPU us / conn", lambda r: _cpu_per(r, "idle", 1e6)),
        ("64 B: msgs/s (closed loop)", lambda r: _get(r, "pub64", "msgs_per_s")),
        (f"64 B: p50 ms {at}", lambda r: _get(r, "rate64", "latency_p50_ms")),
        (f"64 B: p99 ms {at}", lambda r: _get(r, "rate64", "latency_p99_ms")),
        ("64 B: LB CPU s / 100k msgs", lambda r: _cpu_per(r, "pub64", 1e5)),
        (f"64 B: LB CPU s / 100k msgs {at}", lambda r: _cpu_per(r, "rate64", 1e5)),
        ("4 KiB: msgs/s (closed loop)", lambda r: _get(r, "pub4096", "msgs_per_s")),
        (f"4 KiB: p50 ms {at}", lambda r: _get(r, "rate4096", "latency_p50_ms")),
        (f"4 KiB: p99 ms {at}", lambda r: _get(r, "rate4096", "latency_p99_ms")),
        ("4 KiB: LB CPU s / 100k msgs", lambda r: _cpu_per(r, "pub4096", 1e5)),
        (f"4 KiB: LB CPU s / 100k msgs {at}", lambda r: _cpu_per(r, "rate4096", 1e5)),
        (f"idle: LB KB / conn ({plan.idle:,} conns)", _kb_per_idle),
    ]


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


Rounds = list[dict[str, dict[str, dict]]]  # per round: target -> phase -> bench JSON


def median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return statistics.median(present) if present else None


def table(rounds: Rounds, plan: Plan) -> str:
    names = ["direct", "haproxy", "fastmqtt"]
    header = f"{'':<42}" + "".join(f"{n:>10}" for n in names) + f"{'fm/hap':>10}"
    lines = [header, "-" * len(header)]
    for label, metric in rows(plan):
        values = [median([metric(r.get(n, {})) for r in rounds]) for n in names]
        hap, fm = values[1], values[2]
        ratio = f"{fm / hap:.2f}" if fm is not None and hap else "-"
        lines.append(f"{label:<42}" + "".join(f"{_cell(v):>10}" for v in values) + f"{ratio:>10}")
    return "\n".join(lines)


def failures(rounds: Rounds) -> Iterator[str]:
    for number, results in enumerate(rounds, 1):
        for name, phases_ in results.items():
            for phase, r in phases_.items():
                if r.get("failed") or r.get("lost"):
                    counts = f"{r['failed']} failed, {r.get('lost', 0)} lost {r['errors']}"
                    yield f"round {number} {name}/{phase}: {counts}"


def load_range(rounds: Rounds) -> str:
    loads = [r["loadavg_1m"] for res in rounds for ph in res.values() for r in ph.values()]
    if not loads:
        return "nothing measured"
    return (
        f"1-minute load average after the phases: {min(loads):.1f} to {max(loads):.1f} "
        "(this run's own processes included: a round that stands out had a busy neighbour)"
    )


# --- main ----------------------------------------------------------------------------------


def start_nodes() -> list[Mosquitto]:
    """Three brokers that send small packets at once, as EMQX does by default (nodelay)."""
    brokers: list[Mosquitto] = []
    try:
        for i in range(3):
            node = Mosquitto(name=f"node{i + 1}", extra_config="set_tcp_nodelay true")
            brokers.append(node.start())
    except BaseException:
        for b in brokers:
            b.stop()
        raise
    return brokers


def versions() -> str:
    """What was measured, for the record: the numbers mean little without it."""
    haproxy = subprocess.run([find_haproxy(), "-v"], capture_output=True, text=True, timeout=10)
    mosquitto = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True, timeout=10)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    at = f" at {commit.stdout.strip()}" if commit.returncode == 0 else ""
    return (
        f"fastmqtt {fastmqtt.__version__} ({fastmqtt.IMPLEMENTATION}){at}, "
        f"{haproxy.stdout.split(' - ')[0].strip()}, {mosquitto.stdout.splitlines()[0]}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores shared, nothing pinned"
    )


def run_rounds(
    chosen: list[str],
    plan: Plan,
    rounds: int,
    workdir: Path,
    workers: int = 1,
    settings: Sequence[str] = (),
) -> Rounds:
    results: Rounds = []
    brokers = start_nodes()
    try:
        targets = {
            "direct": lambda: Direct(brokers),
            "haproxy": lambda: HAProxyTarget(brokers),
            "fastmqtt": lambda: FastMQTTTarget(brokers, workdir, workers, settings),
        }
        print(f"plan: {plan}; brokers: {[b.address for b in brokers]}", file=sys.stderr)
        for number in range(1, rounds + 1):
            print(f"round {number}/{rounds}", file=sys.stderr)
            results.append({})
            for name in chosen:
                try:
                    results[-1][name] = measure(targets[name](), plan)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    print(f"  {name}: not measured: {exc}", file=sys.stderr)
    finally:
        for b in brokers:
            b.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller and shorter (1-2 min)")
    parser.add_argument(
        "--only", default="direct,haproxy,fastmqtt", help="comma-separated targets to run"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate the targets N times; report medians"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every raw result here")
    parser.add_argument(
        "--workers", type=int, default=1, help="fastmqtt worker processes (SO_REUSEPORT)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [global] line for fastmqtt, e.g. --set track_packets=false (repeatable)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastmqtt-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    rounds = run_rounds(args.only.split(","), plan, args.rounds, workdir, args.workers, args.set)
    print(table(rounds, plan))
    for line in failures(rounds):
        print(f"note: {line}")
    elapsed = time.monotonic() - began
    done = f"{len(rounds)} round(s) in {elapsed:.0f} s"
    settings = f"; fastmqtt [global] {', '.join(args.set)}" if args.set else ""
    print(f"{versions()}; fastmqtt workers: {args.workers}{settings}; {done}")
    print(load_range(rounds))
    if args.json:
        Path(args.json).write_text(json.dumps({"plan": asdict(plan), "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
