"""TOML config -> frozen, validated objects, and the `fastmqtt check` command.

Each section is a table of keys (converter, required or not) walked by one function, `_walk`,
which collects every problem instead of stopping at the first: an operator fixing a config
wants the whole list at once. A new section is one more key table plus a small builder.

Messages name the file, the dotted key path (array items 0-based: ``server[2]``) and what
was expected, e.g. ``lb.toml: backend.emqx.server[2].weight: expected an integer 0..256,
got "high"``. Values under ``[defaults]`` fill frontends and backends that do not set them.
"""

from __future__ import annotations

import argparse
import difflib
import grp
import ipaddress
import json
import os
import pwd
import re
import resource
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

from fastmqtt.access import ACTIONS, Rule
from fastmqtt.errors import ConfigError
from fastmqtt.ratelimit import Rate, RateLimitConfig

PROTOCOLS = ("mqtt", "tcp", "ws")
BALANCES = ("roundrobin", "leastconn", "source", "consistent", "random")
HASH_KEYS = ("client_id", "username", "source")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
SEND_PROXY = ("v1", "v2")
CHECK_TYPES = ("tcp", "mqtt", "http")
ON_MARKED_DOWN = ("none", "shutdown-sessions")
TLS_VERIFY = ("none", "optional", "required")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
WS_BACKENDS = ("bridge", "passthrough")
WS_SUBPROTOCOLS = ("mqtt", "mqttv3.1", "mqttv5")
PROXY_TLVS = ("ssl", "authority", "client_id")
RECORD_TYPES = ("any", "a", "aaaa", "srv")  # what a server template expands
FAMILIES = ("ipv4", "ipv6")
MAX_TEMPLATE_SERVERS = 1024
PP2_TYPE_MIN_CUSTOM, PP2_TYPE_MAX_CUSTOM = 0xE0, 0xEF  # proxy-protocol.txt 2.2.8
DEFAULT_PROTOCOL = "mqtt"

TYPICAL_KEEPALIVE = 60.0  # seconds; what most MQTT client libraries send by default
KEEPALIVE_FACTOR = 1.5  # a client is idle for up to 1x keepalive between pings, plus slack
FDS_PER_CONNECTION = 2  # a client socket and a broker socket
FD_MARGIN = 100  # listeners, health checks, logs, pipes, the event loop itself
MAX_CONNECTIONS = 10_000_000
MAX_DURATION = 7 * 86400.0  # keeps millisecond timers of the C relay within 32 bits
MQTT_MAX_PACKET = 256 * 1024 * 1024
MAX_WEIGHT = 256  # as HAProxy: 0..256, and 0 takes no new connections (admin API alike)


# --- the objects the rest of fastmqtt reads ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientTimeout:
    """Client-side idle timeout: a fixed number of seconds, or derived from the keepalive."""

    auto: bool
    seconds: float  # used when not auto
    minimum: float = 30.0
    maximum: float = 3600.0

    def for_keepalive(self, keepalive: int) -> float:
        """Idle timeout in seconds for a client that announced ``keepalive`` (never 0/None)."""
        if not self.auto:
            return self.seconds
        if keepalive <= 0:  # keepalive 0 = the client never pings; only the ceiling applies
            return self.maximum
        return min(max(KEEPALIVE_FACTOR * keepalive, self.minimum), self.maximum)


_CLIENT_TIMEOUT = ClientTimeout(False, 240.0)


