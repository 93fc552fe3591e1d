"""MQTT over WebSocket end to end: paho (transport="websockets"), the `websockets` library and
raw HTTP through fastmqtt to plain Mosquitto TCP listeners (bridge) or a WebSocket-speaking
backend (passthrough: a second fastmqtt in bridge mode)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import pytest
import websockets
from websockets.frames import CloseCode

from fastmqtt import packets
from fastmqtt import ws_spec as spec
from fastmqtt.parse import inspect_connack, inspect_connect
from fastmqtt.websocket import FrameDecoder, encode_frame, head_end
from tests.support.certs import Certs, make_certs, tls_line
from tests.support.lb import Client, landed, lb_port, wait_until, ws_client, ws_recipe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def round_trip(client: Client, topic: str) -> None:
    client.subscribe(topic, qos=1)
    client.publish(topic, b"payload for " + topic.encode(), qos=1)
    assert client.wait_message()
    assert client.messages == [(topic, b"payload for " + topic.encode())]


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_paho_websocket_bridge_to_plain_mosquitto(brokers, fastmqtt, certs, tls):
    nodes = brokers(2)
    port = lb_port()
    frontend = tls_line(cert=certs.server) if tls else ""
    lb = fastmqtt(ws_recipe(nodes, port, frontend=frontend), port=port)
    client = ws_client("ws-device-1", port, certs.client_context() if tls else None)
    round_trip(client, "t/ws")
    client.close()
    assert "ws-device-1" in landed(nodes)  # the CONNECT inside the frames was read
    assert wait_until(lambda: any('cid="ws-device-1"' in line for line in lb.connection_log()))


def test_passthrough_to_a_websocket_backend(brokers, fastmqtt):
    """fastmqtt (passthrough, reads the CONNECT) -> fastmqtt (bridge) -> Mosquitto."""
    nodes = brokers(1)
    inner_port, outer_port = lb_port(), lb_port()
    inner = fastmqtt(ws_recipe(nodes, inner_port), port=inner_port)
    outer_conf = ws_recipe([], outer_port, backend='ws_backend = "passthrough"\n')
    outer_conf += f'[[backend.cluster.server]]\nname = "ws1"\naddress = "127.0.0.1:{inner_port}"\n'
    outer = fastmqtt(outer_conf, port=outer_port)
    client = ws_client("pass-device", outer_port)
    round_trip(client, "t/pass")
    client.close()
    assert "pass-device" in landed(nodes)
    for lb in (outer, inner):  # both read the client id from the frames
        assert wait_until(lambda lb=lb: any('cid="pass-device"' in x for x in lb.connection_log()))


def _received_close_code(ws: websockets.ClientConnection) -> int | None:
    """The code in the close frame fastmqtt sent (None: no close frame came)."""
    frame = ws.protocol.close_rcvd
    return None if frame is None else frame.code


class RecordingWsBroker:
    """A WebSocket broker stand-in for one client: records the upgrade request it gets,
    answers 101, and a CONNACK frame to the CONNECT frame."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.request = b""
        self.client_id = ""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError), self.sock.accept()[0] as conn:
            conn.settimeout(10)
            data = b""
            while head_end(data) < 0:
                data += conn.recv(4096)
            self.request, data = data[: head_end(data)], data[head_end(data) :]
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            decoder = FrameDecoder(masked=True)
            mqtt = decoder.feed(data)[0]
            while (connect := inspect_connect(mqtt)) is None:
                mqtt += decoder.feed(conn.recv(4096))[0]
            self.client_id = connect.client_id
            conn.sendall(encode_frame(spec.OP_BINARY, b"\x20\x02\x00\x00"))
            while conn.recv(4096):
                pass


def test_passthrough_tells_the_broker_the_client_address(fastmqtt):
    broker = RecordingWsBroker()
    port = lb_port()
    config = ws_recipe([], port, backend='ws_backend = "passthrough"\n')
    fastmqtt(
        config + f'[[backend.cluster.server]]\nname = "ws"\naddress = "127.0.0.1:{broker.port}"\n',
        port=port,
    )
    request = "GET /mqtt HTTP/1.1\r\n" + UPGRADE + "Sec-WebSocket-Version: 13\r\n\r\n"
    with socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=("127.0.0.4", 0)
    ) as s:
        s.sendall(request.encode())
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101 ")  # fastmqtt's own answer
        s.sendall(encode_frame(spec.OP_BINARY, packets.connect("xff-device"), b"\x01\x02\x03\x04"))
        assert s.recv(64) == encode_frame(spec.OP_BINARY, b"\x20\x02\x00\x00")
    assert broker.client_id == "xff-device"
    assert b"\r\nX-Forwarded-For: 127.0.0.4\r\n" in broker.request
    broker.sock.close()


