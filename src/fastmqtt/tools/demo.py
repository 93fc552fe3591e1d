"""`fastmqtt demo`: three local Mosquitto brokers, fastmqtt in front of them, ten clients,
and where each client landed, as counted by the brokers themselves."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys

from fastmqtt import packets
from fastmqtt.config import load_config_text
from fastmqtt.parse import inspect_connack
from fastmqtt.runtime import Runtime
from fastmqtt.tools.brokers import BrokerUnavailable, Mosquitto, free_port, start_brokers

PING_EVERY = 30.0


def demo_config(port: int, brokers: list[Mosquitto], stats_port: int) -> str:
    servers = "".join(
        f'[[backend.cluster.server]]\nname = "{b.name}"\naddress = "{b.address}"\n\n'
        for b in brokers
    )
    return (
        "[defaults]\n"
        'timeout_connect = "2s"\n'
        'timeout_client = "auto"\n'
        'inspect_delay = "10s"\n\n'
        "[frontend.mqtt]\n"
        f'bind = "127.0.0.1:{port}"\n'
        'protocol = "mqtt"\n'
        'backend = "cluster"\n\n'
        "[backend.cluster]\n"
        'balance = "roundrobin"\n'
        'stick = { on = "client_id", size = 100000, expire = "30m" }\n\n'
        + servers
        + f'[stats]\nbind = "127.0.0.1:{stats_port}"\n'
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=1883, help="balancer port (default 1883)")
    parser.add_argument(
        "--stats-port", type=int, default=8888, help="stats page and /metrics (default 8888)"
    )
    parser.add_argument("--clients", type=int, default=10, help="demo clients to connect")
    parser.add_argument("--brokers", type=int, default=3, help="local brokers to start")
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (default: run until Ctrl+C)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        brokers = start_brokers(args.brokers)
    except BrokerUnavailable as exc:
        print(f"fastmqtt demo: {exc}", file=sys.stderr)
        return 1
    try:
        import uvloop

        return uvloop.run(_demo(args, brokers))
    except KeyboardInterrupt:
        return 0
    finally:
        for broker in brokers:
            broker.stop()


def _pick_port(wanted: int, avoid: int = 0) -> int:
    """``wanted`` if it is free, else (or for 0) a port the kernel picks."""
    if wanted in (0, avoid):
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            return free_port()
    return wanted


async def _demo(args: argparse.Namespace, brokers: list[Mosquitto]) -> int:
    loop = asyncio.get_running_loop()
    port = _pick_port(args.port)
    stats_port = _pick_port(args.stats_port, avoid=port)
    runtime = Runtime(load_config_text(demo_config(port, brokers, stats_port), "<demo>"), loop)
    await runtime.find_servers()
    runtime.start()
    clients = [await _connect_client(port, f"demo-{i + 1}") for i in range(args.clients)]
    await asyncio.sleep(0.3)  # brokers write their log lines
    _print_landing(brokers, port, stats_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pinger = loop.create_task(_keep_alive(clients))
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), args.duration or None)
    pinger.cancel()
    for _reader, writer in clients:
        writer.close()
    await runtime.shutdown(grace=1.0)
    return 0


async def _connect_client(
    port: int, client_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(packets.connect(client_id, keepalive=int(PING_EVERY * 2)))
    data = b""
    while (connack := inspect_connack(data)) is None:
        chunk = await asyncio.wait_for(reader.read(64), 5)
        if not chunk:
            raise ConnectionError(f"{client_id}: balancer closed the connection")
        data += chunk
    if connack.reason_code != 0:
        raise ConnectionError(f"{client_id}: broker refused with code {connack.reason_code}")
    return reader, writer


async def _keep_alive(clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    while True:
        await asyncio.sleep(PING_EVERY)
        for reader, writer in clients:
            writer.write(packets.PINGREQ)
            await reader.read(2)


def _print_landing(brokers: list[Mosquitto], port: int, stats_port: int) -> None:
    print(f"fastmqtt demo: {len(brokers)} Mosquitto brokers, round robin, sticky on client id\n")
    for broker in brokers:
        ids = broker.connected_client_ids()
        print(f"  {broker.name} ({broker.address}): {len(ids)} clients  {' '.join(ids)}")
    print(
        f"\nPoint MQTT clients at 127.0.0.1:{port}, e.g.\n"
        f"  mosquitto_sub -h 127.0.0.1 -p {port} -t 'demo/#' -v"
        "   (Debian: apt-get install mosquitto-clients)\n"
        f"Stats page: http://127.0.0.1:{stats_port}/stats\n"
        f"Prometheus: http://127.0.0.1:{stats_port}/metrics\n"
        "Ctrl+C stops the balancer and the brokers.",
        flush=True,
    )
