"""Hostile inputs and the probes that measure what they leave behind in a running fastmqtt."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

from fastmqtt import packets
from fastmqtt.packets import utf8, varint
from fastmqtt.proxy_protocol import encode_v2


def _packet(body: bytes) -> bytes:
    return b"\x10" + varint(len(body)) + body


def raw_connect_packet(
    flags: int, payload: bytes, level: int = 4, name: bytes = b"MQTT", props: bytes | None = None
) -> bytes:
    """A CONNECT built field by field, so any one field can be wrong."""
    if props is None:
        props = b"\x00" if level == 5 else b""
    head = len(name).to_bytes(2, "big") + name + bytes([level, flags]) + b"\x00\x3c"
    return _packet(head + props + payload)


def tls_client_hello() -> bytes:
    """The first flight of a real TLS client (what a TLS client sends to a plain port)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="broker")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        tls.do_handshake()
    return outgoing.read()


@dataclass(frozen=True)
class Case:
    """One hostile client: what it sends, the end reason fastmqtt must log, and the CONNACK a
    ``reject_with_connack`` frontend answers with (None: closed without one)."""

    name: str
    data: bytes
    reason: str
    connack: bytes | None = None
    hold: bool = False  # keep the socket open after sending (else half-close it)


def catalogue() -> list[Case]:
    v4_ok = packets.connect("ok", version=4)
    return [
        Case("zero-byte", b"", "client-closed-early"),
        Case("5-byte-remaining-length", b"\x10\xff\xff\xff\xff\x7f", "bad-remaining-length"),
        Case(
            "remaining-length-past-data",
            v4_ok[:1] + b"\x30" + v4_ok[2:],
            "inspect-timeout",
            None,
            True,
        ),
        Case(
            "wrong-protocol-name",
            raw_connect_packet(2, utf8("c"), name=b"MQTX"),
            "bad-protocol-name",
        ),
        Case(
            "unknown-protocol-level",
            raw_connect_packet(2, utf8("c"), level=2),
            "bad-protocol-version",
            packets.connack(1, 4),
        ),
        Case(
            "reserved-flag",
            raw_connect_packet(3, utf8("c"), level=5),
            "reserved-flag",
            packets.connack(0x81, 5),
        ),
        Case(
            "will-qos-3",
            raw_connect_packet(0x1E, utf8("c") + utf8("t") + utf8("m")),
            "bad-will-qos",
        ),
        Case(
            "password-without-username",
            raw_connect_packet(0x42, utf8("c") + utf8("p")),
            "password-without-username",
        ),
        Case(
            "properties-length-overrun",
            raw_connect_packet(2, utf8("c"), level=5, props=b"\x7f"),
            "length-mismatch",
            packets.connack(0x81, 5),
        ),
        Case(
            "invalid-utf8-client-id",
            raw_connect_packet(2, b"\x00\x02\xc3\x28"),
            "bad-utf8",
            packets.connack(2, 4),
        ),
        Case(
            "nul-in-client-id",
            raw_connect_packet(2, utf8("a\x00b"), level=5),
            "bad-utf8",
            packets.connack(0x85, 5),
        ),
        Case(
            "too-large",
            packets.connect("x" * 65_000, 5, username="u" * 65_000, password=b"p" * 65_000),
            "packet-too-large",
            packets.connack(0x95, 5),
        ),
        Case("http-request", b"GET /mqtt HTTP/1.1\r\nHost: broker\r\n\r\n", "http-request"),
        Case("tls-client-hello", tls_client_hello(), "tls-handshake"),
        Case(
            "proxy-v1-untrusted",
            b"PROXY TCP4 10.9.8.7 10.0.0.1 4242 1883\r\n" + v4_ok,
            "not-connect",
        ),
        Case(
            "proxy-v2-untrusted",
            encode_v2(("10.9.8.7", 4242), ("10.0.0.1", 1883)) + v4_ok,
            "not-connect",
        ),
    ]


def send_and_read(port: int, case: Case, timeout: float = 10.0, host: str = "127.0.0.1") -> bytes:
    """Play ``case`` against fastmqtt; everything it answered before closing."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(case.data)
            if not case.hold:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused before it sent everything: what came back still counts
            pass
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    """Bytes until EOF or reset; TimeoutError if the peer keeps the connection open."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


PIPE_POOL_FDS = 2 * 64  # the relay engine keeps up to 64 empty pipes for reuse (pipe_pool)
# libuv opens /dev/null once per event loop, with the first stream it wraps (the event-loop
# relay's first pair), and keeps it as its reserve for accepting past EMFILE: one, never more.
LOOP_RESERVE_FDS = 1


def fd_kinds(pid: int) -> Counter[str]:
    """Open files of ``pid`` by kind: "socket", "pipe", "reserve" (/dev/null past stdio) or
    "other"."""
    kinds: Counter[str] = Counter()
    for target in fd_targets(pid):
        fd, path = target.split("->", 1)
        kind = path.split(":", 1)[0]
        if path == "/dev/null" and int(fd) > 2:
            kind = "reserve"
        kinds[kind if kind in ("socket", "pipe", "reserve") else "other"] += 1
    return kinds


