"""The entry points: TOML text or file -> `Config` (sections built, then checked across), or
every problem found at once.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from functools import partial
from types import MappingProxyType

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

from fastmqtt.config.checks import _CROSS_CHECKS, _check_backend_names, _check_resolvers_names
from fastmqtt.config.model import Config
from fastmqtt.config.schema import (
    TOP_KEYS,
    _build_backend,
    _build_defaults,
    _build_frontend,
    _build_global,
    _build_named,
    _build_resolvers,
    _build_stats,
)
from fastmqtt.config.values import _did_you_mean, _join, _Report
from fastmqtt.errors import ConfigError


def _parse_toml(text: str, report: _Report) -> dict | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        report.errors.append(_syntax_error(report.label, str(exc), text))
        return None


_HAPROXY_SECTION = re.compile(r"^\s*(global|defaults|(frontend|backend|listen)\s+\S+)\s*$", re.M)


def _syntax_error(label: str, message: str, text: str) -> str:
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message)
    if match:
        message, line, column = match[1], int(match[2]), int(match[3])
    else:  # "(at end of document)": point at the end, so editors can jump there
        message = message.removesuffix(" (at end of document)")
        line, column = text.count("\n") + 1, len(text.rsplit("\n", 1)[-1]) + 1
    if label.endswith(".cfg") or _HAPROXY_SECTION.search(text):
        message += f" (an HAProxy config? translate it: fastmqtt convert {label} > lb.toml)"
    return f"{label}:{line}:{column}: TOML syntax error: {message}"


def _build(raw: dict, report: _Report) -> Config:
    for name in [name for name in raw if name not in TOP_KEYS]:
        hint = _did_you_mean(name, TOP_KEYS) or f"; valid sections: {', '.join(TOP_KEYS)}"
        report.error(_join("", name), f"unknown section{hint}")
    global_ = _build_global(raw.get("global", {}), report)
    defaults = _build_defaults(raw.get("defaults", {}), report)
    build_frontend = partial(_build_frontend, defaults=defaults)
    build_backend = partial(_build_backend, defaults=defaults)
    frontends = _build_named(raw.get("frontend"), "frontend", report, build_frontend)
    backends = _build_named(raw.get("backend"), "backend", report, build_backend)
    resolvers = (
        _build_named(raw["resolvers"], "resolvers", report, _build_resolvers)
        if "resolvers" in raw
        else {}
    )
    config = Config(
        path=report.label,
        global_=global_,
        defaults=defaults,
        frontends=tuple(frontends.values()),  # type: ignore[arg-type]
        backends=MappingProxyType(backends),  # type: ignore[arg-type]
        stats=None if "stats" not in raw else _build_stats(raw["stats"], report),
        resolvers=MappingProxyType(resolvers),  # type: ignore[arg-type]
    )
    _check_backend_names(raw, report)
    _check_resolvers_names(raw, config, report)
    for check in _CROSS_CHECKS:
        check(config, report)
    return config


def _validate_text(text: str, label: str) -> tuple[Config | None, list[str], list[str]]:
    report = _Report(label)
    raw = _parse_toml(text, report)
    if raw is None:
        return None, report.errors, report.warnings
    config = _build(raw, report)
    if report.errors:
        return None, report.errors, report.warnings
    return replace(config, warnings=tuple(report.warnings)), report.errors, report.warnings


def validate(path: str | os.PathLike) -> tuple[Config | None, list[str], list[str]]:
    """(config or None, errors, warnings): never raises for a bad or missing file."""
    label = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as exc:
        return None, [f"{label}: cannot read: {exc.strerror or exc}"], []
    except UnicodeDecodeError as exc:
        return None, [f"{label}: not UTF-8 text (byte {exc.start})"], []
    return _validate_text(text, label)


def load_config(path: str | os.PathLike) -> Config:
    """The validated config; raises ConfigError listing every problem."""
    config, errors, _ = validate(path)
    if config is None:
        raise ConfigError(errors)
    return config


def load_config_text(text: str, path: str = "<string>") -> Config:
    """As load_config, for text already in memory (tests, reload)."""
    config, errors, _ = _validate_text(text, path)
    if config is None:
        raise ConfigError(errors)
    return config
