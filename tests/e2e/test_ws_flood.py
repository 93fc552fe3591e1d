"""What a WebSocket client can make fastmqtt hold: a client that sends pings and reads nothing
gets pongs only while its own buffer has room (then it is not read), pings do not keep it alive
past its idle timeout, and a passthrough client cannot send more than max_connect_size plus a
frame-header allowance before its CONNECT. Each flood offers tens of MB; the balancer's RSS
must not grow by more than a few MiB, and the flooding connection ends with a counted reason."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fastmqtt import packets
from fastmqtt import ws_spec as spec
from fastmqtt.websocket import encode_frame
from tests.support.certs import Certs, make_certs, tls_line
from tests.support.hostile import rss_kib
from tests.support.lb import FastMQTT, lb_port, recipe, wait_until
from tests.support.wire import Wire

pytestmark = pytest.mark.e2e

FLOOD = 50 << 20  # bytes of pings offered
# a fixed allowance for the allocator's arenas while 50 MB pass through (the plain-Python
# frame reader peaked at 4.1 MiB under load); unbounded, the old relay grew by 46 to 93 MiB
GROWTH_LIMIT_KIB = 8 * 1024
PINGS = encode_frame(spec.OP_PING, b"p" * 125, os.urandom(4)) * 500  # 64 KiB of pings


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class Flood:
    """Sends FLOOD bytes of pings on ``wire`` from a thread, as fast as the balancer takes
    them, then one ping every 100 ms (never reading), until the balancer closes the connection
    or ``seconds`` pass; the balancer's RSS is sampled meanwhile."""

    def __init__(self, wire: Wire, lb: FastMQTT, seconds: float) -> None:
        self.wire, self.lb, self.seconds = wire, lb, seconds
        self.sent = 0
        self.ended = ""  # "closed" (by the balancer) or "time"
        self.rss_before = rss_kib(self._pid())
        self.rss_peak = self.rss_before

    def _pid(self) -> int:
        assert self.lb.proc is not None
        return self.lb.proc.pid

    def run(self) -> Flood:
        thread = threading.Thread(target=self._send, daemon=True)
        thread.start()
        deadline = time.monotonic() + self.seconds + 5
        while thread.is_alive() and time.monotonic() < deadline:
            self.rss_peak = max(self.rss_peak, rss_kib(self._pid()))
            time.sleep(0.05)
        thread.join(5)
        self.rss_peak = max(self.rss_peak, rss_kib(self._pid()))
        return self

    def _send(self) -> None:
        sock = self.wire.sock
        sock.settimeout(0.5)
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline:
                if self.sent < FLOOD:
                    try:
                        sock.sendall(PINGS)
                        self.sent += len(PINGS)
                    except TimeoutError:  # not read: throttled
                        continue
                else:
                    sock.sendall(PINGS[:131])
                    time.sleep(0.1)
            self.ended = "time"
        except OSError:
            self.ended = "closed"

    @property
    def growth_kib(self) -> int:
        return self.rss_peak - self.rss_before


def _ended_with(lb: FastMQTT, client_id: str | None, reason: str, timeout: float) -> bool:
    def found() -> bool:
        return any(
            line.endswith(f" {reason}") and (client_id is None or f'cid="{client_id}"' in line)
            for line in lb.connection_log()
        )

    return wait_until(found, timeout)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_ping_flood_after_connack_is_throttled_and_timed_out(brokers, fastmqtt, certs, tls):
    """Pongs go into the client's own write buffer; past its high-water mark the client is not
    read any more, and pings alone do not refresh its idle timer: it is closed as
    client-timeout."""
    [node] = brokers(1)
    port = lb_port()
    frontend = tls_line(cert=certs.server) if tls else ""
    config = recipe([node], port, frontend=frontend, defaults='timeout_client = "4s"\n')
    lb = fastmqtt(config.replace('protocol = "mqtt"', 'protocol = "ws"', 1), port=port)
    wire = Wire(port, tls=certs.client_context() if tls else None, ws=True)
    wire.send(packets.connect("pinger"))
    assert [p[0] for p in wire.packets(1)] == [0x20]
    time.sleep(0.3)  # the relay has the pair
    flood = Flood(wire, lb, seconds=8).run()
    print(f"flood after CONNACK: {flood.sent >> 20} MiB sent, ended {flood.ended}, "
          f"RSS +{flood.growth_kib} KiB")  # fmt: skip
    assert flood.growth_kib < GROWTH_LIMIT_KIB
    assert flood.ended == "closed"  # while it was still pinging
    assert _ended_with(lb, "pinger", "client-timeout", timeout=2)
    wire.close()


