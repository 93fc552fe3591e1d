"""Many MQTT clients in one asyncio loop (a thread per paho client would not fit 2,000 or
9,000 connections in one test process): pingers that send PINGREQ every few seconds and time
the PINGRESP, QoS 1 publishers that count what was acknowledged, and a QoS 1 subscriber that
counts what arrived. Each client notes whether its connection ever ended."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from fastmqtt import packets

PINGREQ = b"\xc0\x00"
TIMEOUT = 10.0


@dataclass
class Peer:
    client_id: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    lost: str | None = None  # why the connection ended, if it did
    answered: list[tuple[float, float]] = field(default_factory=list)  # (sent at, round trip)

    async def connect(self, port: int, keepalive: int = 60) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(packets.connect(self.client_id, keepalive=keepalive))
        kind, body = await asyncio.wait_for(read_packet(self.reader), TIMEOUT)
        assert kind == 0x20 and body[1] == 0, f"{self.client_id}: CONNACK {body!r}"

    def close(self) -> None:
        if self.writer is not None:
            self.writer.write(b"\xe0\x00")  # DISCONNECT
            self.writer.close()


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


async def ping_loop(peer: Peer, every: float, stop: asyncio.Event) -> None:
    """PINGREQ every ``every`` seconds (randomly phased), until ``stop``."""
    assert peer.reader is not None and peer.writer is not None
    try:
        await asyncio.sleep(random.uniform(0, every))
        while not stop.is_set():
            sent = time.monotonic()
            peer.writer.write(PINGREQ)
            kind, _ = await asyncio.wait_for(read_packet(peer.reader), TIMEOUT)
            assert kind == 0xD0, f"{peer.client_id}: got {kind:#x} for a PINGREQ"
            peer.answered.append((sent, time.monotonic() - sent))
            with_stop = asyncio.ensure_future(stop.wait())
            await asyncio.wait([with_stop], timeout=every)
            with_stop.cancel()
    except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
        peer.lost = f"{type(exc).__name__}: {exc}"


@dataclass
class Publisher(Peer):
    acked: list[bytes] = field(default_factory=list)

    async def run(self, topic: str, every: float, stop: asyncio.Event) -> None:
        """QoS 1 PUBLISH every ``every`` seconds, each waited for (its PUBACK), until stop."""
        assert self.reader is not None and self.writer is not None
        n = 0
        try:
            while not stop.is_set():
                n += 1
                payload = f"{self.client_id}:{n}".encode()
                packet_id = n % 65535 + 1
                body = packets.utf8(topic) + struct.pack("!H", packet_id) + payload
                self.writer.write(b"\x32" + packets.varint(len(body)) + body)
                kind, ack = await asyncio.wait_for(read_packet(self.reader), TIMEOUT)
                assert kind == 0x40 and ack == struct.pack("!H", packet_id), (kind, ack)
                self.acked.append(payload)
                await asyncio.sleep(every)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
            self.lost = f"{type(exc).__name__}: {exc}"


@dataclass
class Subscriber(Peer):
    received: Counter = field(default_factory=Counter)

    async def subscribe(self, topic: str) -> None:
        assert self.reader is not None and self.writer is not None
        self.writer.write(packets.subscribe(1, topic, qos=1))
        kind, body = await asyncio.wait_for(read_packet(self.reader), TIMEOUT)
        assert kind == 0x90 and body[-1] == 1, (kind, body)

    async def run(self) -> None:
        """Take QoS 1 PUBLISHes (acknowledging each) until the connection ends."""
        assert self.reader is not None and self.writer is not None
        try:
            while True:
                kind, body = await read_packet(self.reader)
                if kind & 0xF0 != 0x30:
                    continue
                topic_len = struct.unpack_from("!H", body)[0]
                at = 2 + topic_len
                if kind & 0x06:  # QoS 1: a packet id, then the payload
                    self.writer.write(b"\x40\x02" + body[at : at + 2])
                    at += 2
                self.received[body[at:]] += 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.lost = f"{type(exc).__name__}: {exc}"


async def connect_all(peers: list[Peer], port: int, batch: int = 100) -> None:
    """Connect in batches (a burst of thousands would overflow the listen backlog)."""
    for start in range(0, len(peers), batch):
        await asyncio.gather(*(p.connect(port) for p in peers[start : start + batch]))


def longest_gap(peers: list[Peer], since: float, until: float) -> float:
    """The longest a ping sent in [since, until] waited for its answer, seconds."""
    return max(
        (rtt for p in peers for sent, rtt in p.answered if since <= sent <= until), default=0.0
    )


async def load_around(
    port: int,
    clients: int,
    publishers: int,
    during: Callable[[], None],
    ping_every: float,
    publish_every: float,
    before: float,
    after: float,
) -> tuple[list[Peer], list[Publisher], Subscriber, float, float]:
    """Pingers, QoS 1 publishers and a subscriber through ``port``, running ``before``
    seconds, then ``during()`` (blocking, run in a thread: a takeover, say), then ``after``
    seconds; the subscriber then gets up to 10 s for the last acknowledged messages. Returns
    the peers (closed) and when ``during`` started and ended."""
    stop = asyncio.Event()
    pingers = [Peer(f"ping-{i}") for i in range(clients)]
    pubs = [Publisher(f"pub-{i}") for i in range(publishers)]
    sub = Subscriber("sub-0")
    await connect_all([sub, *pubs, *pingers], port)
    await sub.subscribe("load/#")
    reading = asyncio.ensure_future(sub.run())
    tasks = [asyncio.ensure_future(ping_loop(p, ping_every, stop)) for p in pingers]
    tasks += [asyncio.ensure_future(p.run("load/t", publish_every, stop)) for p in pubs]
    await asyncio.sleep(before)
    started = time.monotonic()
    await asyncio.to_thread(during)
    ended = time.monotonic()
    await asyncio.sleep(after)
    stop.set()
    await asyncio.gather(*tasks)
    for _ in range(50):  # bounded: 10 s
        if sum(sub.received.values()) >= sum(len(p.acked) for p in pubs):
            break
        await asyncio.sleep(0.2)
    for peer in [*pingers, *pubs]:
        peer.close()
    reading.cancel()
    sub.close()
    await asyncio.gather(reading, return_exceptions=True)
    return pingers, pubs, sub, started, ended
