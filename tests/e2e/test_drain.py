"""SIGTERM with drain_disconnect: MQTT 5 clients hear DISCONNECT 0x8B between two packets,
spread at drain_rate; MQTT 3.1.1 clients keep running until the grace period ends."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.support.lb import Client, lb_port, recipe, wait_until

pytestmark = pytest.mark.e2e


def test_sigterm_says_goodbye_to_v5_clients_at_a_packet_boundary(brokers, fastmqtt, path):
    [node] = brokers(1)
    port = lb_port()
    config = recipe([node], port).replace(
        'grace = "2s"', 'grace = "10s"\ndrain_disconnect = true\ndrain_rate = 10'
    )
    lb = fastmqtt(config, port=port)
    v5 = [Client(f"v5-{i}", port, version=5) for i in range(6)]
    for c in v5:
        c.subscribe("drain/big")
    v3 = Client("v311", port, version=4)

    # the broker streams large messages back to back, so a goodbye nearly always comes while a
    # packet is half sent: a DISCONNECT written there corrupts it (with a pause between
    # messages, a relay that wrote it at once would mostly go unnoticed)
    stop = threading.Event()
    publisher = Client("publisher", node.port)

    def publish() -> None:
        while not stop.is_set():
            publisher.publish("drain/big", b"x" * 200_000)
            time.sleep(0)  # only yield the GIL

    feeder = threading.Thread(target=publish, daemon=True)
    feeder.start()
    assert wait_until(lambda: all(c.messages for c in v5))
    signalled = time.monotonic()
    lb.signal(signal.SIGTERM)
    try:
        assert wait_until(lambda: all(c.disconnected.is_set() for c in v5), timeout=8)
    finally:
        stop.set()
        feeder.join(5)
    assert [c.disconnect_reason for c in v5] == [0x8B] * 6  # "Server shutting down"
    assert all(len(payload) == 200_000 for c in v5 for _topic, payload in c.messages)
    spread = max(c.disconnected_at for c in v5) - min(c.disconnected_at for c in v5)
    assert spread >= 0.3  # 6 clients at 10 per second, not all at once
    assert not v3.disconnected.is_set()  # no goodbye for 3.1.1: it stays until grace ends
    v3.close()
    publisher.close()
    for c in v5:
        c.mqtt.loop_stop()
    assert lb.proc.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 10


def test_drain_rate_is_for_the_whole_process_with_two_workers(brokers, fastmqtt):
    """drain_rate = 5 with workers = 2: the 0x8B DISCONNECTs arrive at 5 a second in all, not
    5 per worker (each worker takes its share of the rate)."""
    [node] = brokers(1)
    port = lb_port()
    config = recipe([node], port).replace(
        'grace = "2s"', 'grace = "20s"\nworkers = 2\ndrain_disconnect = true\ndrain_rate = 5'
    )
    lb = fastmqtt(config, port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())  # both bound, signals handled
    clients = [Client(f"v5-{i}", port, version=5) for i in range(24)]  # spread by the kernel
    lb.signal(signal.SIGTERM)
    try:
        assert wait_until(lambda: all(c.disconnected.is_set() for c in clients), timeout=15)
    finally:
        for c in clients:
            c.mqtt.loop_stop()
    assert [c.disconnect_reason for c in clients] == [0x8B] * 24
    times = sorted(c.disconnected_at for c in clients)
    busiest = max(sum(t <= s < t + 2.0 for s in times) for t in times)
    rate = (len(times) - 1) / (times[-1] - times[0])
    print(
        f"\n24 goodbyes over {times[-1] - times[0]:.1f} s ({rate:.1f}/s), at most {busiest} in 2 s"
    )
    assert busiest <= 10 + 2  # 5/s over 2 s, plus a tick of scheduling jitter per worker
    assert rate <= 5 * 1.2
    assert lb.proc.wait(timeout=20) == 0
