"""Converters: one raw TOML value -> one typed value, or `_Bad` saying what was expected; and
the report that collects every problem with the file name and the dotted key path.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fastmqtt.config.model import MAX_DURATION
from fastmqtt.errors import ConfigError


class _Bad(ValueError):
    """A value that does not fit its key; the text says what was expected."""


@dataclass
class _Report:
    label: str  # the file name as the user gave it
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, path: str, text: str) -> None:
        self.errors.append(f"{self.label}: {path}: {text}")

    def warn(self, path: str, text: str) -> None:
        self.warnings.append(f"{self.label}: {path}: {text}")


def _show(value: object) -> str:
    """A value as it would be written in TOML, so the message quotes what the user wrote."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _expected(what: str, value: object, hint: str = "") -> _Bad:
    return _Bad(f"expected {what}, got {_show(value)}{hint}")


def _did_you_mean(word: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _join(path: str, key: str) -> str:
    part = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


# --- converters: one raw TOML value -> one typed value, or _Bad -------------------------------

Convert = Callable[[object], object]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|KiB|MiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "KiB": 1024, "MiB": 1024**2}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WILDCARDS = {"", "*"}  # ":1883" and "*:1883" (HAProxy's spelling) listen on every IPv4 address


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(lo: int, hi: int) -> Convert:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _expected(f"an integer {lo}..{hi}", value)
        return value

    return convert


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("a boolean (true or false)", value)
    return value


def _choice(*options: str) -> Convert:
    what = "one of " + ", ".join(json.dumps(option) for option in options)

    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise _expected(what, value, _did_you_mean(value, options))
        return value

    return convert


def _seconds(value: object) -> float | None:
    """Seconds from ``"250ms"``/``"10s"``/``"2m"``/``"1h"``/``"1d"`` (or a bare 0); else None."""
    if _is_number(value) and value == 0:
        seconds = 0.0  # the one number that means the same in every unit
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        return None
    return seconds if 0.0 <= seconds <= MAX_DURATION else None  # the test also drops NaN


def _unit_hint(value: object) -> str:
    """For a bare number: HAProxy users write milliseconds (``timeout connect 5000``)."""
    if not _is_number(value) or not 0 < value < float("inf"):  # type: ignore[operator]
        return ""
    number = f"{value:g}" if isinstance(value, float) else str(value)
    return f' (did you mean {number} ms, "{number}ms"? a bare number has no unit here)'


def _duration(allow_zero: bool = False) -> Convert:
    what = 'a duration like "250ms", "10s", "30m" or "1h" (at most "7d")'
    what = what if allow_zero else f"a positive {what[2:]}"

    def convert(value: object) -> float:
        seconds = _seconds(value)
        if seconds is None or (seconds == 0.0 and not allow_zero):
            raise _expected(what, value, _unit_hint(value))
        return seconds

    return convert


def parse_duration(text: object, key: str) -> float:
    """Seconds from ``"10s"``, ``"250ms"``, ``"2m"``, ``"30m"``, ``"1h"``, ``"1d"`` (or 0)."""
    try:
        return _duration(allow_zero=True)(text)  # type: ignore[return-value]
    except _Bad as bad:
        raise ConfigError([f"{key}: {bad}"]) from None