def fds_back_to(pid: int, baseline: Counter[str], timeout: float = 5.0) -> bool:
    """Within ``timeout``: no socket or other file beyond ``baseline``, pipes only within the
    relay engine's bounded pool (an empty pipe is kept, not leaked), and at most the event
    loop's one reserve."""

    def settled() -> bool:
        now = fd_kinds(pid)
        pipes_ok = now["pipe"] <= baseline["pipe"] + PIPE_POOL_FDS
        reserve_ok = now["reserve"] <= max(baseline["reserve"], LOOP_RESERVE_FDS)
        return pipes_ok and reserve_ok and all(now[k] <= baseline[k] for k in ("socket", "other"))

    deadline = time.monotonic() + timeout
    while not settled():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def fd_targets(pid: int) -> list[str]:
    """What each open file of ``pid`` is (for failure messages)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return targets


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- hostile clients and misbehaving backends, for the exhaustion tests ------------------------


class Slowloris:
    """``count`` connections from ``source`` that each send a (huge) CONNECT one byte per
    ``interval`` and reconnect as soon as fastmqtt drops them, until ``stop``."""

    PAYLOAD = packets.connect("s" * 60_000)  # would take 16 hours at one byte a second

    def __init__(self, port: int, count: int, source: str = "127.0.0.2", interval: float = 1.0):
        self.port, self.count, self.source, self.interval = port, count, source, interval
        self.dropped = 0  # connections fastmqtt closed
        self._selector = selectors.DefaultSelector()
        self._sent: dict[socket.socket, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def start(self) -> Slowloris:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in list(self._sent):
            self._close(sock)
        self._selector.close()

    def _open(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((self.source, 0))
        sock.connect_ex(("127.0.0.1", self.port))  # in progress: the backlog may be full
        self._sent[sock] = 0
        self._selector.register(sock, selectors.EVENT_READ)

    def _close(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._sent[sock]
        sock.close()

    def _dropped(self, sock: socket.socket) -> None:
        self.dropped += 1
        self._close(sock)
        self._open()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick += self.interval
            for key, _ in self._selector.select(max(0.0, next_tick - time.monotonic())):
                self._readable(key.fileobj)  # type: ignore[arg-type]

    def _tick(self) -> None:
        for sock, sent in list(self._sent.items()):
            try:
                self._sent[sock] += sock.send(self.PAYLOAD[sent : sent + 1])
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:  # still connecting: try next second
                    self._dropped(sock)

    def _readable(self, sock: socket.socket) -> None:
        try:
            if sock.recv(64):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._dropped(sock)


class MisbehavingBroker:
    """A TCP server in a thread that accepts like a broker but then: ``silent`` never
    answers, ``garbage`` answers HTTP, ``reset`` answers a CONNACK and resets on the next
    packet, ``stall`` answers a CONNACK and never reads again."""

    GARBAGE = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"misbehaving-{mode}"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed: stop
            while True:
                conn, _ = self.listener.accept()
                self.accepted.append(conn)
                threading.Thread(target=self._misbehave, args=(conn,), daemon=True).start()

    def _misbehave(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if self.mode == "silent" or not conn.recv(65536):
                return
            if self.mode == "garbage":
                conn.sendall(self.GARBAGE)
                return
            conn.sendall(packets.connack(0, 4))
            if self.mode == "reset" and conn.recv(65536):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # linger 0: RST instead of FIN

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


_SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 (generic table) alike; Linux 5.6+


def process_socket(
    pid: int, local_port: int, remote_port: int, timeout: float = 10.0
) -> socket.socket:
    """A duplicate of the TCP socket that process ``pid`` holds for the connection
    127.0.0.1:``local_port`` <-> 127.0.0.1:``remote_port`` (pidfd_getfd(2): the same open
    socket, so its options can be read as the process set them). Waits up to ``timeout``
    seconds for the process to accept it; the caller keeps its end open meanwhile."""
    deadline = time.monotonic() + timeout
    while (sock := _held_socket(pid, local_port, remote_port)) is None:
        if time.monotonic() > deadline:
            raise LookupError(f"pid {pid} holds no socket {local_port}<->{remote_port}")
        time.sleep(0.05)
    return sock


def _held_socket(pid: int, local_port: int, remote_port: int) -> socket.socket | None:
    inodes = _tcp_inodes(local_port, remote_port)
    want = (("127.0.0.1", local_port), ("127.0.0.1", remote_port))
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # that fd closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                sock = _steal(pid, int(fd))
                if _addresses(sock) == want:  # not an inode number reused meanwhile
                    return sock
                sock.close()
    return None


def _tcp_inodes(local_port: int, remote_port: int) -> set[str]:
    """``socket:[inode]`` of the TCP sockets listed for that pair; inode 0 (still in the
    accept queue, or TIME_WAIT) is left out: no process holds those."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {f"socket:[{r[9]}]" for r in rows if (r[1], r[2]) == want and r[9] != "0"}


def _addresses(sock: socket.socket) -> tuple[object, object] | None:
    try:
        return sock.getsockname(), sock.getpeername()
    except OSError:  # no longer connected
        return None


def _steal(pid: int, fd: int) -> socket.socket:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        ours = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if ours < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(pidfd)
    return socket.socket(fileno=ours)
