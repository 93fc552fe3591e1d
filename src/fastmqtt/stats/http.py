"""The stats listener (``[stats]``): what fastmqtt is doing, for people and for scrapers, and
the runtime admin API.

- ``{uri}`` (default ``/stats``): an HTML page that refreshes itself, readable on a phone;
- ``{uri};csv``: the same rows under HAProxy's leading CSV column names, so scripts written
  for ``haproxy /stats;csv`` keep working; ``{uri}.json``: the same rows as JSON;
- ``/metrics``: Prometheus text format, ``fastmqtt_*`` names;
- ``/healthz``: 200 while the process serves (never needs auth: it is for liveness probes);
- ``GET /api/servers[/{backend}/{server}]`` and ``POST /api/servers/{backend}/{server}`` with
  ``{"state": "drain"|"maint"|"ready"}`` and/or ``{"weight": N}``; ``POST /api/reload``. Every
  POST must say ``Content-Type: application/json`` (no cross-site form can).
- ``GET /api/clients/{client_id}``: the live connections of that client id and its stick-table
  entries; ``GET /api/clients?prefix=P&limit=N``: connections whose id starts with P;
  ``POST /api/clients/{client_id}/kick`` ends its connections between two packets (MQTT 5
  clients get DISCONNECT 0x98 first); ``POST /api/clients/{client_id}/unstick`` removes its
  stick-table entries. Client ids are percent-encoded in the path.
- ``GET /api/rebalance[/{backend}]``, ``POST /api/rebalance/{backend}`` with ``{"rate": N,
  "tolerance": T}`` (both optional) or ``{"stop": true}``, ``POST /api/evacuate/{backend}/{server}``
  with ``{"rate": N}`` or ``{"stop": true}`` (rebalance.py).

With ``auth`` configured every path but ``/healthz`` needs HTTP basic auth (the password is
read from the environment variable ``password_env`` at start), ``/metrics`` too unless
``metrics_auth = false``; the admin API always needs it and answers 403 when no auth is
configured. ``[stats.tls]`` puts the HTTP listener behind TLS (the frontends' TLS keys).

``socket`` serves the same on a Unix socket (unix_listener.py) without basic auth: there the
file's mode and owner decide who may connect, as with HAProxy's stats socket.

A small HTTP/1.1 server on asyncio streams: one request per connection, bounded head and
body sizes and a deadline per request. No web framework, no new runtime dependency. The
rows come from rows.py, the page from html.py, the metrics from prometheus.py.

The listener reads its numbers and applies admin changes through a `Source`: LocalSource for
a single process, the supervisor's view of every worker with ``workers > 1`` (workers.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import socket
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

from fastmqtt import packets
from fastmqtt.config import StatsConfig
from fastmqtt.config.model import MAX_WEIGHT
from fastmqtt.config.schema import rate_per_second, tolerance
from fastmqtt.deadline import Deadline
from fastmqtt.frontend import open_listener
from fastmqtt.health import Admin
from fastmqtt.rebalance import RefusedError
from fastmqtt.stats.html import render_html
from fastmqtt.stats.prometheus import render_metrics
from fastmqtt.stats.rows import render_csv
from fastmqtt.stats.unix_listener import UnixListener, peer
from fastmqtt.tls import ServerTLS

if TYPE_CHECKING:
    from fastmqtt.stats.source import Source

log = logging.getLogger("fastmqtt.stats")

MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 4096  # admin requests are tiny JSON objects
REQUEST_DEADLINE = 10.0  # seconds to read a request and write the answer
API = "/api/servers"
RELOAD = "/api/reload"
CLIENTS = "/api/clients"
REBALANCE = "/api/rebalance"
EVACUATE = "/api/evacuate"
DEFAULT_LIMIT = 100  # connections /api/clients?prefix= lists unless asked for more
MAX_LIMIT = 10000


class Request(NamedTuple):
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: str
    via_socket: bool = False  # the Unix socket: its file permissions stand for auth


class Response(NamedTuple):
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.response = Response(status, text + "\n")


def _json(status: int, data: object) -> Response:
    return Response(status, json.dumps(data, indent=1) + "\n", "application/json")


async def read_request(reader: asyncio.StreamReader, peer: str) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HTTPError(431, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, "bad request line")
    headers = {}
    for line in filter(None, lines[1:]):
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPError(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    length = _content_length(headers.get("content-length", "0"))
    if length > MAX_BODY:
        raise HTTPError(413, f"body must be at most {MAX_BODY} bytes")
    body = await reader.readexactly(length)
    path, _, query = parts[1].partition("?")
    return Request(parts[0], path, query, headers, body, peer)


def _content_length(value: str) -> int:
    """RFC 9110 8.6: 1*DIGIT, ASCII only (str.isdigit also takes "²", which int() refuses)."""
    if not (value.isascii() and value.isdigit()):
        raise HTTPError(400, "Content-Length must be a decimal number")
    return int(value)


def _require_json(request: Request) -> None:
    """State-changing requests carry JSON, as `fastmqtt ctl` sends: a cross-site HTML form
    riding an operator's cached basic-auth login cannot set this Content-Type (browsers
    would first ask with a CORS preflight, which this listener never grants)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPError(415, "Content-Type must be application/json")