def default_maxconn() -> int:
    """10000, or fewer when the open-file limit cannot hold that many proxied connections."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 10000
    return max(1, min(10000, (hard - FD_MARGIN) // FDS_PER_CONNECTION))


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    maxconn: int = field(default_factory=default_maxconn)
    workers: int = 1
    relay_threads: int = 1
    log_level: str = "info"
    log_format: str = "text"
    grace: float = 30.0
    drain_disconnect: bool = False  # MQTT 5 clients get DISCONNECT 0x8B on SIGTERM
    drain_rate: int = 500  # such DISCONNECTs per second, so reconnects arrive spread out
    stick_dir: str | None = None  # stick table files that outlive a restart (stick.py)
    fast_path: bool = True  # frontends the C engine can serve from accept to close, it does
    log_connections: bool = True  # one line per connection on standard output


@dataclass(frozen=True, slots=True)
class Defaults:
    timeout_connect: float = 10.0
    timeout_client: ClientTimeout = _CLIENT_TIMEOUT
    timeout_server: float = 240.0
    maxconn: int = 10000
    inspect_delay: float = 10.0


@dataclass(frozen=True, slots=True)
class SNICert:
    """``[[frontend.NAME.tls.sni]]``: the certificate for clients asking for ``name``."""

    name: str  # a host name, or "*.example.com" for one label under it
    cert: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class FrontendTLSConfig:
    """``[frontend.NAME.tls]``: TLS termination. File paths are absolute after loading."""

    cert: str  # PEM with the chain and (unless ``key`` is set) the private key
    key: str | None = None
    ca: str | None = None  # CA bundle for client certificates
    verify: str = "none"
    min_version: str = "TLSv1.2"
    ciphers: str | None = None
    alpn: tuple[str, ...] = ()
    sni: tuple[SNICert, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendTLSConfig:
    """``[backend.NAME.tls]``: TLS from fastmqtt to the brokers."""

    ca: str | None = None  # None: the system's trust store
    verify: str = "required"
    sni: str | None = None  # server name sent and checked; default: the server's host
    cert: str | None = None  # client certificate, for brokers that want mutual TLS
    key: str | None = None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class FrontendConfig:
    name: str
    bind_host: str
    bind_port: int
    protocol: str
    backend: str
    inspect_delay: float
    reject_invalid: bool = True
    max_connect_size: int = 65536
    maxconn: int = 10000
    timeout_client: ClientTimeout = _CLIENT_TIMEOUT
    allow_bridge: bool = True
    tls: FrontendTLSConfig | None = None
    ws_path: str = "/mqtt"
    ws_subprotocols: tuple[str, ...] = WS_SUBPROTOCOLS
    accept_proxy: bool = False
    trusted_proxies: tuple[Network, ...] = ()
    reject_with_connack: bool = False  # refusals of a readable CONNECT get a CONNACK first
    deny_empty_client_id: bool = False
    access_default: str = "allow"  # when no rule matches
    rules: tuple[Rule, ...] = ()  # [[frontend.NAME.rule]], first match wins (access.py)
    rate_limit: RateLimitConfig | None = None
    fast_path: bool = True  # false: keep it on the event loop (fastpath.fast_path_reason)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    name: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    maxconn: int = 0  # 0 = unlimited
    check: bool | Mapping[str, object] | None = None  # on/off, or keys overriding the backend's
    resolvers: str | None = None  # a [resolvers.NAME] for a host given by name; None: the libc's
    resolve_prefer: str | None = None  # "ipv4" / "ipv6" when a name has both
    init_addr: str | None = None  # an IP used until the name first resolves
    template: str | None = None  # the server_template prefix this slot comes from


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """``[backend.NAME.check]``: how servers are probed and what a failure does (health.py)."""

    type: str = "tcp"
    interval: float = 2.0
    fastinter: float | None = None  # while a server is changing state; default: interval
    downinter: float | None = None  # while it is down; default: interval
    timeout: float | None = None  # default: interval
    rise: int = 2
    fall: int = 3
    port: int | None = None  # probe another port than the server's (a broker's HTTP API)
    send_proxy: bool = False
    client_id: str = "fastmqtt-check"
    mqtt_version: int = 4
    username: str | None = None
    password_env: str | None = None
    path: str = "/"
    expect_status: int = 200
    observe: bool = False  # passive: failed connects of real clients count too
    error_limit: int = 10
    on_marked_down: str = "none"
    slowstart: float = 0.0


@dataclass(frozen=True, slots=True)
class StickConfig:
    on: str = "client_id"
    size: int = 100000
    expire: float = 1800.0


@dataclass(frozen=True, slots=True)
class ServerTemplateConfig:
    """``[[backend.NAME.server_template]]``: ``count`` servers named ``prefix`` + number, one
    per address (A/AAAA) or SRV record of ``host`` (discovery.py keeps each in its slot)."""

    prefix: str
    count: int
    host: str
    port: int  # 0: from the SRV records
    type: str = "any"
    first: int = 1  # the number of the first server: prefix1, prefix2, ...
    resolvers: str | None = None
    resolve_prefer: str | None = None  # with more addresses than servers, this family first
    weight: int = 1  # the keys below apply to every server of the template
    backup: bool = False
    maxconn: int = 0
    check: bool | Mapping[str, object] | None = None

    def servers(self) -> tuple[ServerConfig, ...]:
        """Its servers, each in its slot; which address a slot holds changes while running."""
        return tuple(
            ServerConfig(
                name=f"{self.prefix}{number}",
                host=self.host,
                port=self.port,
                weight=self.weight,
                backup=self.backup,
                maxconn=self.maxconn,
                check=self.check,
                resolvers=self.resolvers,
                resolve_prefer=self.resolve_prefer,
                template=self.prefix,
            )
            for number in range(self.first, self.first + self.count)
        )


@dataclass(frozen=True, slots=True)
class ResolversConfig:
    """``[resolvers.NAME]``: how names are resolved while running (discovery.py). Without
    nameservers (and without parse_resolv_conf) names go to the libc (getaddrinfo)."""

    name: str
    nameservers: tuple[tuple[str, int], ...] = ()
    parse_resolv_conf: bool = False
    interval: float = 10.0  # between two resolutions of a name while its answers are valid
    follow_ttl: bool = False  # the answer's TTL instead of interval, within ttl_min..ttl_max
    ttl_min: float = 1.0
    ttl_max: float = 300.0
    timeout: float = 1.0  # one query
    attempts: int = 3  # queries before a resolution fails
    retry: float = 1.0  # after a failed resolution, the next one
    hold_nx: float = 30.0  # a failed name keeps its last addresses this long after the last
    hold_refused: float = 30.0  # valid answer, by failure (as HAProxy's hold nx/refused/...)
    hold_timeout: float = 30.0
    hold_other: float = 30.0
    hold_obsolete: float = 0.0  # an address gone from the answer keeps its template slot

    @property
    def uses_dns(self) -> bool:
        """True: queries nameservers (TTLs, SRV records); False: the libc's getaddrinfo."""
        return bool(self.nameservers) or self.parse_resolv_conf


SYSTEM_RESOLVERS = ResolversConfig(name="")  # servers that name no [resolvers.NAME]


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    balance: str = "roundrobin"
    hash_key: str = "client_id"
    hash_balance_factor: float | None = None
    stick: StickConfig | None = None
    send_proxy: str | None = None
    retries: int = 3
    redispatch: bool = True
    all_backups: bool = False
    timeout_connect: float = 10.0
    timeout_server: float = 240.0
    servers: tuple[ServerConfig, ...] = ()  # templates' servers included, after the others
    server_templates: tuple[ServerTemplateConfig, ...] = ()
    check: CheckConfig | None = None
    tls: BackendTLSConfig | None = None
    ws_backend: str = "bridge"
    proxy_tlvs: tuple[str, ...] = ()
    proxy_client_id_tlv: int = PP2_TYPE_MIN_CUSTOM


@dataclass(frozen=True, slots=True)
class StatsSocketConfig:
    """``[stats] socket``: the stats and admin API on a Unix socket, without basic auth: the
    file's mode and owner decide who may connect (HAProxy ``stats socket PATH mode 600``)."""

    path: str  # absolute after loading
    mode: int = 0o600
    user: str | int | None = None  # a name or a numeric id; None: the process's own
    group: str | int | None = None


@dataclass(frozen=True, slots=True)
class StatsConfig:
    bind_host: str | None = None  # None: no HTTP listener, only the Unix socket
    bind_port: int = 0
    uri: str = "/stats"
    refresh: float = 10.0
    auth_user: str | None = None
    auth_password_env: str | None = None
    metrics_auth: bool = True  # false: /metrics answers without auth (Prometheus scrapers)
    socket: StatsSocketConfig | None = None
    tls: FrontendTLSConfig | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    global_: GlobalConfig
    defaults: Defaults
    frontends: tuple[FrontendConfig, ...]
    backends: Mapping[str, BackendConfig]
    stats: StatsConfig | None
    warnings: tuple[str, ...] = ()
    resolvers: Mapping[str, ResolversConfig] = field(default_factory=lambda: MappingProxyType({}))

    def resolvers_for(self, name: str | None) -> ResolversConfig:
        return SYSTEM_RESOLVERS if name is None else self.resolvers[name]

    def backend_for(self, frontend: FrontendConfig) -> BackendConfig:
        return self.backends[frontend.backend]