def _size(lo: int, hi: int) -> Convert:
    what = f'a size from {lo} bytes to 256MiB (bytes, or a string like "64KiB", "1MiB", "64KB")'

    def convert(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
            size = int(match[1]) * _SIZE_UNITS[match[2]]
        else:
            raise _expected(what, value)
        if not lo <= size <= hi:
            raise _expected(what, value)
        return size

    return convert


def _factor(value: object) -> float:
    if not _is_number(value) or not 1.0 < float(value) <= 100.0:  # type: ignore[arg-type]
        raise _expected("a number above 1.0 and at most 100, such as 1.25", value)
    return float(value)  # type: ignore[arg-type]


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _expected("a name of letters, digits, '_', '-', '.' (at most 64)", value)
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _expected("a non-empty string", value)
    return value


def _env_name(value: object) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise _expected("an environment variable name like FASTMQTT_STATS_PASSWORD", value)
    return value


def _uri(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"/\S*", value):
        raise _expected('a path starting with "/"', value)
    return value


def _file_mode(value: object) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise _expected('a file mode as a string of octal digits like "600" or "0660"', value)
    return int(value, 8)


def _owner(value: object) -> str | int:
    """A user or group name, or a numeric id."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
        return value
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", value):
        raise _expected("a user or group name, or a numeric id", value)
    return value


def _directory(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _expected('an absolute directory path like "/dev/shm/fastmqtt"', value)
    if os.path.exists(value) and not os.path.isdir(value):
        raise _Bad(f"{_show(value)} exists and is not a directory")
    return os.path.normpath(value)


def _socket_path(value: object) -> str:
    # 100 of the 107 bytes a Unix socket path may have: workers offer on PATH.N beside it
    if not isinstance(value, str) or not value.startswith("/") or len(value.encode()) > 100:
        raise _expected('an absolute path (at most 100 bytes) like "/run/fastmqtt/to.sock"', value)
    return os.path.normpath(value)


def _workers(value: object) -> int:
    if value == "auto":
        return _cpu_count()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise _expected('an integer 1..1024 or "auto"', value)
    return value


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use (containers, taskset)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _client_timeout_setting(value: object) -> float | str:
    if value == "auto":
        return "auto"
    try:
        return _duration()(value)  # type: ignore[return-value]
    except _Bad:
        raise _expected('"auto" or a positive duration like "240s"', value) from None


def _words(*options: str) -> Convert:
    """A list of non-empty strings; with ``options``, each must be one of them."""
    what = "a list of " + (", ".join(json.dumps(o) for o in options) if options else "strings")

    def convert(value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _expected(what, value)
        for word in value:
            if options and word not in options:
                raise _expected(what, value, _did_you_mean(word, options))
        return tuple(value)

    return convert


def _server_name(value: object) -> str:
    """A DNS name for SNI, optionally "*." + name (one label); lower-cased."""
    text = value.lower() if isinstance(value, str) else ""
    if not _HOSTNAME.fullmatch(text.removeprefix("*.")) or text.endswith("."):
        raise _expected('a host name like "mqtt.example.com" or "*.example.com"', value)
    return text


def _host(host: str) -> str:
    """An IP literal (normalised) or a DNS name; ValueError otherwise."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        if re.fullmatch(r"[\d.]+", host) or not _HOSTNAME.fullmatch(host):  # 999.1.1.1 too
            raise
    return host


def _host_port(value: object, wildcard: bool) -> tuple[str, int]:
    """(host, port) from "host:port" or "[v6]:port"; ValueError when it is neither."""
    match = _HOST_PORT.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(value)
    port = int(match["port"])
    if match["v6"] is not None:
        return str(ipaddress.IPv6Address(match["v6"])), port
    if wildcard and match["host"] in _WILDCARDS:
        return "0.0.0.0", port
    return _host(match["host"]), port


def _bind(value: object) -> tuple[str, int]:
    try:
        return _host_port(value, wildcard=True)
    except ValueError:
        what = 'an address like "0.0.0.0:1883", "127.0.0.1:1883", "[::]:1883" or ":1883"'
        raise _expected(f"{what} (port 1..65535)", value) from None


def _address(value: object) -> tuple[str, int]:
    try:
        return _host_port(value, wildcard=False)
    except ValueError:
        raise _expected('"host:port" or "[ipv6]:port" (port 1..65535)', value) from None


def _ip(value: object) -> str:
    try:
        return str(ipaddress.ip_address(value))  # type: ignore[arg-type]
    except ValueError:
        raise _expected('an IP address like "10.0.0.5" or "fd00::5"', value) from None


def _nameservers(value: object) -> tuple[tuple[str, int], ...]:
    """``["10.0.0.2", "127.0.0.1:5353", "[fd00::53]:53"]``: IPs, port 53 unless given."""
    what = 'a list of nameserver IPs like ["10.96.0.10", "127.0.0.1:5353", "[fd00::53]:53"]'
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _expected(what, value)
    out = []
    for item in value:
        try:
            host, port = _host_port(item, wildcard=False)
        except ValueError:
            host, port = item, 53
        try:
            out.append((str(ipaddress.ip_address(host)), port))
        except ValueError:
            raise _expected(what + " (an IP: a nameserver's name would need one)", item) from None
    return tuple(out)


def _dns_name(value: object) -> str:
    text = value.rstrip(".") if isinstance(value, str) else ""
    if not _HOSTNAME.fullmatch(text) or re.fullmatch(r"[\d.]+", text) or ":" in text:
        raise _expected('a DNS name like "emqx-headless.mqtt.svc.cluster.local"', value)
    return text


def _template_address(value: object) -> tuple[str, int]:
    """``"name:port"`` (A/AAAA records), or an SRV name ``"_mqtt._tcp.name"`` (ports from
    the records); 0 stands for "no port"."""
    what = '"name:port" (A/AAAA records) or an SRV name like "_mqtt._tcp.emqx.svc"'
    try:
        host, port = _host_port(value, wildcard=False)
    except ValueError:
        try:
            return _dns_name(value), 0
        except _Bad:
            raise _expected(what, value) from None
    if _is_ip(host):
        raise _expected(what + " (a name: an IP needs no template)", value)
    return _dns_name(host), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
