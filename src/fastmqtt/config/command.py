"""`fastmqtt check`: validate config files without binding anything; with the schema passed,
also load the TLS material and look the server names up (the runtime's own validators,
imported when needed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from fastmqtt.config.load import validate
from fastmqtt.config.model import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="path", help="TOML config file(s) to validate")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print errors only (no summary, no warnings)"
    )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _summary(config: Config) -> str:
    """One line: what the config holds, as `fastmqtt check` prints it."""
    servers = sum(len(backend.servers) for backend in config.backends.values())
    counts = ", ".join(
        (
            _plural(len(config.frontends), "frontend"),
            _plural(len(config.backends), "backend"),
            _plural(servers, "server"),
        )
    )
    return f"{config.path}: OK: {counts} (warnings: {len(config.warnings)})"


def run(args: argparse.Namespace) -> int:
    """Each file is checked on its own; exit 1 if any has errors."""
    results = [_check_file(path, args.quiet) for path in args.paths]
    return max(results)


def _check_file(path: str, quiet: bool) -> int:
    config, errors, _ = validate(path)
    if config is not None:
        from fastmqtt.tls import check_material  # ssl is only needed once the schema passed

        errors = [f"{config.path}: {problem}" for problem in check_material(config)]
        config = None if errors else config
    if config is not None and not quiet:  # --quiet prints no warning: no lookups
        from fastmqtt.discovery import check_names  # names are looked up once the rest passed

        config = replace(config, warnings=(*config.warnings, *check_names(config)))
    if config is None:
        # Only errors: a warning computed around a value that failed could be noise.
        print("\n".join(errors), file=sys.stderr)
        return 1
    if not quiet:
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(_summary(config))
        print(_paths(config))
    return 0


def _paths(config: Config) -> str:
    """One line per frontend: the connection-setup path it takes, and why not the fast one."""
    from fastmqtt.fastpath import describe, fast_path_reason  # the runtime's own rule

    return "\n".join(
        f"  frontend {fe.name}: "
        + describe(fast_path_reason(fe, config.backends, config.global_.fast_path))
        for fe in config.frontends
    )