# --- problems: collected, then reported all at once -------------------------------------------


class _Bad(Exception):
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


# --- DNS: [resolvers.NAME], and servers found by name (discovery.py) ---------------------------

_NAME_ONLY_SERVER_KEYS = ("resolvers", "resolve_prefer", "init_addr")


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


def _warn_name_keys(values: dict, path: str, report: _Report) -> None:
    host = values.get("address", ("", 0))[0]
    if _is_ip(host):
        _warn_no_effect(values, _NAME_ONLY_SERVER_KEYS, "the address is a name", path, report)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _server_templates(
    value: object, path: str, report: _Report
) -> tuple[ServerTemplateConfig, ...]:
    if not isinstance(value, list) or not value:
        report.error(path, str(_expected("one or more [[...server_template]] tables", value)))
        return ()
    templates = (_server_template(item, f"{path}[{i}]", report) for i, item in enumerate(value))
    return tuple(template for template in templates if template is not None)


def _server_template(raw: object, path: str, report: _Report) -> ServerTemplateConfig | None:
    values = _walk(raw, TEMPLATE_KEYS, path, report)
    if not _complete(values, TEMPLATE_KEYS):
        return None
    host, port = values.pop("address")
    kind = values.pop("type", "srv" if host.startswith("_") else "any")
    if kind == "srv" and port:
        text = f"SRV records carry the port: write {_show(host)} without :{port}"
        report.error(_join(path, "address"), text)
    elif kind != "srv" and not port:
        text = f'type = "{kind}" needs a port: "{host}:1883"'
        report.error(_join(path, "address"), text)
    return ServerTemplateConfig(host=host, port=port, type=kind, **values)


def _build_resolvers(name: str, raw: object, path: str, report: _Report) -> ResolversConfig:
    resolvers = ResolversConfig(name=name, **_walk(raw, RESOLVERS_KEYS, path, report))
    given = raw if isinstance(raw, dict) else {}
    if resolvers.follow_ttl and not resolvers.uses_dns and "nameservers" not in given:
        text = "needs nameservers or parse_resolv_conf = true (the libc's resolver tells no TTL)"
        report.error(_join(path, "follow_ttl"), text)
    if not resolvers.follow_ttl:
        _warn_no_effect(given, ("ttl_min", "ttl_max"), "follow_ttl = true", path, report)
    if resolvers.ttl_min > resolvers.ttl_max:
        text = f"is above ttl_max ({_seconds_text(resolvers.ttl_max)})"
        report.error(_join(path, "ttl_min"), text)
    return resolvers


# --- the schema: one table of keys per section ------------------------------------------------

Nested = Callable[[object, str, _Report], object]


@dataclass(frozen=True, slots=True)
class _Key:
    convert: Convert | Nested
    required: bool = False
    nested: bool = False  # convert(value, path, report) walks a sub-table and reports itself


_FAILED = object()  # a value that did not convert (already reported)


def _walk(raw: object, keys: Mapping[str, _Key], path: str, report: _Report) -> dict:
    """The keys present in ``raw`` that converted; every problem is reported.

    Bad keys are left out rather than failing the section, so the checks that follow still
    see the rest and the user gets every error in one run (the config is refused anyway).
    """
    if not isinstance(raw, dict):
        report.error(path, str(_expected("a table", raw)))
        return {}
    for name in [name for name in raw if name not in keys]:  # in file order
        hint = _did_you_mean(name, keys) or f"; valid keys: {', '.join(keys)}"
        report.error(_join(path, name), f"unknown key{hint}")
    values = {}
    for name, key in keys.items():
        if name in raw:
            values[name] = _convert(key, raw[name], _join(path, name), report)
        elif key.required:
            report.error(_join(path, name), "missing required key")
    return {name: value for name, value in values.items() if value is not _FAILED}


def _complete(values: Mapping, keys: Mapping[str, _Key]) -> bool:
    """Every required key is there, so the section's object can be built."""
    return all(name in values for name, key in keys.items() if key.required)


def _convert(key: _Key, value: object, path: str, report: _Report) -> object:
    if key.nested:
        return key.convert(value, path, report)  # type: ignore[call-arg]
    try:
        return key.convert(value)  # type: ignore[call-arg]
    except _Bad as bad:
        report.error(path, str(bad))
        return _FAILED


def _switch_or_table(
    value: object, keys: Mapping[str, _Key], example: str, path: str, report: _Report
) -> bool | dict:
    """``true`` / ``false``, or a table of ``keys``; anything else is reported (as false)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        report.error(path, str(_expected(f"true, false or a table like {example}", value)))
        return False
    return _walk(value, keys, path, report)


def _stick(value: object, path: str, report: _Report) -> StickConfig | None:
    """``stick = true`` (defaults), ``false``, or ``{ on = ..., size = ..., expire = ... }``."""
    example = '{ on = "client_id", size = 100000, expire = "30m" }'
    stick = _switch_or_table(value, STICK_KEYS, example, path, report)
    if isinstance(stick, bool):
        return StickConfig() if stick else None
    return StickConfig(**stick)


def _check(value: object, path: str, report: _Report) -> CheckConfig | None:
    """``check = true`` (a TCP check, defaults), ``false``, or a table of CHECK_KEYS."""
    overrides = _server_check(value, path, report)
    if isinstance(overrides, bool):
        return CheckConfig() if overrides else None
    return CheckConfig(**overrides)


def _server_check(value: object, path: str, report: _Report) -> bool | Mapping[str, object]:
    """Per server: ``true``/``false``, or a table of CHECK_KEYS overriding the backend's."""
    example = '{ type = "mqtt", interval = "2s" }'
    check = _switch_or_table(value, CHECK_KEYS, example, path, report)
    return check if isinstance(check, bool) else MappingProxyType(check)


def _servers(value: object, path: str, report: _Report) -> tuple[ServerConfig, ...]:
    if not isinstance(value, list) or not value:
        report.error(path, str(_expected("one or more [[...server]] tables", value)))
        return ()
    items = [_walk(item, SERVER_KEYS, f"{path}[{i}]", report) for i, item in enumerate(value)]
    _check_unique_servers(items, path, report)
    for i, values in enumerate(items):
        _warn_name_keys(values, f"{path}[{i}]", report)
    return tuple(_server(values) for values in items if _complete(values, SERVER_KEYS))


