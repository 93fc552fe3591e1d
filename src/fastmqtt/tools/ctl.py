"""`fastmqtt ctl`: steer a running fastmqtt through its admin API (see stats.py).

    fastmqtt ctl [--url URL | --socket PATH] [--user USER] [--password-env VAR] [--cafile PEM]
                 ACTION [BACKEND/SERVER | CLIENT_ID] [N] [--prefix] [--limit N]
    fastmqtt ctl ... rebalance BACKEND [--rate N/s] [--tolerance T] [--stop | --status] [--wait]
    fastmqtt ctl ... evacuate BACKEND/SERVER [--rate N/s] [--stop | --status] [--wait]

ACTION is ``drain``, ``maint`` or ``ready`` (admin state), ``weight`` (with N), ``show``
(one server, or every server without a target) or ``reload`` (re-read the config file, as
SIGHUP does; its errors are printed and the old config keeps running). Where is device X:
``client CLIENT_ID`` lists its live connections (every worker) and its stick-table entries
(``--prefix``: connections whose id starts so, ``--limit`` of them), ``kick CLIENT_ID`` ends
its connections between two packets (MQTT 5 clients get DISCONNECT 0x98 first), ``unstick
CLIENT_ID`` removes its stick-table entries; an unknown id is an error (exit 1).
``rebalance`` moves clients from the servers above their fair share to those below it,
``evacuate`` drains one server and moves its clients off (rebalance.py); ``--status`` shows
how far one got, ``--stop`` stops it, ``--wait`` follows it until it ends (exit 0 only when
it is done).

The password is read from the environment variable named by ``--password-env`` (default
FASTMQTT_STATS_PASSWORD), never from the command line, where other users could read it.
``--socket`` talks to the ``[stats] socket`` instead, where the file's permissions stand for
the password; ``--cafile`` verifies an HTTPS stats listener against a private CA. Exit
status: 0 done, 1 refused, unknown or unreachable, 2 usage error.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ACTIONS = (
    "drain",
    "maint",
    "ready",
    "weight",
    "show",
    "reload",
    "client",
    "kick",
    "unstick",
    "rebalance",
    "evacuate",
)
CLIENT_ACTIONS = ("client", "kick", "unstick")
MOVES = ("rebalance", "evacuate")
WAIT_POLL = 1.0  # seconds between progress lines of --wait
DEFAULT_URL = "http://127.0.0.1:8888"
DEFAULT_PASSWORD_ENV = "FASTMQTT_STATS_PASSWORD"
TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help=f"stats listener (default {DEFAULT_URL})")
    where.add_argument(
        "--socket", metavar="PATH", help="the [stats] Unix socket instead of --url (no auth)"
    )
    parser.add_argument("--cafile", metavar="PEM", help="CA bundle to verify an https:// --url")
    parser.add_argument("--user", help="[stats] auth user")
    parser.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        metavar="VAR",
        help=f"environment variable holding the password (default {DEFAULT_PASSWORD_ENV})",
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument(
        "target", nargs="?", help="BACKEND/SERVER, or CLIENT_ID (client, kick, unstick)"
    )
    parser.add_argument("weight", nargs="?", type=int, help="new weight (0..256) for `weight`")
    parser.add_argument(
        "--prefix", action="store_true", help="client: CLIENT_ID is a prefix of the ids to list"
    )
    parser.add_argument(
        "--limit", type=int, default=100, metavar="N", help="client --prefix: at most N (100)"
    )
    moves = parser.add_argument_group("rebalance and evacuate")
    moves.add_argument("--rate", metavar="N/s", help="clients moved per second (as configured)")
    moves.add_argument("--tolerance", type=float, metavar="T", help="+-T of the fair share")
    which = moves.add_mutually_exclusive_group()
    which.add_argument("--stop", action="store_true", help="stop the run under way")
    which.add_argument("--status", action="store_true", help="show the last run, start nothing")
    moves.add_argument("--wait", action="store_true", help="follow the run until it ends")


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, JSON body) for the command line; ValueError explains a usage error."""
    moving = args.action in MOVES
    options = [
        f"--{o}" for o in ("rate", "tolerance", "stop", "status", "wait") if getattr(args, o)
    ]
    if options and not moving:
        raise ValueError(f"{args.action}: {options[0]} is for rebalance and evacuate")
    if moving:
        return _move_request(args)
    if args.action == "reload":
        if args.target is not None:
            raise ValueError(f"reload: unexpected argument {args.target!r}")
        return "POST", "/api/reload", {}
    if args.action in CLIENT_ACTIONS:
        return _client_request(args)
    if args.prefix:
        raise ValueError(f"{args.action}: --prefix is for `client`")
    if args.action == "show" and args.target is None:
        return "GET", "/api/servers", None
    if args.target is None or args.target.count("/") != 1 or "" in args.target.split("/"):
        raise ValueError(f"{args.action}: expected BACKEND/SERVER, got {args.target!r}")
    path = "/api/servers/" + "/".join(
        urllib.request.quote(p, safe="") for p in args.target.split("/")
    )
    if args.action == "show":
        return "GET", path, None
    if args.action == "weight":
        if args.weight is None:
            raise ValueError("weight: expected BACKEND/SERVER N")
        return "POST", path, {"weight": args.weight}
    if args.weight is not None:
        raise ValueError(f"{args.action}: unexpected argument {args.weight}")
    return "POST", path, {"state": args.action}


