"""Where is device X: `fastmqtt ctl client / kick / unstick` and /api/clients against a real
`fastmqtt serve`, real Mosquitto brokers and real clients, on both connection-setup paths and
with two workers."""

from __future__ import annotations

import json
import socket
import time

import pytest

from fastmqtt import packets
from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.tools.brokers import free_port, wait_for_port
from tests.e2e.test_admin import PASSWORD, ctl
from tests.support.lb import Client, closed_by_peer, landed, lb_port, raw_connect, wait_until
from tests.support.stats import Stats, checked_recipe

pytestmark = pytest.mark.e2e

CHECK = 'type = "tcp", interval = "200ms", timeout = "2s"'
STICK = 'stick = { on = "client_id" }\n'
KICKED = packets.ADMINISTRATIVE_ACTION


def _qos1_publish(topic: str, payload: bytes, packet_id: int = 1) -> bytes:
    body = packets.utf8(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + packets.varint(len(body)) + body


HALF_SENT = _qos1_publish("kick/t", b"m" * 5000)  # a "half-sender" sends 2,000 bytes first


def kick_the_half_sender(stats_port: int, device: socket.socket, subscriber: Client) -> None:
    """``device`` ("half-sender", 3.1.1) has sent the first 2,000 bytes of HALF_SENT: a kick
    closes it only after the rest went through, and the subscriber gets the whole message."""
    kicked = _ctl_json(stats_port, "kick", "half-sender")
    assert kicked["asked"] == 1 and kicked["at_boundary"]
    assert not closed_by_peer(device, timeout=0.5)  # still open: the PUBLISH is half sent
    device.sendall(HALF_SENT[2000:])
    assert closed_by_peer(device, timeout=5)
    assert subscriber.wait_message(5)
    assert subscriber.messages == [("kick/t", b"m" * 5000)]


def _start(brokers, fastmqtt, count: int = 2, extra_global: str = ""):
    nodes = brokers(count)
    port, stats_port = lb_port(), free_port()
    config = checked_recipe(nodes, port, stats_port, CHECK, user="ops", backend=STICK)
    if extra_global:
        config = config.replace("[global]\n", f"[global]\n{extra_global}", 1)
    lb = fastmqtt(config, port=port, env={"STATS_PW": PASSWORD})
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    return nodes, port, stats_port, lb


def _ctl_json(stats_port: int, *args: str) -> dict:
    done = ctl(stats_port, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _relay_path(path: str) -> str:
    """Where an established connection of a frontend on ``path`` is relayed."""
    if path == "fast":
        return "fast"
    return "loop" if NO_EXTENSIONS else "engine"


def test_client_shows_connections_and_stick_entry_then_kick_and_unstick(
    path, brokers, fastmqtt
) -> None:
    nodes, port, stats_port, lb = _start(brokers, fastmqtt)
    five = Client("dev-5", port, version=5)
    four = Client("dev-4", port, clean=False)
    where = landed(nodes)

    shown = _ctl_json(stats_port, "client", "dev-5")
    [conn] = shown["connections"]
    assert (conn["client_id"], conn["protocol_version"], conn["frontend"]) == ("dev-5", 5, "mqtt")
    assert (conn["backend"], conn["server"]) == ("cluster", where["dev-5"])
    assert conn["path"] == _relay_path(path) and conn["tracked"] and conn["worker"] is None
    assert conn["clean_start"] is True and conn["bytes_in"] > 0 and conn["bytes_out"] >= 4
    assert conn["source"].startswith("127.0.0.1:") and abs(conn["since"] - time.time()) < 60
    assert shown["stick"] == [
        {"backend": "cluster", "server": where["dev-5"], "live": 1, "expires_in": None}
    ]
    [old] = _ctl_json(stats_port, "client", "dev-4")["connections"]
    assert (old["protocol_version"], old["clean_start"]) == (4, False)
    listed = _ctl_json(stats_port, "client", "dev-", "--prefix", "--limit", "10")
    assert sorted(c["client_id"] for c in listed["connections"]) == ["dev-4", "dev-5"]
    assert (
        len(_ctl_json(stats_port, "client", "dev-", "--prefix", "--limit", "1")["connections"]) == 1
    )

    unknown = ctl(stats_port, "client", "nobody")
    assert unknown.returncode == 1 and "404" in unknown.stderr and "nobody" in unknown.stderr
    assert ctl(stats_port, "kick", "nobody").returncode == 1

    kicked = _ctl_json(stats_port, "kick", "dev-5")
    assert kicked == {"client_id": "dev-5", "asked": 1, "at_boundary": True}
    assert five.disconnected.wait(5), "the v5 client was not disconnected"
    assert five.disconnect_reason.value == KICKED  # DISCONNECT 0x98 "Administrative action"
    assert wait_until(lambda: " kicked" in lb.logs() and "dev-5" in lb.logs())
    five.close()

    four.close()
    assert wait_until(lambda: _ctl_json(stats_port, "client", "dev-4")["connections"] == [])
    entry = _ctl_json(stats_port, "client", "dev-4")["stick"]
    assert entry[0]["server"] == where["dev-4"] and entry[0]["expires_in"] is not None
    removed = _ctl_json(stats_port, "unstick", "dev-4")
    assert removed["removed"][0]["server"] == where["dev-4"]
    gone = ctl(stats_port, "client", "dev-4")
    assert gone.returncode == 1 and "no connection and no stick-table entry" in gone.stderr
    again = ctl(stats_port, "unstick", "dev-4")
    assert again.returncode == 1 and "no stick-table entry" in again.stderr


def test_kick_lets_an_mqtt311_clients_publish_finish(path, brokers, fastmqtt) -> None:
    """A 3.1.1 client has sent half of a QoS 1 PUBLISH when it is kicked: it is closed only
    after the rest went through, and the subscriber gets the whole message."""
    nodes, port, stats_port, lb = _start(brokers, fastmqtt, count=1)
    subscriber = Client("watcher", nodes[0].port)
    subscriber.subscribe("kick/t", qos=1)
    device = raw_connect(port, "half-sender")
    device.sendall(HALF_SENT[:2000])
    kick_the_half_sender(stats_port, device, subscriber)
    assert wait_until(lambda: "half-sender" in lb.logs() and " kicked" in lb.logs())
    subscriber.close()
    device.close()


def test_without_packet_tracking_a_kick_closes_at_once_and_says_so(brokers, fastmqtt) -> None:
    _nodes, port, stats_port, _lb = _start(
        brokers, fastmqtt, count=1, extra_global="track_packets = false\n"
    )
    device = raw_connect(port, "untracked")
    [conn] = _ctl_json(stats_port, "client", "untracked")["connections"]
    assert not conn["tracked"]
    device.sendall(_qos1_publish("t", b"x" * 100)[:20])
    assert _ctl_json(stats_port, "kick", "untracked")["at_boundary"] is False
    assert closed_by_peer(device, timeout=5)
    device.close()


def test_two_workers_answer_together(brokers, fastmqtt) -> None:
    _nodes, port, stats_port, lb = _start(brokers, fastmqtt, extra_global="workers = 2\n")
    assert wait_until(lambda: "2 workers serving" in lb.logs())
    held = {f"w-{i}": raw_connect(port, f"w-{i}") for i in range(20)}
    listed = _ctl_json(stats_port, "client", "w-", "--prefix", "--limit", "100")["connections"]
    assert sorted(c["client_id"] for c in listed) == sorted(held)
    assert {c["worker"] for c in listed} == {0, 1}  # SO_REUSEPORT spread them over both
    stats = Stats(stats_port, "ops", PASSWORD)
    status, body = stats.request("/api/clients?prefix=w-&limit=5")
    assert status == 200 and len(json.loads(body)["connections"]) == 5
    for cid in ("w-1", "w-2"):
        [conn] = _ctl_json(stats_port, "client", cid)["connections"]
        assert _ctl_json(stats_port, "kick", cid)["asked"] == 1, conn
        with held.pop(cid) as sock:
            assert closed_by_peer(sock, timeout=5)
    assert _ctl_json(stats_port, "client", "w-1")["stick"][0]["live"] == 0
    assert _ctl_json(stats_port, "unstick", "w-1")["removed"]
    assert ctl(stats_port, "client", "w-1").returncode == 1
    for sock in held.values():
        sock.close()


def test_client_ids_are_never_metric_labels(brokers, fastmqtt) -> None:
    _nodes, port, stats_port, _lb = _start(brokers, fastmqtt, count=1)
    device = raw_connect(port, "secret-device-id")
    assert "secret-device-id" in _ctl_json(stats_port, "client", "secret-device-id")["client_id"]
    assert "secret-device-id" not in Stats(stats_port, "ops", PASSWORD).get("/metrics")
    device.close()


def test_ctl_says_where_the_admin_api_is_configured() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused = probe.getsockname()[1]
    done = ctl(unused, "client", "dev")
    assert done.returncode == 1 and "[stats] bind" in done.stderr