def _server(values: dict) -> ServerConfig:
    host, port = values.pop("address")
    return ServerConfig(host=host, port=port, **values)


def _check_unique_servers(items: list[dict], path: str, report: _Report) -> None:
    first: dict[str, int] = {}
    for i, values in enumerate(items):
        name = values.get("name")
        if name in first:
            text = f"duplicate server name {_show(name)} (also server[{first[name]}])"
            report.error(f"{path}[{i}].name", text)
        elif name is not None:
            first[name] = i


_RATE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|d)")


def _rate(value: object) -> Rate:
    """``"50/s"``, ``"1000/m"``, ``"3/10s"``: that many events per period, in bursts of as many."""
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    per = float(match[2] or 1) * _DURATION_UNITS[match[3]] if match else 0.0
    if match is None or not 1 <= int(match[1]) <= MAX_CONNECTIONS or not 0.0 < per <= MAX_DURATION:
        raise _expected('a rate like "50/s", "1000/m" or "3/10s"', value)
    return Rate(count=int(match[1]), per=per, burst=int(match[1]))


def _rate_limit(value: object, path: str, report: _Report) -> RateLimitConfig:
    return RateLimitConfig(**_walk(value, RATE_LIMIT_KEYS, path, report))


def _networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A CIDR (``"10.0.0.0/8"``, ``"::1"``) or a non-empty list of them."""
    items = [value] if isinstance(value, str) else value
    try:
        if not isinstance(items, list) or not items:
            raise ValueError(value)
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)
    except (TypeError, ValueError):
        raise _expected(
            'a CIDR or a list of them, like ["10.0.0.0/8", "2001:db8::/32"]', value
        ) from None


def _regex(value: object) -> re.Pattern[str]:
    try:
        return re.compile(_text(value))  # type: ignore[arg-type]
    except re.error as exc:
        raise _expected(f"a regular expression ({exc})", value) from None


def _rules(value: object, path: str, report: _Report) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        report.error(path, str(_expected("[[...rule]] tables", value)))
        return ()
    items = [_walk(item, RULE_KEYS, f"{path}[{i}]", report) for i, item in enumerate(value)]
    rules = (_rule(values, f"{path}[{i}]", report) for i, values in enumerate(items))
    return tuple(rule for rule in rules if rule is not None)


def _rule(values: dict, path: str, report: _Report) -> Rule | None:
    """A rule that routes names a backend; no other kind may. None: already reported."""
    if not _complete(values, RULE_KEYS):
        return None
    action = values["action"]
    if (action == "route") != ("backend" in values):
        text = (
            'is required by action = "route"'
            if action == "route"
            else 'only goes with action = "route"'
        )
        report.error(_join(path, "backend"), text)
    return Rule(sources=values.pop("source", ()), **values)


def _file(value: str, report: _Report) -> str:
    """TLS files are found relative to the config file, as an operator reads them there."""
    base = os.path.dirname(os.path.abspath(report.label)) if os.path.exists(report.label) else ""
    return os.path.normpath(os.path.join(base, value)) if base else os.path.abspath(value)


def _files(values: dict, report: _Report) -> dict:
    return {k: _file(v, report) if k in _FILE_KEYS else v for k, v in values.items()}


def _frontend_tls(value: object, path: str, report: _Report) -> FrontendTLSConfig | None:
    values = _walk(value, FRONTEND_TLS_KEYS, path, report)
    if not _complete(values, FRONTEND_TLS_KEYS):
        return None
    sni = values.pop("sni", ())
    tls = FrontendTLSConfig(**_files(values, report), sni=sni)
    if tls.verify != "none" and tls.ca is None:
        report.error(_join(path, "verify"), f'"{tls.verify}" needs `ca` (the clients\' CA)')
    return tls


def _sni_certs(value: object, path: str, report: _Report) -> tuple[SNICert, ...]:
    if not isinstance(value, list) or not value:
        report.error(path, str(_expected("one or more [[...sni]] tables", value)))
        return ()
    items = [_walk(item, SNI_KEYS, f"{path}[{i}]", report) for i, item in enumerate(value)]
    return tuple(SNICert(**_files(v, report)) for v in items if _complete(v, SNI_KEYS))


def _backend_tls(value: object, path: str, report: _Report) -> BackendTLSConfig:
    tls = BackendTLSConfig(**_files(_walk(value, BACKEND_TLS_KEYS, path, report), report))
    if tls.key is not None and tls.cert is None:
        report.error(_join(path, "key"), "a key without `cert`")
    return tls


def _auth(value: object, path: str, report: _Report) -> dict:
    return _walk(value, AUTH_KEYS, path, report)


MAX_SOCKET_PATH = 107  # bytes: sockaddr_un's sun_path holds 108 with the terminating NUL


def _stats_socket(value: object, path: str, report: _Report) -> StatsSocketConfig | None:
    """``socket = "PATH"`` or ``socket = { path = "PATH", mode = "660", user, group }``."""
    if isinstance(value, str):
        value = {"path": value}
    elif not isinstance(value, dict):
        example = '"/run/fastmqtt/admin.sock" or a table like { path = "...", mode = "660" }'
        report.error(path, str(_expected(example, value)))
        return None
    values = _walk(value, STATS_SOCKET_KEYS, path, report)
    if not _complete(values, STATS_SOCKET_KEYS):
        return None
    values["path"] = _file(values["path"], report)
    if len(os.fsencode(values["path"])) > MAX_SOCKET_PATH:
        text = (
            f"{values['path']} is longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes)"
        )
        report.error(_join(path, "path"), text)
        return None
    for key, lookup in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        name = values.get(key)
        if isinstance(name, str):
            try:
                lookup(name)
            except KeyError:
                report.warn(_join(path, key), f"no {key} {_show(name)} on this machine")
    return StatsSocketConfig(**values)


_CLIENT_TIMEOUT_KEYS = {
    "timeout_client": _Key(_client_timeout_setting),
    "timeout_client_min": _Key(_duration()),
    "timeout_client_max": _Key(_duration()),
}
GLOBAL_KEYS = {
    "maxconn": _Key(_integer(1, MAX_CONNECTIONS)),
    "workers": _Key(_workers),
    "relay_threads": _Key(_integer(1, 64)),
    "log_level": _Key(_choice(*LOG_LEVELS)),
    "log_format": _Key(_choice(*LOG_FORMATS)),
    "grace": _Key(_duration(allow_zero=True)),
    "drain_disconnect": _Key(_boolean),
    "drain_rate": _Key(_integer(1, MAX_CONNECTIONS)),
    "stick_dir": _Key(_directory),
    "fast_path": _Key(_boolean),
    "log_connections": _Key(_boolean),
}
DEFAULTS_KEYS = {
    "timeout_connect": _Key(_duration()),
    **_CLIENT_TIMEOUT_KEYS,
    "timeout_server": _Key(_duration()),
    "maxconn": _Key(_integer(1, MAX_CONNECTIONS)),
    "inspect_delay": _Key(_duration()),
}
FRONTEND_KEYS = {
    "bind": _Key(_bind, required=True),
    "protocol": _Key(_choice(*PROTOCOLS)),
    "backend": _Key(_name, required=True),
    "inspect_delay": DEFAULTS_KEYS["inspect_delay"],
    "reject_invalid": _Key(_boolean),
    "max_connect_size": _Key(_size(64, MQTT_MAX_PACKET)),
    "maxconn": DEFAULTS_KEYS["maxconn"],
    **_CLIENT_TIMEOUT_KEYS,
    "allow_bridge": _Key(_boolean),
    "tls": _Key(_frontend_tls, nested=True),
    "ws_path": _Key(_uri),
    "ws_subprotocols": _Key(_words(*WS_SUBPROTOCOLS)),
    "accept_proxy": _Key(_boolean),
    "trusted_proxies": _Key(_networks),
    "reject_with_connack": _Key(_boolean),
    "deny_empty_client_id": _Key(_boolean),
    "access_default": _Key(_choice("allow", "deny")),
    "rate_limit": _Key(_rate_limit, nested=True),
    "rule": _Key(_rules, nested=True),
    "fast_path": _Key(_boolean),
}
RATE_LIMIT_KEYS = {
    "per_source": _Key(_rate),
    "max_per_source": _Key(_integer(1, MAX_CONNECTIONS)),
    "connect_rate": _Key(_rate),
    "per_client_id": _Key(_rate),
    "max_delay": _Key(_duration(allow_zero=True)),
    "tracked": _Key(_integer(1, MAX_CONNECTIONS)),
    "ipv6_prefix": _Key(_integer(1, 128)),
}
RULE_KEYS = {
    "action": _Key(_choice(*ACTIONS), required=True),
    "source": _Key(_networks),
    "client_id": _Key(_text),  # glob
    "client_id_regex": _Key(_regex),
    "username": _Key(_text),  # glob
    "backend": _Key(_name),
}
_FILE_KEYS = ("cert", "key", "ca")
SNI_KEYS = {
    "name": _Key(_server_name, required=True),
    "cert": _Key(_text, required=True),
    "key": _Key(_text),
}
FRONTEND_TLS_KEYS = {
    "cert": _Key(_text, required=True),
    "key": _Key(_text),
    "ca": _Key(_text),
    "verify": _Key(_choice(*TLS_VERIFY)),
    "min_version": _Key(_choice(*TLS_VERSIONS)),
    "ciphers": _Key(_text),
    "alpn": _Key(_words()),
    "sni": _Key(_sni_certs, nested=True),
}
BACKEND_TLS_KEYS = {
    "ca": _Key(_text),
    "verify": _Key(_choice("none", "required")),
    "sni": _Key(_server_name),
    "cert": _Key(_text),
    "key": _Key(_text),
}
STICK_KEYS = {
    "on": _Key(_choice(*HASH_KEYS)),
    "size": _Key(_integer(1, MAX_CONNECTIONS)),
    "expire": _Key(_duration()),
}
SERVER_KEYS = {
    "name": _Key(_name, required=True),
    "address": _Key(_address, required=True),
    "weight": _Key(_integer(0, MAX_WEIGHT)),
    "backup": _Key(_boolean),
    "maxconn": _Key(_integer(0, MAX_CONNECTIONS)),
    "check": _Key(_server_check, nested=True),
    "resolvers": _Key(_name),
    "resolve_prefer": _Key(_choice(*FAMILIES)),
    "init_addr": _Key(_ip),
}
TEMPLATE_KEYS = {
    "prefix": _Key(_name, required=True),
    "count": _Key(_integer(1, MAX_TEMPLATE_SERVERS), required=True),
    "first": _Key(_integer(0, 1_000_000)),
    "address": _Key(_template_address, required=True),
    "type": _Key(_choice(*RECORD_TYPES)),
    **{
        key: SERVER_KEYS[key]
        for key in ("resolvers", "resolve_prefer", "weight", "backup", "maxconn", "check")
    },
}
_HOLD = _Key(_duration(allow_zero=True))
RESOLVERS_KEYS = {
    "nameservers": _Key(_nameservers),
    "parse_resolv_conf": _Key(_boolean),
    "interval": _Key(_duration()),
    "follow_ttl": _Key(_boolean),
    "ttl_min": _Key(_duration()),
    "ttl_max": _Key(_duration()),
    "timeout": _Key(_duration()),
    "attempts": _Key(_integer(1, 100)),
    "retry": _Key(_duration()),
    "hold_nx": _HOLD,
    "hold_refused": _HOLD,
    "hold_timeout": _HOLD,
    "hold_other": _HOLD,
    "hold_obsolete": _HOLD,
}
CHECK_KEYS = {
    "type": _Key(_choice(*CHECK_TYPES)),
    "interval": _Key(_duration()),
    "fastinter": _Key(_duration()),
    "downinter": _Key(_duration()),
    "timeout": _Key(_duration()),
    "rise": _Key(_integer(1, 100)),
    "fall": _Key(_integer(1, 100)),
    "port": _Key(_integer(1, 65535)),
    "send_proxy": _Key(_boolean),
    "client_id": _Key(_text),
    "mqtt_version": _Key(_integer(3, 5)),
    "username": _Key(_text),
    "password_env": _Key(_env_name),
    "path": _Key(_uri),
    "expect_status": _Key(_integer(100, 599)),
    "observe": _Key(_boolean),
    "error_limit": _Key(_integer(1, 1000)),
    "on_marked_down": _Key(_choice(*ON_MARKED_DOWN)),
    "slowstart": _Key(_duration(allow_zero=True)),
}
BACKEND_KEYS = {
    "balance": _Key(_choice(*BALANCES)),
    "hash_key": _Key(_choice(*HASH_KEYS)),
    "hash_balance_factor": _Key(_factor),
    "stick": _Key(_stick, nested=True),
    "send_proxy": _Key(_choice(*SEND_PROXY)),
    "retries": _Key(_integer(0, 100)),
    "redispatch": _Key(_boolean),
    "all_backups": _Key(_boolean),
    "timeout_connect": DEFAULTS_KEYS["timeout_connect"],
    "timeout_server": DEFAULTS_KEYS["timeout_server"],
    "server": _Key(_servers, nested=True),  # this or server_template is required
    "server_template": _Key(_server_templates, nested=True),
    "check": _Key(_check, nested=True),
    "tls": _Key(_backend_tls, nested=True),
    "ws_backend": _Key(_choice(*WS_BACKENDS)),
    "proxy_tlvs": _Key(_words(*PROXY_TLVS)),
    "proxy_client_id_tlv": _Key(_integer(PP2_TYPE_MIN_CUSTOM, PP2_TYPE_MAX_CUSTOM)),
}
AUTH_KEYS = {
    "user": _Key(_text, required=True),
    "password_env": _Key(_env_name, required=True),
}
STATS_KEYS = {
    "bind": _Key(_bind),
    "socket": _Key(_stats_socket, nested=True),
    "uri": _Key(_uri),
    "refresh": _Key(_duration()),
    "auth": _Key(_auth, nested=True),
    "metrics_auth": _Key(_boolean),
    "tls": _Key(_frontend_tls, nested=True),
}
STATS_SOCKET_KEYS = {
    "path": _Key(_text, required=True),
    "mode": _Key(_file_mode),
    "user": _Key(_owner),
    "group": _Key(_owner),
}
TOP_KEYS = ("global", "defaults", "frontend", "backend", "stats", "resolvers")

# Keys that only matter with one setting: set without it, they earn a "has no effect" warning.
_MQTT_ONLY_FRONTEND_KEYS = (
    "inspect_delay",
    "reject_invalid",
    "max_connect_size",
    "allow_bridge",
    "reject_with_connack",
    "deny_empty_client_id",
)
_CONSISTENT_ONLY_KEYS = ("hash_key", "hash_balance_factor")
_AUTO_ONLY_KEYS = ("timeout_client_min", "timeout_client_max")


# --- section builders -------------------------------------------------------------------------


def _warn_no_effect(
    values: Mapping, keys: Iterable[str], unless: str, path: str, report: _Report
) -> None:
    for key in keys:
        if key in values:
            report.warn(_join(path, key), f"has no effect unless {unless}")


def _client_timeout(values: dict, base: ClientTimeout, path: str, report: _Report) -> ClientTimeout:
    """Takes the timeout_client* keys out of ``values``; unset parts come from ``base``."""
    setting = values.pop("timeout_client", None)
    explicit = {key: values.pop(key) for key in _AUTO_ONLY_KEYS if key in values}
    timeout = ClientTimeout(
        auto=base.auto if setting is None else setting == "auto",
        seconds=base.seconds if setting in (None, "auto") else setting,  # type: ignore[arg-type]
        minimum=explicit.get("timeout_client_min", base.minimum),
        maximum=explicit.get("timeout_client_max", base.maximum),
    )
    if not timeout.auto:
        _warn_no_effect(explicit, _AUTO_ONLY_KEYS, 'timeout_client = "auto"', path, report)
    if isinstance(setting, float) and setting < KEEPALIVE_FACTOR * TYPICAL_KEEPALIVE:
        report.warn(_join(path, "timeout_client"), _short_timeout_text(setting))
    if timeout.minimum > timeout.maximum:
        text = f"is above timeout_client_max ({_seconds_text(timeout.maximum)})"
        report.error(_join(path, "timeout_client_min"), text)
        return base  # reported once here, not again in every section that inherits it
    return timeout


def _short_timeout_text(seconds: float) -> str:
    floor = _seconds_text(KEEPALIVE_FACTOR * TYPICAL_KEEPALIVE)
    return (
        f"{_seconds_text(seconds)} is shorter than {KEEPALIVE_FACTOR:g} x a typical "
        f"{TYPICAL_KEEPALIVE:g}s MQTT keepalive: idle clients would be cut between two pings; "
        f'use "auto" or at least "{floor}"'
    )


def _build_global(raw: object, report: _Report) -> GlobalConfig:
    return GlobalConfig(**_walk(raw, GLOBAL_KEYS, "global", report))


def _build_defaults(raw: object, report: _Report) -> Defaults:
    values = _walk(raw, DEFAULTS_KEYS, "defaults", report)
    timeout = _client_timeout(values, _CLIENT_TIMEOUT, "defaults", report)
    return Defaults(timeout_client=timeout, **values)


def _build_frontend(
    name: str, raw: object, path: str, report: _Report, defaults: Defaults
) -> FrontendConfig | None:
    values = _walk(raw, FRONTEND_KEYS, path, report)
    if not _complete(values, FRONTEND_KEYS):
        return None
    timeout = _client_timeout(values, defaults.timeout_client, path, report)
    host, port = values.pop("bind")
    values["rules"] = values.pop("rule", ())
    inherited = {"inspect_delay": defaults.inspect_delay, "maxconn": defaults.maxconn}
    frontend = FrontendConfig(
        **{"protocol": DEFAULT_PROTOCOL, **inherited, **values},
        name=name,
        bind_host=host,
        bind_port=port,
        timeout_client=timeout,
    )
    _check_accept_proxy(frontend, values, path, report)
    if frontend.protocol == "tcp":
        _warn_no_effect(values, _MQTT_ONLY_FRONTEND_KEYS, 'protocol = "mqtt"', path, report)
        if timeout.auto:
            text = 'needs protocol = "mqtt" to read the keepalive; timeout_client_max applies'
            report.warn(_join(path, "timeout_client"), text)
    return frontend


def _check_accept_proxy(frontend: FrontendConfig, values: dict, path: str, report: _Report) -> None:
    if frontend.accept_proxy and not frontend.trusted_proxies:
        text = 'needs trusted_proxies (the balancers allowed to send it, e.g. ["10.0.0.0/8"])'
        report.error(_join(path, "accept_proxy"), text)
    if not frontend.accept_proxy:
        _warn_no_effect(values, ("trusted_proxies",), "accept_proxy = true", path, report)


def _build_backend(
    name: str, raw: object, path: str, report: _Report, defaults: Defaults
) -> BackendConfig:
    values = _walk(raw, BACKEND_KEYS, path, report)
    inherited = {
        "timeout_connect": defaults.timeout_connect,
        "timeout_server": defaults.timeout_server,
    }
    templates = values.pop("server_template", ())
    servers = values.pop("server", ()) + tuple(s for t in templates for s in t.servers())
    if isinstance(raw, dict) and "server" not in raw and "server_template" not in raw:
        report.error(_join(path, "server"), "missing required key")
    _check_template_names(raw, path, report)
    backend = BackendConfig(
        name=name, servers=servers, server_templates=templates, **{**inherited, **values}
    )
    if backend.balance != "consistent":
        _warn_no_effect(values, _CONSISTENT_ONLY_KEYS, 'balance = "consistent"', path, report)
    if servers and all(server.backup for server in servers):
        report.warn(_join(path, "server"), "every server is a backup: there is no primary")
    if servers and all(server.weight == 0 for server in servers):
        report.warn(_join(path, "server"), "every server has weight 0: no new client gets in")
    return backend


def _check_template_names(raw: object, path: str, report: _Report) -> None:
    """A template's server names are taken by no other server or template of the backend."""
    table = raw if isinstance(raw, dict) else {}
    taken: dict[str, str] = {}
    for i, server in enumerate(_items(table.get("server"))):
        if isinstance(server.get("name"), str):
            taken.setdefault(server["name"], f"server[{i}]")
    for i, item in enumerate(_items(table.get("server_template"))):
        prefix, count, first = item.get("prefix"), item.get("count"), item.get("first", 1)
        if not (isinstance(prefix, str) and isinstance(count, int) and isinstance(first, int)):
            continue  # reported by the template's own keys
        where = f"server_template[{i}]"
        for number in range(first, first + min(count, MAX_TEMPLATE_SERVERS)):
            name = f"{prefix}{number}"
            if name in taken:
                text = f"makes a server named {_show(name)}, as {taken[name]} does"
                report.error(f"{path}.{where}.prefix", text)
                break
            taken[name] = where


