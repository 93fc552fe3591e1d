"""`fastmqtt bench`, run for real: subprocesses of the CLI against a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fastmqtt.packets import publish_header
from fastmqtt.tools.bench import Client, Histogram, Stats, sample_usage
from fastmqtt.tools.brokers import Mosquitto, free_port


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(name="bench") as b:
        yield b


def bench(*argv: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "fastmqtt", "bench", *argv, "--json", "-q", "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_conn_holds_every_client_and_the_broker_sees_them(broker: Mosquitto) -> None:
    code, r = bench("conn", "-p", str(broker.port), "-c", "20", "-i", "0", "--duration", "0.5",
                    "--prefix", "hold")  # fmt: skip
    assert (code, r["connected"], r["failed"], r["processes"]) == (0, 20, 0, 2)
    assert 0 < r["connack_p50_ms"] <= r["connack_p99_ms"]
    seen = {cid for cid in broker.connected_client_ids() if cid.startswith("hold-")}
    assert seen == {f"hold-{n}" for n in range(20)}


def test_conn_churn_counts_cycles(broker: Mosquitto) -> None:
    code, r = bench("conn", "--churn", "-p", str(broker.port), "-c", "4", "--duration", "1",
                    "--prefix", "churn")  # fmt: skip
    assert code == 0 and r["failed"] == 0
    assert r["cycles"] > 20 and r["cycles_per_s"] == pytest.approx(r["cycles"])
    logged = [cid for cid in broker.connected_client_ids() if cid.startswith("churn-")]
    assert len(logged) >= r["cycles"]  # a cycle only counts once the broker accepted it


@pytest.mark.parametrize("version", ["4", "5"])
def test_pub_echoes_every_message(broker: Mosquitto, version: str) -> None:
    code, r = bench("pub", "-p", str(broker.port), "-c", "2", "-i", "0", "--duration", "1",
                    "--rate", "50", "-s", "100", "-V", version)  # fmt: skip
    assert (code, r["connected"], r["failed"]) == (0, 2, 0)
    assert 80 <= r["sent"] <= 120  # 2 connections x 50 msgs/s x 1 s
    assert r["received"] == r["sent"] and r["lost"] == 0
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]


def test_pub_spreads_over_targets_and_each_echo_comes_home(broker: Mosquitto) -> None:
    # connections finish connecting out of order: each must still publish to its own topic
    with Mosquitto(name="bench2") as other:
        targets = f"{broker.address},{other.address}"
        code, r = bench("pub", "-h", targets, "-c", "12", "-P", "3", "-i", "0",
                        "--duration", "1", "--rate", "20", "--prefix", "spread")  # fmt: skip
        on_other = {cid for cid in other.connected_client_ids() if cid.startswith("spread-")}
    assert (code, r["connected"], r["failed"]) == (0, 12, 0)
    assert r["received"] == r["sent"] >= 200
    assert on_other == {f"spread-{n}" for n in range(1, 12, 2)}


def test_pub_closed_loop_and_watched_process(broker: Mosquitto) -> None:
    assert broker.proc is not None
    code, r = bench("pub", "-p", str(broker.port), "-c", "2", "-i", "0", "--duration", "1",
                    "-s", "4096", "--watch-pid", str(broker.proc.pid))  # fmt: skip
    assert code == 0 and r["received"] == r["sent"] > 1000
    assert r["watch"]["cpu_s"] > 0 and r["watch"]["rss_kb"] > 0


def test_nothing_listening_is_counted_as_failures() -> None:
    code, r = bench("conn", "-p", str(free_port()), "-c", "3", "-i", "0", "--duration", "0.2")
    assert (code, r["connected"], r["failed"]) == (1, 0, 3)
    assert list(r["errors"]) == ["connect: Connection refused"]


def test_histogram_percentiles_within_resolution() -> None:
    h = Histogram()
    for us in range(1, 10_001):
        h.add(us * 1000)
    assert h.percentile_ms(50) == pytest.approx(5.0, rel=0.04)
    assert h.percentile_ms(99) == pytest.approx(9.9, rel=0.04)
    assert Histogram().percentile_ms(50) is None


@pytest.mark.parametrize("version", [4, 5])
def test_client_frames_packets_cut_at_every_offset(version: int) -> None:
    topic = "bench/split-7"
    offset = 2 + len(topic) + (version == 5)
    echo = publish_header(topic, 200, version) + (1).to_bytes(8, "little") + bytes(192)
    suback = b"\x90\x04\x00\x01\x00\x00" if version == 5 else b"\x90\x03\x00\x01\x00"
    stream = b"\x20\x02\x00\x00" + suback + echo * 3

    async def every_cut() -> None:
        for cut in range(len(stream) + 1):
            client = Client(Stats(), offset)
            client.data_received(stream[:cut])
            client.data_received(stream[cut:])
            got = (client.connack.result(), client.suback.result(), client.stats.received)
            assert got == (0, 0, 3), cut

    asyncio.run(every_cut())


@pytest.mark.parametrize(("given", "level"), [("3.1", 3), ("3.1.1", 4), ("5", 5), ("4", 4)])
def test_mqttx_style_versions(given: str, level: int) -> None:
    from fastmqtt.cli import command_parser

    parser, _ = command_parser("bench")
    assert parser.parse_args(["conn", "-V", given]).mqtt_version == level


def test_help_is_the_only_help_flag() -> None:
    """-h is the host, as in mqttx: no usage line offers it as help."""
    for argv in (["bench", "--help"], ["bench", "conn", "--help"], ["bench", "pub", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "fastmqtt", *argv], capture_output=True, text=True, timeout=30
        ).stdout
        assert "[--help]" in out and "[-h]" not in out and "-h, --help" not in out, argv
    bad = subprocess.run(
        [sys.executable, "-m", "fastmqtt", "bench", "conn", "-V", "3.2"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2 and "expected 3.1, 3.1.1 or 5, got '3.2'" in bad.stderr


_BURNER = """
import sys, time
for line in sys.stdin:
    start = time.process_time()
    while time.process_time() - start < float(line):
        pass
    print(time.process_time() - start, flush=True)
"""


def test_cpu_usage_is_read_finer_than_clock_ticks() -> None:
    """The balancer's CPU per connection comes from these samples: 4 ms of another process's
    CPU must read as about 4 ms, not as 0 or 10 ms (stat's ticks: 1,500 one-shot connects are
    7 or 8 of them)."""
    with subprocess.Popen(
        [sys.executable, "-c", _BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as burner:
        assert burner.stdin is not None and burner.stdout is not None

        def burn(seconds: float) -> float:
            burner.stdin.write(f"{seconds}\n")
            burner.stdin.flush()
            return float(burner.stdout.readline())

        burn(0.001)  # started and warm
        before = sample_usage(burner.pid).cpu_s
        spent = burn(0.004)
        read = sample_usage(burner.pid).cpu_s - before
        burner.stdin.close()
    assert abs(read - spent) < 0.0015, (read, spent)
