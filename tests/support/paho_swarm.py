"""Hundreds of paho clients in one thread: each client's network loop is driven by hand
(``loop_read`` / ``loop_write`` / ``loop_misc`` over one poll), and a client the server
disconnected calls paho's ``reconnect()`` a second later, as paho's own loop would. One
thread per client (``loop_start``) would mean hundreds of threads on a 2-core machine."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

RECONNECT_DELAY = 1.0  # paho's default min_delay
TICK = 0.02


@dataclass
class Device:
    """One client and what happened to it."""

    client_id: str
    version: int  # 4 or 5
    persistent: bool  # v3.1.1: clean session 0; v5: session expiry 3600 s
    username: str | None = None
    mqtt: paho.Client = field(init=False)
    connects: int = 0
    disconnects: list[int] = field(default_factory=list)  # reason codes (v5: the server's)
    reconnect_at: float | None = None


class Swarm:
    def __init__(self, port: int, devices: Iterable[Device]) -> None:
        self.port = port
        self.devices = list(devices)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        for device in self.devices:
            device.mqtt = self._client(device)
        self._thread = threading.Thread(target=self._run, name="swarm", daemon=True)

    def _client(self, device: Device) -> paho.Client:
        if device.version == 5:
            mqtt = paho.Client(CallbackAPIVersion.VERSION2, device.client_id, protocol=paho.MQTTv5)
        else:
            mqtt = paho.Client(
                CallbackAPIVersion.VERSION2,
                device.client_id,
                clean_session=not device.persistent,
                protocol=paho.MQTTv311,
            )

        def on_connect(client, userdata, flags, reason_code, properties=None) -> None:
            if not reason_code.is_failure:
                device.connects += 1

        def on_disconnect(client, userdata, flags, reason_code, properties=None) -> None:
            device.disconnects.append(reason_code.value)
            device.reconnect_at = time.monotonic() + RECONNECT_DELAY

        if device.username is not None:
            mqtt.username_pw_set(device.username)
        mqtt.on_connect = on_connect
        mqtt.on_disconnect = on_disconnect
        return mqtt

    def _connect(self, device: Device) -> None:
        if device.version == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if device.persistent else 0
            device.mqtt.connect("127.0.0.1", self.port, 60, clean_start=True, properties=props)
        else:
            device.mqtt.connect("127.0.0.1", self.port, 60)

    def start(self, timeout: float = 60.0) -> Swarm:
        """Connect every device (a few at a time, as a fleet would), then drive them."""
        for device in self.devices:
            self._connect(device)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.all_connected():
            time.sleep(0.1)
        if not self.all_connected():
            missing = [d.client_id for d in self.devices if not d.connects][:5]
            raise TimeoutError(f"not every device connected: {missing}...")
        return self

    def all_connected(self) -> bool:
        return all(d.connects and d.mqtt.is_connected() for d in self.devices)

    def _run(self) -> None:
        last_misc = 0.0
        while not self._stop.is_set():
            poller = select.poll()
            by_fd = {}
            for device in self.devices:
                sock = device.mqtt.socket()
                if sock is None:
                    continue
                fd = sock.fileno()
                by_fd[fd] = device
                events = select.POLLIN | (select.POLLOUT if device.mqtt.want_write() else 0)
                poller.register(fd, events)
            for fd, events in poller.poll(TICK * 1000):
                device = by_fd[fd]
                if events & (select.POLLIN | select.POLLERR | select.POLLHUP):
                    device.mqtt.loop_read()
                if events & select.POLLOUT:
                    device.mqtt.loop_write()
            now = time.monotonic()
            if now - last_misc > 0.5:
                last_misc = now
                for device in self.devices:
                    device.mqtt.loop_misc()
            for device in self.devices:
                if device.reconnect_at is not None and device.reconnect_at <= now:
                    device.reconnect_at = None
                    try:
                        device.mqtt.reconnect()
                    except OSError:
                        device.reconnect_at = now + RECONNECT_DELAY

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for device in self.devices:
            try:
                device.mqtt.disconnect()
                device.mqtt.loop_write()
            except (OSError, ValueError):
                pass
            device.mqtt._reset_sockets()
