"""`fastmqtt ctl`: steer a running fastmqtt through its admin API (see stats.py).

    fastmqtt ctl [--url URL] [--user USER] [--password-env VAR] ACTION [BACKEND/SERVER] [N]

ACTION is ``drain``, ``maint`` or ``ready`` (admin state), ``weight`` (with N), ``show``
(one server, or every server without a target) or ``reload`` (re-read the config file, as
SIGHUP does; its errors are printed and the old config keeps running). The password is read
from the environment variable named by ``--password-env`` (default FASTMQTT_STATS_PASSWORD),
never from the command line, where other users could read it. Exit status: 0 done, 1 refused or
unreachable, 2 usage error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

ACTIONS = ("drain", "maint", "ready", "weight", "show", "reload")
DEFAULT_URL = "http://127.0.0.1:8888"
DEFAULT_PASSWORD_ENV = "FASTMQTT_STATS_PASSWORD"
TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"stats listener (default {DEFAULT_URL})"
    )
    parser.add_argument("--user", help="[stats] auth user")
    parser.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        metavar="VAR",
        help=f"environment variable holding the password (default {DEFAULT_PASSWORD_ENV})",
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("target", nargs="?", help="BACKEND/SERVER")
    parser.add_argument("weight", nargs="?", type=int, help="new weight (0..256) for `weight`")


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, JSON body) for the command line; ValueError explains a usage error."""
    if args.action == "reload":
        if args.target is not None:
            raise ValueError(f"reload: unexpected argument {args.target!r}")
        return "POST", "/api/reload", {}
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


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if args.user:
        password = os.environ.get(args.password_env, "")
        token = base64.b64encode(f"{args.user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return headers


def run(args: argparse.Namespace) -> int:
    try:
        method, path, body = request(args)
    except ValueError as exc:
        print(f"fastmqtt ctl: {exc}", file=sys.stderr)
        return 2
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        args.url.rstrip("/") + path, data=data, headers=_headers(args), method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            print(response.read().decode(), end="")
    except urllib.error.HTTPError as exc:
        print(f"fastmqtt ctl: {exc.code} {exc.read().decode().strip()}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"fastmqtt ctl: {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    return 0
