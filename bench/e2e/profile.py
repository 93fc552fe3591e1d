"""Where a balancer's time goes per connection: syscalls and CPU under one of run.py's loads.

Starts the three brokers and one target of run.py (fastmqtt or HAProxy, the same recipes),
runs one connection phase (churn, paced or one-shot) with `fastmqtt bench`, and meanwhile
attaches `perf stat` to the balancer: the syscalls it makes, its context switches and its CPU,
divided by the connections it accepted in that window (successful accept4 calls). With
``--record`` a second run samples it with `perf record -g` and prints where the CPU went:
kernel or user space, and which shared object (our extensions, the interpreter, libc).

    python bench/e2e/profile.py churn                 # fastmqtt, saturated churn
    python bench/e2e/profile.py paced --target haproxy
    python bench/e2e/profile.py oneshot --record      # + perf record: CPU by object

Needs `perf` and the right to trace (root, or kernel.perf_event_paranoid <= 1 and tracefs).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import QUICK, FastMQTTTarget, HAProxyTarget, bench, phases, start_nodes

SYSCALLS = shlex.split(
    "accept4 recvfrom sendto connect socket setsockopt getsockopt epoll_ctl epoll_wait close "
    "shutdown read write splice futex"
)
PHASES = {"churn": "churn", "paced": "paced", "oneshot": "idle"}
WARMUP = 1.5  # seconds into the phase before perf attaches (the load has ramped up)


def events() -> list[str]:
    out = shlex.split("task-clock,context-switches -e raw_syscalls:sys_enter")
    out += shlex.split("-e syscalls:sys_exit_accept4 --filter 'ret >= 0'")
    for name in SYSCALLS:
        out += ["-e", f"syscalls:sys_enter_{name}"]
    return out


def perf_stat(pid: int, seconds: float) -> dict[str, float]:
    cmd = ["perf", "stat", "-x", ",", "-p", str(pid), "-e", *events(), "--", "sleep", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    counts: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            counts[fields[2]] = float(fields[0])
    if "task-clock" not in counts:
        raise RuntimeError(f"perf stat failed: {proc.stderr[-600:]}")
    return counts


def perf_record(pid: int, seconds: float, out: Path) -> tuple[str, str]:
    cmd = shlex.split(f"perf record -q -g -F 2999 -p {pid} -o {out} -- sleep {seconds}")
    subprocess.run(cmd, capture_output=True, check=True)
    return report(out, "dso"), report(out, "dso,sym")


def report(data: Path, sort: str) -> str:
    cmd = shlex.split(f"perf report --no-children --stdio -q -g none --percent-limit 0.7 -i {data}")
    proc = subprocess.run([*cmd, "--sort", sort], capture_output=True, text=True)
    return proc.stdout


def under_load(target, phase: str, measure) -> object:
    """Run ``phase`` against the target and call ``measure(pid)`` during it."""
    argv = dict(phases(QUICK))[PHASES[phase]]
    argv = [*argv]
    if phase != "oneshot":
        argv[argv.index("--duration") + 1] = WARMUP + 6
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(bench(target, QUICK, *argv)))
    worker.start()
    time.sleep(WARMUP if phase != "oneshot" else 0.3)
    assert target.pid is not None
    measured = measure(target.pid)
    worker.join()
    return measured, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=sorted(PHASES))
    parser.add_argument("--target", choices=("fastmqtt", "haproxy"), default="fastmqtt")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long perf watches")
    parser.add_argument("--record", action="store_true", help="also perf record -g")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    seconds = min(args.seconds, 2.5) if args.phase == "oneshot" else args.seconds
    workdir = Path(tempfile.mkdtemp(prefix="fastmqtt-profile-"))
    brokers = start_nodes()
    try:

        def target():
            if args.target == "haproxy":
                return HAProxyTarget(brokers)
            return FastMQTTTarget(brokers, workdir, 1, args.set)

        lb = target()
        lb.start()
        try:
            counts, result = under_load(lb, args.phase, lambda pid: perf_stat(pid, seconds))
        finally:
            lb.stop()
        conns = counts.get("syscalls:sys_exit_accept4", 0.0) or 1.0
        print(
            f"{args.target} {args.phase}: {conns:,.0f} connections accepted in "
            f"{seconds:.1f} s; load {os.getloadavg()[0]:.1f}"
        )
        print(
            f"  CPU {counts['task-clock'] * 1000 / conns:.1f} us/conn, "
            f"{counts.get('context-switches', 0) / conns:.2f} context switches/conn, "
            f"{counts.get('raw_syscalls:sys_enter', 0) / conns:.2f} syscalls/conn"
        )
        for name in SYSCALLS:
            n = counts.get(f"syscalls:sys_enter_{name}", 0.0)
            if n:
                print(f"    {name:<12} {n / conns:6.2f}")
        if "connack_p50_ms" in result:
            print(
                f"  CONNECT->CONNACK p50 {result['connack_p50_ms']:.3f} ms, "
                f"p99 {result['connack_p99_ms']:.3f} ms (whole phase, perf attached)"
            )
        if args.record:
            lb = target()
            lb.start()
            try:
                data = workdir / "perf.data"
                recorded = under_load(lb, args.phase, lambda pid: perf_record(pid, seconds, data))
            finally:
                lb.stop()
            (objects, symbols), _ = recorded
            print("  CPU samples by object:")
            print(objects)
            print(symbols)
    finally:
        for b in brokers:
            b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
