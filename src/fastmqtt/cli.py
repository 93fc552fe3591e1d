"""The `fastmqtt` command: argparse subcommands, each owned by the module that does the work.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them up, importing a module when its command is chosen (a fast `--help`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fastmqtt import IMPLEMENTATION, __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("fastmqtt.server", "run the load balancer from a TOML config"),
    "check": ("fastmqtt.config", "validate a config file without binding anything"),
    "demo": ("fastmqtt.demo", "start three local brokers and a balancer in front of them"),
    "bench": ("fastmqtt.bench", "load generator: connection churn and publish echo"),
    "convert": ("fastmqtt.convert", "translate an HAProxy MQTT config into lb.toml"),
    "ctl": ("fastmqtt.ctl", "drain, maint, ready, weight or show a server of a running fastmqtt"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmqtt", description="MQTT-aware load balancer for broker clusters."
    )
    parser.add_argument(
        "--version", action="version", version=f"fastmqtt {__version__} ({IMPLEMENTATION})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"fastmqtt {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(argv[1:])) or 0)