async def _fragments_pings_and_close(port: int) -> tuple[bytes, bytes, int | None]:
    uri = f"ws://127.0.0.1:{port}/mqtt"
    async with websockets.connect(uri, subprotocols=["mqtt"]) as ws:
        assert ws.subprotocol == "mqtt"
        connect = packets.connect("frag-device")
        await ws.send([connect[:3], connect[3:10], connect[10:]])  # one message, 3 frames
        connack = await asyncio.wait_for(ws.recv(), 5)
        await asyncio.wait_for(await ws.ping(b"are you there"), 5)
        # two MQTT packets in one frame, then one packet split over two frames
        await ws.send(packets.subscribe(1, "t/frag") + packets.publish("t/other", b"x"))
        suback = await asyncio.wait_for(ws.recv(), 5)
        publish = packets.publish("t/frag", b"split across frames")
        await ws.send([publish[:5], publish[5:]])
        echoed = await asyncio.wait_for(ws.recv(), 5)
        assert suback[0] == 0x90
        await ws.close(code=4000, reason="device going to sleep")
        return connack, echoed, _received_close_code(ws)


def test_websockets_library_fragments_pings_and_close_code(brokers, fastmqtt):
    nodes = brokers(1)
    port = lb_port()
    lb = fastmqtt(ws_recipe(nodes, port), port=port)
    connack, echoed, close_code = asyncio.run(_fragments_pings_and_close(port))
    assert inspect_connack(connack) is not None
    assert echoed == packets.publish("t/frag", b"split across frames")
    assert close_code == 4000  # our close frame echoes the client's code
    assert wait_until(lambda: any(line.endswith(" client-closed") for line in lb.connection_log()))


async def _text_frame(port: int) -> int | None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/mqtt", subprotocols=["mqtt"]) as ws:
        await ws.send("MQTT wants binary frames")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return _received_close_code(ws)


def test_text_frame_is_refused_with_1003(brokers, fastmqtt):
    nodes = brokers(1)
    port = lb_port()
    lb = fastmqtt(ws_recipe(nodes, port), port=port)
    assert asyncio.run(_text_frame(port)) == CloseCode.UNSUPPORTED_DATA
    assert wait_until(lambda: any(line.endswith(" ws-text-frame") for line in lb.connection_log()))
    assert nodes[0].connected_client_ids() == []


def http(port: int, request: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request.encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode("latin-1")


UPGRADE = (
    "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


BAD_UPGRADES = [  # (request, status, counted reason)
    ("GET /wrong HTTP/1.1\r\n" + UPGRADE + "Sec-WebSocket-Version: 13\r\n\r\n", 404, "ws-bad-path"),
    ("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", 426, "ws-not-upgrade"),
    ("POST /mqtt HTTP/1.1\r\n" + UPGRADE + "\r\n", 405, "ws-bad-method"),
    (
        "GET /mqtt HTTP/1.1\r\n" + UPGRADE + "Sec-WebSocket-Version: 8\r\n\r\n",
        426,
        "ws-bad-version",
    ),
    (
        "GET /mqtt HTTP/1.1\r\n" + UPGRADE + "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: stomp\r\n\r\n",
        400,
        "ws-bad-subprotocol",
    ),
    (
        "GET /mqtt HTTP/1.0\r\n" + UPGRADE + "Sec-WebSocket-Version: 13\r\n\r\n",
        505,
        "ws-bad-http-version",
    ),
]


def test_http_errors_for_what_is_not_an_mqtt_upgrade(brokers, fastmqtt):
    nodes = brokers(1)
    port = lb_port()
    lb = fastmqtt(ws_recipe(nodes, port), port=port)
    before = nodes[0].tcp_connection_count()
    for request, status, reason in BAD_UPGRADES:
        answer = http(port, request)
        assert answer.startswith(f"HTTP/1.1 {status} "), (reason, answer)
        if status == 426:
            assert "Sec-WebSocket-Version: 13" in answer
        assert wait_until(lambda r=reason: any(x.endswith(f" {r}") for x in lb.connection_log()))
    assert nodes[0].tcp_connection_count() == before