class StatsServer:
    """The ``[stats]`` listener."""

    def __init__(
        self,
        source: Source,
        config: StatsConfig,
        loop: asyncio.AbstractEventLoop,
        inherited: dict[str, socket.socket] | None = None,
    ) -> None:
        """``inherited``: listening sockets taken over from another process (takeover.py),
        ``"stats"`` (TCP) and ``"stats_unix"``, used instead of binding."""
        self.source = source
        self.config = config
        self.loop = loop
        env = config.auth_password_env
        self.password = os.environ.get(env) if env else None
        if config.auth_user and not self.password:
            log.error(
                "stats: environment variable %s is not set: authenticated requests are refused", env
            )
        self.tls = None if config.tls is None else ServerTLS(config.tls, "stats.tls")
        inherited = inherited or {}
        self.sock = None if config.bind_host is None else inherited.pop("stats", None)
        if self.sock is None and config.bind_host is not None:
            self.sock = _open_tcp(config.bind_host, config.bind_port)
        try:
            self.unix = None
            if config.socket is not None and "stats_unix" in inherited:
                self.unix = UnixListener.adopt(config.socket.path, inherited.pop("stats_unix"))
            elif config.socket is not None:
                self.unix = UnixListener(config.socket)
        except OSError as exc:
            if self.sock is not None:
                self.sock.close()
            raise OSError(exc.errno, f"stats.socket: {exc.strerror}") from None
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()
        self.routes: dict[str, Callable[[dict[str, Any]], Response]] = {  # a page per snapshot
            config.uri: lambda snap: Response(
                200, render_html(snap, config.refresh, config.uri), "text/html; charset=utf-8"
            ),
            config.uri + ";csv": lambda snap: Response(
                200, render_csv(snap), "text/csv; charset=utf-8"
            ),
            config.uri + ".json": lambda snap: _json(200, snap),
            "/metrics": lambda snap: Response(
                200, render_metrics(snap), "text/plain; version=0.0.4; charset=utf-8"
            ),
        }

    def start(self) -> None:
        task = self.loop.create_task(self._start())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.source.start()
        if self.sock is not None:
            scheme, port = "https" if self.tls else "http", self.sock.getsockname()[1]
            where = f"{scheme}://{self.config.bind_host}:{port}{self.config.uri}"
            log.info("stats on %s", where, extra={"url": where})
        if self.unix is not None:
            log.info("stats on unix socket %s", self.unix.path, extra={"socket": self.unix.path})

    async def _start(self) -> None:
        if self.sock is not None:
            tls = None if self.tls is None else self.tls.context
            self._servers.append(
                await asyncio.start_server(
                    self._client,
                    sock=self.sock,
                    limit=MAX_HEAD,
                    ssl=tls,
                    ssl_handshake_timeout=None if tls is None else REQUEST_DEADLINE,
                )
            )
        if self.unix is not None:
            self._servers.append(
                await asyncio.start_unix_server(self._client, sock=self.unix.sock, limit=MAX_HEAD)
            )

    def close(self) -> None:
        self.source.close()
        for server in self._servers:
            server.close()
        if not self._servers:  # never started: the sockets are still ours to close
            for sock in (self.sock, self.unix and self.unix.sock):
                if sock is not None:
                    sock.close()
        if self.unix is not None:
            self.unix.remove()

    # -- one connection ----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        via_socket = sock is not None and sock.family == socket.AF_UNIX
        if via_socket:
            who = f"{peer(sock)} on {self.unix.path}"  # type: ignore[union-attr]
        else:
            address = writer.get_extra_info("peername") or ("?", 0)
            who = f"{address[0]}:{address[1]}"
        try:
            with Deadline(self.loop, REQUEST_DEADLINE):
                writer.write(_encode(await self._answer(reader, who, via_socket)))
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to answer
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, peer: str, via_socket: bool) -> Response:
        try:
            request = await read_request(reader, peer)
            return await self.respond(request._replace(via_socket=via_socket))
        except HTTPError as exc:
            return exc.response
        except (OSError, asyncio.IncompleteReadError):
            raise
        except Exception:  # a bug of ours must not take the listener down
            log.exception("stats: error answering %s", peer)
            return Response(500, "internal error\n")

    async def respond(self, request: Request) -> Response:
        if request.path == "/healthz":
            return Response(200, "ok\n")
        if request.path == API or request.path.startswith(API + "/"):
            return await self._admin(request)
        if request.path == RELOAD:
            return self._reload(request)
        if request.path == CLIENTS or request.path.startswith(CLIENTS + "/"):
            return await self._clients(request)
        if request.path.split("/")[:3] in (REBALANCE.split("/"), EVACUATE.split("/")):
            return self._moves(request)
        if self._needs_auth(request) and not self._authorized(request):
            return _unauthorized()
        route = self.routes.get(request.path)
        if route is None:
            return Response(404, "not found\n")
        if request.method != "GET":
            return Response(405, "use GET\n", headers=(("Allow", "GET"),))
        return route(await self.source.snapshot())

    def _needs_auth(self, request: Request) -> bool:
        if not self.config.auth_user or request.via_socket:
            return False
        return self.config.metrics_auth or request.path != "/metrics"

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not self.password or not self.config.auth_user:
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        same_user = hmac.compare_digest(user.encode(), self.config.auth_user.encode())
        return hmac.compare_digest(password.encode(), self.password.encode()) and same_user

    # -- admin API ---------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        """Why an admin request may not proceed (None: it may)."""
        if request.via_socket:
            return None
        if not self.config.auth_user:
            return Response(403, "the admin API needs [stats] auth = { user, password_env }\n")
        if not self._authorized(request):
            return _unauthorized()
        return None

    def _reload(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.method != "POST":
            return Response(405, "use POST\n", headers=(("Allow", "POST"),))
        _require_json(request)
        errors = self.source.reload()
        return _json(400 if errors else 200, {"reloaded": not errors, "errors": errors})

    async def _admin(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        names = [part for part in request.path[len(API) :].split("/") if part]
        snap = await self.source.snapshot()
        if not names and request.method == "GET":
            return _json(200, [sv for be in snap["backends"] for sv in be["servers"]])
        if len(names) != 2:
            return Response(404, f"use {API}/BACKEND/SERVER\n")
        if _server_row(snap, names[0], names[1]) is None:
            return Response(404, f"no server {names[0]}/{names[1]}\n")
        if request.method == "POST":
            await self._change(request, names[0], names[1])
            snap = await self.source.snapshot()
        elif request.method != "GET":
            return Response(405, "use GET or POST\n", headers=(("Allow", "GET, POST"),))
        return _json(200, _server_row(snap, names[0], names[1]))

    async def _change(self, request: Request, backend: str, server: str) -> None:
        """Apply ``{"state": ...}`` and/or ``{"weight": N}``; HTTPError when invalid."""
        _require_json(request)
        try:
            change = json.loads(request.body)
        except ValueError:
            raise HTTPError(400, "body must be JSON") from None
        if not isinstance(change, dict) or not change or set(change) - {"state", "weight"}:
            raise HTTPError(400, 'expected {"state": "drain"|"maint"|"ready"} and/or {"weight": N}')
        state, weight = change.get("state"), change.get("weight")
        if state is not None and state not in {a.value for a in Admin}:
            raise HTTPError(400, 'state must be "drain", "maint" or "ready"')
        if weight is not None and (type(weight) is not int or not 0 <= weight <= MAX_WEIGHT):
            raise HTTPError(400, f"weight must be an integer 0..{MAX_WEIGHT}")
        user = "" if request.via_socket else f"{self.config.auth_user} from "
        who = f"admin API ({user}{request.peer})"
        await self.source.change(backend, server, state, weight, who)

    def _moves(self, request: Request) -> Response:
        """/api/rebalance[/BACKEND] and /api/evacuate/BACKEND/SERVER."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        evacuate = request.path.startswith(EVACUATE)
        names = [
            p for p in request.path[len(EVACUATE if evacuate else REBALANCE) :].split("/") if p
        ]
        rebalancer = self.source.rebalancer
        if request.method == "GET" and len(names) <= 1:
            runs = rebalancer.progress(names[0] if names else None)
            return _json(200, runs) if runs or not names else Response(404, "no run yet\n")
        if request.method != "POST":
            return Response(405, "use GET or POST\n", headers=(("Allow", "GET, POST"),))
        if len(names) != (2 if evacuate else 1):
            usage = f"{EVACUATE}/BACKEND/SERVER" if evacuate else f"{REBALANCE}/BACKEND"
            return Response(404, f"use POST {usage}\n")
        body = _json_object(request, {"rate", "stop"} | (set() if evacuate else {"tolerance"}))
        if body.get("stop"):
            run = rebalancer.stop(names[0])
            if run is None:
                return Response(404, f"no rebalance or evacuation of {names[0]}\n")
            return _json(200, run.progress())
        try:
            rate = None if body.get("rate") is None else rate_per_second(body["rate"])
            tol = None if body.get("tolerance") is None else tolerance(body["tolerance"])
        except ValueError as exc:  # the config's own words for a bad value
            raise HTTPError(400, str(exc)) from None
        user = "" if request.via_socket else f"{self.config.auth_user} from "
        try:
            run = rebalancer.start(
                names[0],
                names[1] if evacuate else None,
                f"admin API ({user}{request.peer})",
                rate,
                tol,
            )
        except RefusedError as exc:
            raise HTTPError(409, str(exc)) from None
        return _json(202, run.progress())

    async def _clients(self, request: Request) -> Response:
        """Where is device X: GET its connections and stick entries, POST kick or unstick."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        parts = request.path[len(CLIENTS) :].split("/")[1:]
        if not parts:
            return await self._prefix(request)
        action = parts[1] if len(parts) == 2 else None
        if len(parts) > 2 or not parts[0] or action not in (None, "kick", "unstick"):
            return Response(404, f"use {CLIENTS}/CLIENT_ID[/kick|/unstick] or ?prefix=\n")
        client_id = urllib.parse.unquote(parts[0])
        want = "GET" if action is None else "POST"
        if request.method != want:
            return Response(405, f"use {want}\n", headers=(("Allow", want),))
        if action is not None:
            _require_json(request)
        if action == "unstick":
            removed = await self.source.stick(client_id, remove=True)
            if not removed:
                raise HTTPError(404, f"no stick-table entry for client id {client_id!r}")
            return _json(200, {"client_id": client_id, "removed": removed})
        conns = await self.source.find(client_id=client_id, limit=MAX_LIMIT)
        if action == "kick":
            if not conns:
                raise HTTPError(404, f"no connection of client id {client_id!r}")
            by_worker: dict[int | None, list[int]] = {}
            for conn in conns:
                by_worker.setdefault(conn["worker"], []).append(conn["conn_id"])
            asked = await self.source.leave(by_worker, packets.ADMINISTRATIVE_ACTION)
            log.info(
                "kick: client id %r, %d connection(s), asked by %s",
                client_id,
                asked,
                request.peer,
                extra={"client_id": client_id, "asked": asked},
            )
            at_boundary = all(conn["tracked"] for conn in conns)
            return _json(200, {"client_id": client_id, "asked": asked, "at_boundary": at_boundary})
        stick = await self.source.stick(client_id, remove=False)
        if not conns and not stick:
            raise HTTPError(404, f"no connection and no stick-table entry for {client_id!r}")
        return _json(200, {"client_id": client_id, "connections": conns, "stick": stick})

    async def _prefix(self, request: Request) -> Response:
        if request.method != "GET":
            return Response(405, "use GET\n", headers=(("Allow", "GET"),))
        query = urllib.parse.parse_qs(request.query)
        prefix = query.get("prefix", [None])[0]
        limit = query.get("limit", [str(DEFAULT_LIMIT)])[0]
        if prefix is None:
            raise HTTPError(400, f"use {CLIENTS}/CLIENT_ID or {CLIENTS}?prefix=P[&limit=N]")
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
            raise HTTPError(400, f"limit must be an integer 1..{MAX_LIMIT}")
        conns = await self.source.find(prefix=prefix, limit=int(limit))
        return _json(200, {"prefix": prefix, "connections": conns})


def _json_object(request: Request, keys: set[str]) -> dict[str, Any]:
    """The request's JSON object, of ``keys`` only; HTTPError otherwise."""
    _require_json(request)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise HTTPError(400, "body must be JSON") from None
    if not isinstance(body, dict) or set(body) - keys:
        raise HTTPError(400, "expected a JSON object with " + ", ".join(sorted(keys)))
    return body


def _open_tcp(host: str, port: int) -> socket.socket:
    try:
        return open_listener(host, port, False, 128)
    except OSError as exc:
        raise OSError(exc.errno, f"stats: cannot bind {host}:{port}: {exc.strerror}") from None


def _server_row(snap: dict[str, Any], backend: str, server: str) -> dict[str, Any] | None:
    for be in snap["backends"]:
        for sv in be["servers"]:
            if be["pxname"] == backend and sv["svname"] == server:
                return sv
    return None


def _unauthorized() -> Response:
    return Response(
        401, "authentication required\n", headers=(("WWW-Authenticate", 'Basic realm="fastmqtt"'),)
    )


def _encode(response: Response) -> bytes:
    body = response.body.encode()
    head = [
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-cache",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
