"""The schema: one table of keys (converter, required or not) per section, walked by one
function, `_walk`, which collects every problem instead of stopping at the first (an operator
fixing a config wants the whole list at once), and a small builder per section. A new section
is one more key table plus a builder.

Messages name the file, the dotted key path (array items 0-based: ``server[2]``) and what
was expected, e.g. ``lb.toml: backend.emqx.server[2].weight: expected an integer 0..256,
got "high"``. Values under ``[defaults]`` fill frontends and backends that do not set them.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fastmqtt.config.model import (
    _CLIENT_TIMEOUT,
    ACTIONS,
    BALANCES,
    CHECK_TYPES,
    DEFAULT_PROTOCOL,
    FAMILIES,
    HASH_KEYS,
    KEEPALIVE_FACTOR,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_CONNECTIONS,
    MAX_DURATION,
    MAX_MOVE_RATE,
    MAX_TEMPLATE_SERVERS,
    MAX_WEIGHT,
    MOVE_REASONS,
    MQTT_MAX_PACKET,
    ON_MARKED_DOWN,
    PP2_TYPE_MAX_CUSTOM,
    PP2_TYPE_MIN_CUSTOM,
    PROTOCOLS,
    PROXY_TLVS,
    RECORD_TYPES,
    SEND_PROXY,
    TLS_VERIFY,
    TLS_VERSIONS,
    TYPICAL_KEEPALIVE,
    WS_BACKENDS,
    WS_SUBPROTOCOLS,
    BackendConfig,
    BackendTLSConfig,
    CheckConfig,
    ClientTimeout,
    Defaults,
    FrontendConfig,
    FrontendTLSConfig,
    GlobalConfig,
    Rate,
    RateLimitConfig,
    RebalanceConfig,
    ResolversConfig,
    Rule,
    ServerConfig,
    ServerTemplateConfig,
    SNICert,
    StatsConfig,
    StatsSocketConfig,
    StickConfig,
)
from fastmqtt.config.values import (
    _DURATION_UNITS,
    Convert,
    _address,
    _Bad,
    _bind,
    _boolean,
    _choice,
    _client_timeout_setting,
    _did_you_mean,
    _directory,
    _duration,
    _env_name,
    _expected,
    _factor,
    _file_mode,
    _integer,
    _ip,
    _is_ip,
    _is_number,
    _join,
    _name,
    _nameservers,
    _owner,
    _Report,
    _seconds_text,
    _server_name,
    _show,
    _size,
    _socket_path,
    _template_address,
    _text,
    _uri,
    _words,
    _workers,
)

_NAME_ONLY_SERVER_KEYS = ("resolvers", "resolve_prefer", "init_addr")


def _warn_name_keys(values: dict, path: str, report: _Report) -> None:
    host = values.get("address", ("", 0))[0]
    if _is_ip(host):
        _warn_no_effect(values, _NAME_ONLY_SERVER_KEYS, "the address is a name", path, report)


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


def _rebalance(value: object, path: str, report: _Report) -> RebalanceConfig:
    if not isinstance(value, dict):
        report.error(path, str(_expected("a table like { rate = 50, tolerance = 0.1 }", value)))
        return RebalanceConfig()
    return RebalanceConfig(**_walk(value, REBALANCE_KEYS, path, report))


def rate_per_second(value: object) -> int:
    """``50``, ``"50/s"`` or ``"3000/m"``: whole clients per second (the config and ``ctl``)."""
    per_second = value
    if isinstance(value, str):
        try:
            rate = _rate(value)
            per_second = rate.count / rate.per
        except _Bad:
            pass
    if isinstance(per_second, float) and per_second.is_integer():
        per_second = int(per_second)
    if type(per_second) is not int or not 1 <= per_second <= MAX_MOVE_RATE:
        raise _expected(f'whole clients per second 1..{MAX_MOVE_RATE}, such as 50 or "50/s"', value)
    return per_second


def tolerance(value: object) -> float:
    """A fraction of the fair share, above 0 and below 1 (``ctl --tolerance`` too)."""
    if not _is_number(value) or not 0.0 < float(value) < 1.0:  # type: ignore[arg-type]
        raise _expected("a fraction above 0 and below 1, such as 0.1 (+-10%)", value)
    return float(value)  # type: ignore[arg-type]


def _move_reason(value: object) -> int:
    if isinstance(value, bool) or value not in MOVE_REASONS:
        raise _expected("0x9C (use another server) or 0x8B (server shutting down)", value)
    return value  # type: ignore[return-value]


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
    "track_packets": _Key(_boolean),
    "stick_dir": _Key(_directory),
    "fast_path": _Key(_boolean),
    "log_connections": _Key(_boolean),
    "takeover_socket": _Key(_socket_path),
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
REBALANCE_KEYS = {
    "rate": _Key(rate_per_second),
    "tolerance": _Key(tolerance),
    "only_clean_sessions": _Key(_boolean),
    "reason": _Key(_move_reason),
    "automatic": _Key(_boolean),
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
    "rebalance": _Key(_rebalance, nested=True),
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