def _items(raw: object) -> list[dict]:
    return [item for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []


def _build_stats(raw: object, report: _Report) -> StatsConfig | None:
    values = _walk(raw, STATS_KEYS, "stats", report)
    if isinstance(raw, dict) and "bind" not in raw and "socket" not in raw:
        text = "needs `bind` (an address for HTTP), `socket` (a Unix socket path), or both"
        report.error("stats", text)
    if "bind" not in values and values.get("socket") is None:
        return None
    host, port = values.pop("bind", (None, 0))
    auth = values.pop("auth", {})
    env = auth.get("password_env")
    if env is not None and env not in os.environ:
        report.warn("stats.auth.password_env", f"environment variable {env} is not set here")
    if "user" not in auth:
        _warn_no_effect(values, ("metrics_auth",), "auth is set", "stats", report)
    if host is None:
        _warn_no_effect(values, ("tls",), "bind is set (TLS is for HTTP)", "stats", report)
    return StatsConfig(
        bind_host=host, bind_port=port, auth_user=auth.get("user"), auth_password_env=env, **values
    )


def _build_named(raw: object, path: str, report: _Report, build: Callable) -> dict[str, object]:
    """``[frontend.NAME]`` / ``[backend.NAME]``: each table built by ``build``; bad ones dropped."""
    if not raw:
        report.error(path, f"missing: at least one [{path}.NAME] table is required")
        return {}
    if not isinstance(raw, dict):
        report.error(path, str(_expected(f"[{path}.NAME] tables", raw)))
        return {}
    built = {}
    for name, table in raw.items():
        at = _join(path, name)
        if not isinstance(table, dict):
            example = f"[{path}.NAME] table (sections are named, e.g. [{path}.main])"
            report.error(at, str(_expected(f"a {example}", table)))
            continue
        try:
            _name(name)
        except _Bad as bad:
            report.error(at, f"section name: {bad}")
            continue
        section = build(name, table, at, report)
        if section is not None:
            built[name] = section
    return built


# --- checks across sections -------------------------------------------------------------------


def _check_backend_names(raw: dict, report: _Report) -> None:
    """Each frontend names a backend that exists; read from the raw tables, so a frontend or
    backend with errors of its own is still checked."""
    names = _tables(raw.get("backend"))
    for name, frontend in _tables(raw.get("frontend")).items():
        backend = frontend.get("backend")
        if isinstance(backend, str) and backend not in names:
            hint = _did_you_mean(backend, names)
            report.error(
                f"{_join('frontend', name)}.backend", f"no [backend.{backend}] section{hint}"
            )


def _check_resolvers_names(raw: dict, config: Config, report: _Report) -> None:
    """Each ``resolvers = "NAME"`` names a [resolvers.NAME]; SRV records need one that asks
    nameservers (the libc's resolver cannot read them)."""
    for name, backend in _tables(raw.get("backend")).items():
        path = _join("backend", name)
        for kind in ("server", "server_template"):
            for i, item in enumerate(_items(backend.get(kind))):
                at = f"{path}.{kind}[{i}]"
                wanted = item.get("resolvers")
                if isinstance(wanted, str) and wanted not in config.resolvers:
                    hint = _did_you_mean(wanted, config.resolvers)
                    report.error(f"{at}.resolvers", f"no [resolvers.{wanted}] section{hint}")
                elif kind == "server_template" and _srv_without_dns(item, config):
                    text = (
                        "SRV records need resolvers = NAME, a [resolvers.NAME] with nameservers "
                        "or parse_resolv_conf = true (the libc's resolver cannot read them)"
                    )
                    report.error(f"{at}.type", text)


def _srv_without_dns(item: dict, config: Config) -> bool:
    address = item.get("address")
    srv = item.get("type", "srv" if isinstance(address, str) and address[:1] == "_" else "any")
    wanted = item.get("resolvers")
    resolvers = config.resolvers.get(wanted) if isinstance(wanted, str) else None
    return srv == "srv" and (resolvers is None or not resolvers.uses_dns)


def _tables(raw: object) -> dict[str, dict]:
    if not isinstance(raw, dict):
        return {}
    return {name: table for name, table in raw.items() if isinstance(table, dict)}


def _binds(config: Config) -> list[tuple[str, str, int]]:
    binds = [(f"frontend.{fe.name}.bind", fe.bind_host, fe.bind_port) for fe in config.frontends]
    if config.stats is not None and config.stats.bind_host is not None:
        binds.append(("stats.bind", config.stats.bind_host, config.stats.bind_port))
    return binds


def addresses_overlap(a: str, b: str) -> bool:
    """Same address, or a wildcard covering the other: 0.0.0.0 covers IPv4, and [::] covers
    both families (listeners are dual-stack, as Linux makes them by default: bindv6only=0)."""
    if a == b:
        return True
    try:
        ip_a, ip_b = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False  # a DNS name: only an identical name is known to clash
    if a == "::" or b == "::":
        return True
    return ip_a.version == ip_b.version and (ip_a.is_unspecified or ip_b.is_unspecified)


def _format_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_binds(config: Config, report: _Report) -> None:
    """Two listeners on overlapping addresses: `serve` could not bind the second (with workers,
    SO_REUSEPORT would even split one port's clients between two frontends)."""
    binds = _binds(config)
    for i, (path, host, port) in enumerate(binds):
        for other_path, other_host, other_port in binds[:i]:
            if port == other_port and addresses_overlap(host, other_host):
                other = f"{other_path} ({_format_bind(other_host, other_port)})"
                text = f"{_format_bind(host, port)} overlaps {other}: only one can listen there"
                report.error(path, text)


def _mqtt_fields_needed(backend: BackendConfig) -> str | None:
    """Why the backend needs the CONNECT to be read, or None."""
    if backend.stick is not None and backend.stick.on != "source":
        return f"sticks on {backend.stick.on}"
    if backend.balance == "consistent" and backend.hash_key != "source":
        return f"hashes on {backend.hash_key}"
    return None


def _check_tcp_frontends(config: Config, report: _Report) -> None:
    """A `tcp` frontend never reads the CONNECT, so a backend keyed on its fields cannot work."""
    for frontend in config.frontends:
        backend = config.backends.get(frontend.backend)
        reason = None if backend is None else _mqtt_fields_needed(backend)
        if frontend.protocol == "tcp" and reason:
            text = f'protocol = "tcp" reads no CONNECT, but backend {backend.name} {reason}'
            report.warn(f"frontend.{frontend.name}.protocol", text)


def _check_rule_backends(config: Config, report: _Report) -> None:
    """A route rule's backend exists; on a `tcp` frontend, rules on CONNECT fields never match."""
    for frontend in config.frontends:
        for i, rule in enumerate(frontend.rules):
            path = f"frontend.{frontend.name}.rule[{i}]"
            if rule.backend is not None and rule.backend not in config.backends:
                hint = _did_you_mean(rule.backend, config.backends)
                report.error(f"{path}.backend", f"no [backend.{rule.backend}] section{hint}")
            if rule.reads_connect and frontend.protocol == "tcp":
                report.warn(path, 'never matches: protocol = "tcp" reads no client id or username')


def _check_stick_ids(config: Config, report: _Report) -> None:
    """Stick entries name servers by a 32-bit hash of the name: two in one backend must differ."""
    from fastmqtt.stick import id_collisions  # the hash the tables use

    for backend in config.backends.values():
        if backend.stick is None:
            continue
        for first, second in id_collisions(s.name for s in backend.servers):
            text = f"servers {first} and {second} hash to the same stick table id: rename one"
            report.error(f"backend.{backend.name}.server", text)


def _max_connections(config: Config) -> int:
    """What one process may hold: the global limit, or less if the frontends' limits sum lower."""
    per_frontend = sum(frontend.maxconn for frontend in config.frontends)
    return min(config.global_.maxconn, per_frontend or config.global_.maxconn)


def open_files_needed(config: Config) -> int:
    """File descriptors one process needs for its connection limit (for RLIMIT_NOFILE)."""
    return FDS_PER_CONNECTION * _max_connections(config) + FD_MARGIN


def _check_open_files(config: Config, report: _Report) -> None:
    """`serve` may raise the soft limit up to the hard limit, which is the real ceiling."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = open_files_needed(config)
    if hard != resource.RLIM_INFINITY and needed > hard:
        text = (
            f"{_max_connections(config)} connections (the lower of global.maxconn and the "
            f"frontends' total maxconn) need about {needed} open files "
            f"({FDS_PER_CONNECTION} per connection + {FD_MARGIN} spare), but this process may "
            f"open at most {hard} (RLIMIT_NOFILE hard limit; soft {soft}): "
            f"lower maxconn to {(hard - FD_MARGIN) // FDS_PER_CONNECTION} or raise the limit"
        )
        report.warn("global.maxconn", text)


def _check_ws_backends(config: Config, report: _Report) -> None:
    """Passthrough forwards the client's WebSocket upgrade: only a ws frontend has one. The
    frontend answers it before rules read the CONNECT, so the mode comes from its own backend,
    and every backend a rule routes to must agree with it."""
    for frontend in config.frontends:
        default = config.backends.get(frontend.backend)
        if default is None:
            continue
        path = f"frontend.{frontend.name}"
        _check_ws_backend(frontend, default, None, f"{path}.protocol", report)
        for i, rule in enumerate(frontend.rules):
            routed = config.backends.get(rule.backend or "")
            if routed is not None:
                _check_ws_backend(frontend, routed, default, f"{path}.rule[{i}].backend", report)


def _check_ws_backend(
    frontend: FrontendConfig,
    backend: BackendConfig,
    default: BackendConfig | None,
    path: str,
    report: _Report,
) -> None:
    mode = backend.ws_backend
    if frontend.protocol != "ws":
        if mode == "passthrough":
            report.error(
                path, f'backend {backend.name} has ws_backend = "{mode}": needs protocol = "ws"'
            )
    elif default is not None and mode != default.ws_backend:
        text = (
            f'backend {backend.name} has ws_backend = "{mode}" but the frontend\'s backend '
            f'{default.name} has "{default.ws_backend}": a WebSocket frontend answers the upgrade '
            "(bridging it or passing it through) before rules read the CONNECT, so every backend "
            "it routes to must share its ws_backend"
        )
        report.error(path, text)


_CROSS_CHECKS: tuple[Callable[[Config, _Report], None], ...] = (
    _check_binds,
    _check_ws_backends,
    _check_tcp_frontends,
    _check_rule_backends,
    _check_open_files,
    _check_stick_ids,
)


# --- entry points -----------------------------------------------------------------------------


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


# --- `fastmqtt check` -------------------------------------------------------------------------


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
