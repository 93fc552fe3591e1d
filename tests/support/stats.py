"""Test helpers for health checks and the stats listener: an HTTP client for it, and small
real socket servers that misbehave on purpose (silent MQTT, switchable HTTP health)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fastmqtt.tools.brokers import Mosquitto, free_port
from tests.support.lb import recipe


def stats_toml(port: int, user: str | None = None, password_env: str = "STATS_PW") -> str:
    auth = f'auth = {{ user = "{user}", password_env = "{password_env}" }}\n' if user else ""
    return f'\n[stats]\nbind = "127.0.0.1:{port}"\nrefresh = "1s"\n{auth}'


def checked_recipe(
    brokers: Sequence[Mosquitto], port: int, stats_port: int, check: str, **kwargs: Any
) -> str:
    """The recipe with ``check = { ... }`` on the backend and a [stats] listener."""
    user = kwargs.pop("user", None)
    backend = f"check = {{ {check} }}\n" + kwargs.pop("backend", "")
    return recipe(brokers, port, backend=backend, **kwargs) + stats_toml(stats_port, user)


class Stats:
    """Reads a running fastmqtt's stats listener."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Content-Type": "application/json"}
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def request(self, path: str, body: object = None, method: str | None = None) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, headers=self.headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def get(self, path: str) -> str:
        status, text = self.request(path)
        assert status == 200, (path, status, text)
        return text

    def json(self) -> dict[str, Any]:
        return json.loads(self.get("/stats.json"))

    def servers(self, backend: str = "cluster") -> dict[str, dict[str, Any]]:
        for be in self.json()["backends"]:
            if be["pxname"] == backend:
                return {sv["svname"]: sv for sv in be["servers"]}
        raise KeyError(backend)

    def state(self, server: str, backend: str = "cluster") -> str:
        return self.servers(backend)[server]["state"]


class SilentServer:
    """Accepts TCP connections and never says a word: a hung broker. Keeps the first bytes
    each connection sent (within 50 ms)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.received: list[bytes] = []
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._conns.append(conn)  # held open, never answered
            conn.settimeout(0.05)
            try:
                self.received.append(conn.recv(4096))
            except TimeoutError:
                self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


class HealthEndpoint:
    """An HTTP health endpoint whose answer the test switches (EMQX answers 503 while a node
    drains); remembers the requests it saw."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[str, str | None]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(endpoint.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
