"""Test helpers: a `fastmqtt serve` child process, lb.toml snippets, and paho clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fastmqtt import packets
from fastmqtt.parse import inspect_connack
from fastmqtt.tools.brokers import Mosquitto, free_port, wait_for_port


def servers_toml(backend: str, brokers: Sequence[Mosquitto], **extra: object) -> str:
    """``[[backend.NAME.server]]`` entries for running brokers; ``extra`` maps a broker name
    to a dict of additional keys (e.g. ``node1={"weight": 5}``)."""
    out = []
    for b in brokers:
        keys = {"name": b.name, "address": b.address, **extra.get(b.name, {})}  # type: ignore[dict-item]
        body = "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
        out.append(f"[[backend.{backend}.server]]\n{body}")
    return "\n".join(out)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def recipe(
    brokers: Sequence[Mosquitto],
    port: int,
    backend: str = "",
    frontend: str = "",
    defaults: str = "",
    servers: dict[str, dict[str, object]] | None = None,
    balance: str = "roundrobin",
    inspect_delay: str = "2s",
) -> str:
    """The HAProxy recipe in lb.toml form, with extra lines per section."""
    return (
        f'[global]\nlog_level = "info"\ngrace = "2s"\n\n'
        f'[defaults]\ntimeout_connect = "2s"\ninspect_delay = "{inspect_delay}"\n{defaults}\n'
        f'[frontend.mqtt]\nbind = "127.0.0.1:{port}"\nprotocol = "mqtt"\nbackend = "cluster"\n'
        f"{frontend}\n"
        f'[backend.cluster]\nbalance = "{balance}"\n{backend}\n'
        + servers_toml("cluster", brokers, **(servers or {}))
    )


@dataclass
class FastMQTT:
    """`python -m fastmqtt serve` on a config; ``port`` is probed until it accepts."""

    config: str
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    preexec_fn: Callable[[], None] | None = None  # runs in the child before exec (rlimits)
    args: Sequence[str] = ()  # more `serve` arguments (--takeover PATH)
    proc: subprocess.Popen | None = None
    workdir: str = ""

    def start(self, timeout: float = 15.0) -> FastMQTT:
        self.workdir = tempfile.mkdtemp(prefix="fastmqtt-lb-")
        path = os.path.join(self.workdir, "lb.toml")
        with open(path, "w") as f:
            f.write(self.config)
        self.stdout = open(os.path.join(self.workdir, "stdout.log"), "wb")  # noqa: SIM115
        self.stderr = open(os.path.join(self.workdir, "stderr.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastmqtt", "serve", path, *self.args],
            stdout=self.stdout,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            preexec_fn=self.preexec_fn,
        )
        if self.port:
            try:
                wait_for_port("127.0.0.1", self.port, timeout, self.proc)
            except Exception:
                self.stop()
                raise RuntimeError(f"fastmqtt did not start:\n{self.logs()}") from None
        return self

    def logs(self) -> str:
        return self.read("stderr.log") + self.read("stdout.log")

    def read(self, name: str) -> str:
        with open(os.path.join(self.workdir, name), encoding="utf-8", errors="replace") as f:
            return f.read()

    def connection_log(self) -> list[str]:
        return [line for line in self.read("stdout.log").splitlines() if line.strip()]

    def reload(self, config: str, timeout: float = 10.0) -> str:
        """Rewrite lb.toml, send SIGHUP, and return the log line that answered it."""
        answered = self._reload_lines()
        with open(os.path.join(self.workdir, "lb.toml"), "w") as f:
            f.write(config)
        self.config = config
        self.signal(signal.SIGHUP)
        if not wait_until(lambda: len(self._reload_lines()) > len(answered), timeout):
            raise TimeoutError(f"no answer to SIGHUP:\n{self.logs()}")
        return self._reload_lines()[-1]

    def _reload_lines(self) -> list[str]:
        return [
            line
            for line in self.read("stderr.log").splitlines()
            if " reloaded " in line or "reload refused" in line
        ]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.send_signal(signal.SIGINT)  # second signal: exit at once
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.stdout.close()
        self.stderr.close()
        return self.proc.returncode


def ws_recipe(*args: object, **kwargs: object) -> str:
    """The recipe with its frontend speaking MQTT over WebSocket."""
    return recipe(*args, **kwargs).replace('protocol = "mqtt"', 'protocol = "ws"', 1)  # type: ignore[arg-type]


def lb_port() -> int:
    return free_port()


class Client:
    """A paho-mqtt 2.x client connected through the balancer, its network loop in a thread."""

    def __init__(
        self,
        client_id: str,
        port: int,
        clean: bool = True,
        version: int = 4,
        host: str = "127.0.0.1",
        keepalive: int = 60,
        connect: bool = True,
        **kwargs: object,
    ) -> None:
        protocol = {3: paho.MQTTv31, 4: paho.MQTTv311, 5: paho.MQTTv5}[version]
        if version == 5:
            self.mqtt = paho.Client(
                CallbackAPIVersion.VERSION2, client_id, protocol=protocol, **kwargs
            )  # type: ignore[arg-type]
        else:
            self.mqtt = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id,
                clean_session=clean,
                protocol=protocol,
                **kwargs,  # type: ignore[arg-type]
            )
        self.version = version
        self.clean = clean
        self.host, self.port, self.keepalive = host, port, keepalive
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.reason_code: object = None
        self.session_present: bool | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.got_message = threading.Event()
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = self._on_message
        if connect:
            self.connect()

    def connect(self, timeout: float = 10.0) -> Client:
        self.connected.clear()
        self.disconnected.clear()
        kwargs = {}
        if self.version == 5:
            kwargs["clean_start"] = self.clean
        self.mqtt.connect(self.host, self.port, self.keepalive, **kwargs)
        self.mqtt.loop_start()
        if not self.connected.wait(timeout):
            self.mqtt.loop_stop()
            raise TimeoutError(f"no CONNACK within {timeout}s")
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self.reason_code = reason_code
        self.session_present = flags.session_present
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self.disconnect_reason = reason_code
        self.disconnected_at = time.monotonic()
        self.disconnected.set()

    def _on_message(self, client, userdata, message) -> None:
        self.messages.append((message.topic, message.payload))
        self.got_message.set()

    def subscribe(self, topic: str, qos: int = 0, timeout: float = 5.0) -> None:
        done = threading.Event()
        self.mqtt.on_subscribe = lambda *a, **k: done.set()
        self.mqtt.subscribe(topic, qos)
        if not done.wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        info = self.mqtt.publish(topic, payload, qos)
        if qos:
            info.wait_for_publish(5)

    def wait_message(self, timeout: float = 5.0) -> bool:
        return self.got_message.wait(timeout)

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        # paho closes its wake-up socket pair only in __del__, which the callbacks' reference
        # cycle delays to some later garbage collection (a ResourceWarning in another test)
        self.mqtt._reset_sockets(sockpair_only=True)


def close_all(clients: Sequence[Client]) -> None:
    """Close many clients at once: a loop thread in paho's reconnect wait sees a disconnect
    only once a second, so each is told before any is waited for."""
    for c in clients:
        c.mqtt.disconnect()
    for c in clients:
        c.close()


def ws_client(client_id: str, port: int, context=None, **kwargs: object) -> Client:
    client = Client(client_id, port, connect=False, transport="websockets", **kwargs)
    if context is not None:
        client.mqtt.tls_set_context(context)
    return client.connect()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout``; bounded, returns the last verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def raw_connect(port: int, client_id: str, version: int = 4, **kwargs: object) -> socket.socket:
    """A plain-socket MQTT client: CONNECT through the balancer, wait for a CONNACK of 0."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(packets.connect(client_id, version=version, **kwargs))  # type: ignore[arg-type]
    data = b""
    while (connack := inspect_connack(data, version)) is None:
        chunk = sock.recv(256)
        if not chunk:
            sock.close()
            raise ConnectionError(f"{client_id}: closed before CONNACK")
        data += chunk
    if connack.reason_code != 0:
        sock.close()
        raise ConnectionError(f"{client_id}: CONNACK {connack.reason_code}")
    return sock


def landed(brokers: Sequence[Mosquitto]) -> dict[str, str]:
    """client id -> name of the broker that logged it last."""
    where: dict[str, str] = {}
    for b in brokers:
        for cid in b.connected_client_ids():
            where[cid] = b.name
    return where


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the other side closes (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def returning_device(
    connect: Callable[[], Client], nodes: Sequence[Mosquitto], wait: float
) -> tuple[Client, bool]:
    """Stickiness as brokers see it: a device with a persistent session subscribes at QoS 1
    and leaves; a message is published straight to the broker holding its session; the device
    comes back through ``connect`` (the balancer). Returns it and whether the queued message
    arrived within ``wait`` seconds (only if it landed on the same broker)."""
    device = connect()
    device.subscribe("devices/42/cmd", qos=1)
    device.close()
    client_id = device.mqtt._client_id.decode()
    home = next(b for b in nodes if b.name == landed(nodes)[client_id])
    publisher = Client("publisher", home.port)
    publisher.publish("devices/42/cmd", b"reboot", qos=1)
    publisher.close()
    device = connect()
    got = device.wait_message(timeout=wait)
    device.close()
    return device, got