def test_ping_flood_before_connect_over_tls_is_throttled(brokers, fastmqtt, certs):
    """Before its CONNECT, a client's pings are answered only while the pongs drain: past the
    transport's high-water mark the answer waits, nothing more is read, and inspect_delay ends
    it (inspect-timeout, counted)."""
    [node] = brokers(1)
    port = lb_port()
    config = recipe([node], port, frontend=tls_line(cert=certs.server), inspect_delay="4s")
    lb = fastmqtt(config.replace('protocol = "mqtt"', 'protocol = "ws"', 1), port=port)
    wire = Wire(port, tls=certs.client_context(), ws=True)
    flood = Flood(wire, lb, seconds=8).run()
    print(f"flood before CONNECT: {flood.sent >> 20} MiB sent, ended {flood.ended}, "
          f"RSS +{flood.growth_kib} KiB")  # fmt: skip
    assert flood.growth_kib < GROWTH_LIMIT_KIB
    assert flood.ended == "closed"
    assert _ended_with(lb, None, "inspect-timeout", timeout=2)
    assert node.connected_client_ids() == []
    wire.close()


def test_passthrough_holds_little_before_the_connect(brokers, fastmqtt):
    """Passthrough keeps the raw frames to forward them, pings included (they carry no MQTT
    byte, so max_connect_size alone never trips): past max_connect_size plus a frame-header
    allowance the connection is closed as ws-connect-too-large."""
    [node] = brokers(1)
    port = lb_port()
    config = recipe(
        [node], port, backend='ws_backend = "passthrough"\n', frontend="max_connect_size = 1024\n"
    )
    lb = fastmqtt(config.replace('protocol = "mqtt"', 'protocol = "ws"', 1), port=port)
    wire = Wire(port, ws=True)
    flood = Flood(wire, lb, seconds=8).run()
    print(f"passthrough flood: {flood.sent >> 20} MiB sent, ended {flood.ended}, "
          f"RSS +{flood.growth_kib} KiB")  # fmt: skip
    assert flood.growth_kib < GROWTH_LIMIT_KIB
    assert flood.ended == "closed"
    assert _ended_with(lb, None, "ws-connect-too-large", timeout=5)
    wire.close()


def test_passthrough_connect_in_many_small_frames_still_passes(brokers, fastmqtt):
    """The allowance is for frame headers: a CONNECT cut into small frames, with a ping in
    front, is read and relayed."""
    [node] = brokers(1)
    inner, port = lb_port(), lb_port()
    fastmqtt(recipe([node], inner).replace('protocol = "mqtt"', 'protocol = "ws"'), port=inner)
    config = recipe([], port, backend='ws_backend = "passthrough"\n')
    config = config.replace('protocol = "mqtt"', 'protocol = "ws"', 1)
    config += f'[[backend.cluster.server]]\nname = "ws"\naddress = "127.0.0.1:{inner}"\n'
    fastmqtt(config, port=port)
    wire = Wire(port, ws=True)
    connect = packets.connect("small-frames")
    frames = [encode_frame(spec.OP_PING, b"hello", os.urandom(4))]
    for i in range(0, len(connect), 3):
        opcode = spec.OP_BINARY if i == 0 else spec.OP_CONTINUATION
        last = i + 3 >= len(connect)
        frame = bytearray(encode_frame(opcode, connect[i : i + 3], os.urandom(4)))
        if not last:
            frame[0] &= 0x7F  # not the final fragment
        frames.append(bytes(frame))
    wire.send_raw(b"".join(frames))
    assert [p[0] for p in wire.packets(1)] == [0x20]
    assert "small-frames" in node.connected_client_ids()
    wire.close()