def _client_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.target is None:
        raise ValueError(f"{args.action}: expected CLIENT_ID")
    if args.weight is not None:
        raise ValueError(f"{args.action}: unexpected argument {args.weight}")
    if args.prefix:
        if args.action != "client":
            raise ValueError(f"{args.action}: --prefix is for `client`")
        if not 1 <= args.limit <= 10000:
            raise ValueError(f"--limit {args.limit}: expected 1..10000")
        query = urllib.parse.urlencode({"prefix": args.target, "limit": args.limit})
        return "GET", f"/api/clients?{query}", None
    path = "/api/clients/" + urllib.parse.quote(args.target, safe="")
    if args.action == "client":
        return "GET", path, None
    return "POST", f"{path}/{args.action}", {}


def _move_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    evacuate = args.action == "evacuate"
    parts = (args.target or "").split("/")
    if len(parts) != (2 if evacuate else 1) or "" in parts:
        raise ValueError(
            f"{args.action}: expected {'BACKEND/SERVER' if evacuate else 'BACKEND'}, "
            f"got {args.target!r}"
        )
    if args.weight is not None:
        raise ValueError(f"{args.action}: unexpected argument {args.weight}")
    if evacuate and args.tolerance is not None:
        raise ValueError("evacuate: --tolerance is for rebalance (an evacuation ends at 0)")
    path = f"/api/{args.action}/" + "/".join(urllib.request.quote(p, safe="") for p in parts)
    if args.status:
        return "GET", f"/api/{args.action}/" + urllib.request.quote(parts[0], safe=""), None
    if args.stop:
        return "POST", path, {"stop": True}
    body: dict[str, Any] = {}
    if args.rate is not None:
        body["rate"] = int(args.rate) if args.rate.isdigit() else args.rate
    if args.tolerance is not None:
        body["tolerance"] = args.tolerance
    return "POST", path, body


def _headers(args: argparse.Namespace) -> dict[str, str]:
    """JSON, and basic auth with --user; ValueError when the password variable is not set."""
    headers = {"Content-Type": "application/json"}
    if args.user:
        password = os.environ.get(args.password_env)
        if password is None:
            raise ValueError(
                f"--user {args.user}: the password variable {args.password_env} is not set "
                "(export it, or name another with --password-env)"
            )
        token = base64.b64encode(f"{args.user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return headers


def _base_url(url: str) -> str:
    """The stats listener's URL; ValueError for anything but http(s)://HOST[:PORT]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url {url}: expected http://HOST:PORT, the [stats] listener")
    return url.rstrip("/")


def run(args: argparse.Namespace) -> int:
    try:
        method, path, body = request(args)
        base = "http://localhost" if args.socket else _base_url(args.url)
        req = urllib.request.Request(
            base + path,
            data=None if body is None else json.dumps(body).encode(),
            headers=_headers(args),
            method=method,
        )
    except ValueError as exc:
        print(f"fastmqtt ctl: {exc}", file=sys.stderr)
        return 2
    try:
        with _open(args, req) as response:
            answer = response.read().decode()
        print(answer, end="")
        if getattr(args, "wait", False):
            return _follow(args, json.loads(answer))
    except urllib.error.HTTPError as exc:
        hint = " (the admin API wants --user)" if exc.code == 401 and not args.user else ""
        print(f"fastmqtt ctl: {exc.code} {exc.read().decode().strip()}{hint}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        where = args.socket or args.url
        reason = getattr(exc, "reason", exc)
        hint = ""
        if isinstance(reason, (ConnectionRefusedError, FileNotFoundError)):
            key = "[stats] socket" if args.socket else "[stats] bind in the config"
            hint = f" (nothing listens there: the admin API is the stats listener, {key})"
        print(f"fastmqtt ctl: {where}: {reason}{hint}", file=sys.stderr)
        return 1
    return 0


def _follow(args: argparse.Namespace, progress: Any) -> int:
    """--wait: a line a second until the run ends; 0 when it ended done."""
    if isinstance(progress, list):  # --status answers a list (the backend's last run)
        progress = progress[0]
    path = f"/api/{args.action}/" + urllib.request.quote(progress["backend"], safe="")
    base = "http://localhost" if args.socket else _base_url(args.url)
    while progress["state"] == "running":
        time.sleep(WAIT_POLL)
        req = urllib.request.Request(base + path, headers=_headers(args))
        with _open(args, req) as response:
            progress = json.loads(response.read())[0]
        print(_progress_line(progress), flush=True)
    print(f"{progress['kind']} of {progress['backend']}: {progress['state']}: {progress['why']}")
    return 0 if progress["state"] == "done" else 1


def _progress_line(p: dict[str, Any]) -> str:
    servers = " ".join(
        f"{name}={s['current']}" + (f"/{s['share']}" if "share" in s else "")
        for name, s in p["servers"].items()
    )
    return (
        f"{p['seconds']:.0f}s {p['state']}: asked {p['asked']}, back {p['arrived']}, "
        f"in flight {p['in_flight']}, lost {p['lost']}; {servers}"
    )


def _open(args: argparse.Namespace, req: urllib.request.Request) -> Any:
    """The answer to ``req``, over --socket or to --url; HTTPError for a status >= 400."""
    if not args.socket:
        context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
        return urllib.request.urlopen(req, timeout=TIMEOUT, context=context)
    connection = _UnixConnection(args.socket)
    connection.request(req.get_method(), req.selector, req.data, dict(req.header_items()))
    response = connection.getresponse()
    if response.status >= 400:
        raise urllib.error.HTTPError(
            req.full_url, response.status, response.reason, response.headers, response
        )
    return response


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)
