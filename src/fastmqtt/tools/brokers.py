"""Local Mosquitto brokers on free loopback ports, for the demo, the tests and the benchmarks.

Every broker is a child process we started; it is stopped by its PID only.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

_CONNECTED = re.compile(r"New client connected from \S+ as (\S+) ")
_TCP_ACCEPTED = re.compile(r"New connection from ")


class BrokerUnavailable(RuntimeError):
    """Mosquitto is missing or did not start."""


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerUnavailable(
        "mosquitto not found: install it (Debian/Ubuntu: `apt-get install mosquitto`)"
    )


EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
LISTEN_PORTS = 12000  # how many ports below the ephemeral range free_port draws from


def _listen_ports() -> range | None:
    """Ports below the kernel's ephemeral range (where it takes the local port of every
    outgoing connection): a port found free there cannot be taken by some test's client
    before the broker or balancer binds it. None when there is no such room."""
    try:
        with open(EPHEMERAL_RANGE) as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(low - LISTEN_PORTS, low) if low - LISTEN_PORTS >= 10000 else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago: a random one below the ephemeral range (many test
    processes run at once: see _listen_ports), else one the kernel picks."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = _listen_ports()
    for _ in range(100 if ports else 0):
        port = random.choice(ports)  # type: ignore[arg-type]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    """Poll until something accepts on host:port; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerUnavailable(f"process {proc.pid} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"nothing listening on {host}:{port} after {timeout}s"
                ) from None
            time.sleep(0.02)


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM a child we started, SIGKILL it if it has not exited after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Mosquitto:
    """One Mosquitto broker listening on ``host:port`` (a free port when port is 0)."""

    port: int = 0
    host: str = "127.0.0.1"
    name: str = "mosquitto"
    extra_config: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    workdir: str = field(default="", repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "mosquitto.log")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        binary = find_mosquitto()
        if not self.port:
            self.port = free_port(self.host)
        self.workdir = self.workdir or tempfile.mkdtemp(prefix=f"fastmqtt-{self.name}-")
        conf = os.path.join(self.workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(
                f"listener {self.port} {self.host}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "user root\n"
                f"log_dest file {self.log_path}\n"
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                "connection_messages true\n"
                "sys_interval 1\n"
                "max_keepalive 65535\n"
                f"{self.extra_config}\n"
            )
        open(self.log_path, "w").close()  # a fresh start gets a fresh log
        # mosquitto flushes its log file per line, not its stdout: read the file
        self.proc = subprocess.Popen(
            [binary, "-c", conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
        except BrokerUnavailable as exc:
            self.stop()
            raise BrokerUnavailable(f"{self.name}: {exc}; log: {self.read_log()[-500:]}") from None
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as a crashed node would."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self, timeout: float = 10.0) -> Mosquitto:
        self.stop()
        return self.start(timeout)

    def read_log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def connected_client_ids(self) -> list[str]:
        """Client ids in the order the broker logged their connection (repeats included)."""
        return _CONNECTED.findall(self.read_log())

    def tcp_connection_count(self) -> int:
        """TCP connections the broker accepted so far (our own readiness probe included)."""
        return len(_TCP_ACCEPTED.findall(self.read_log()))

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_brokers(count: int, host: str = "127.0.0.1") -> list[Mosquitto]:
    """Start ``count`` brokers; on failure stop the ones already started."""
    brokers: list[Mosquitto] = []
    try:
        for i in range(count):
            brokers.append(Mosquitto(host=host, name=f"node{i + 1}").start())
    except BaseException:
        for b in brokers:
            b.stop()
        raise
    return brokers
