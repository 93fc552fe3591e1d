"""Checks across sections, run once every section is built: names that must exist, listeners
that would overlap, backends a frontend cannot serve, open-file limits, stick table ids.
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Callable

from fastmqtt.balance import id_collisions  # the ids stick tables name servers by
from fastmqtt.config.model import (
    FD_MARGIN,
    FDS_PER_CONNECTION,
    BackendConfig,
    Config,
    FrontendConfig,
)
from fastmqtt.config.schema import _items
from fastmqtt.config.values import _did_you_mean, _join, _Report


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
