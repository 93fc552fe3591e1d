"""The `fastmqtt` command: argparse subcommands, each owned by the module that does the work.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them up, importing a module when its command is chosen (a fast `--help`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


class _Version(argparse.Action):
    """``--version``: computed when asked for (it imports uvloop and ssl, and may ask git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show version and build, then exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from fastmqtt.build_info import version_text

        print(version_text(), end="")
        parser.exit()


COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("fastmqtt.serve", "run the load balancer from a TOML config"),
    "check": ("fastmqtt.config.command", "validate a config file without binding anything"),
    "demo": ("fastmqtt.tools.demo", "start three local brokers and a balancer in front of them"),
    "bench": ("fastmqtt.tools.bench", "load generator: connection churn and publish echo"),
    "convert": ("fastmqtt.tools.convert", "translate an HAProxy MQTT config into lb.toml"),
    "ctl": (
        "fastmqtt.tools.ctl",
        "server states, reload, find, kick or unstick a client, rebalance, evacuate",
    ),
}


def build_parser(full: bool = False) -> argparse.ArgumentParser:
    """The top-level parser; ``full`` adds every command's own arguments (imports every command
    module: for shell completion and the man page, not for running)."""
    parser = argparse.ArgumentParser(
        prog="fastmqtt", description="MQTT-aware load balancer for broker clusters."
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if full:
            module = importlib.import_module(module_name)
            command = sub.add_parser(name, help=help_text, **_command_options(name, module))
            module.add_arguments(command)
        else:
            sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _command_options(name: str, module: object) -> dict:
    return {"description": COMMANDS[name][1], "add_help": getattr(module, "SHORT_HELP", True)}


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """One command's parser, and the module that runs it."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"fastmqtt {name}", **_command_options(name, module))
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
    sub, module = command_parser(argv[0])
    return int(module.run(sub.parse_args(argv[1:])) or 0)  # type: ignore[attr-defined]
