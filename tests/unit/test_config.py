"""Config loading: typed values, inheritance from [defaults], every error class and warning."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmqtt.config import (
    BackendConfig,
    ClientTimeout,
    Config,
    FrontendConfig,
    FrontendTLSConfig,
    RebalanceConfig,
    ServerConfig,
    StickConfig,
    load_config,
    load_config_text,
    parse_duration,
    validate,
)
from fastmqtt.config.model import MAX_WEIGHT
from fastmqtt.config.schema import (
    BACKEND_KEYS,
    DEFAULTS_KEYS,
    FRONTEND_KEYS,
    GLOBAL_KEYS,
)
from fastmqtt.errors import ConfigError
from fastmqtt.frontend import open_listener
from fastmqtt.stats import http as stats_http

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lb.toml"

# Everything set explicitly, in every section; maxconn small enough for any fd limit.
GOOD = """
[global]
maxconn = 1000
workers = 2
relay_threads = 2
log_level = "debug"
log_format = "json"
grace = "5s"

[defaults]
timeout_connect = "2s"
timeout_client = "auto"
timeout_client_min = "45s"
timeout_client_max = "10m"
timeout_server = "5m"
maxconn = 500
inspect_delay = "3s"

[frontend.mqtt]
bind = ":1883"
backend = "emqx"

[frontend.secure]
bind = "[::1]:8883"
protocol = "mqtt"
backend = "emqx"
inspect_delay = "250ms"
reject_invalid = false
max_connect_size = "1MiB"
maxconn = 100
timeout_client = "120s"
allow_bridge = false
tls = { cert = "server.pem", alpn = ["mqtt"] }

[backend.emqx]
balance = "consistent"
hash_key = "username"
hash_balance_factor = 1.25
stick = { on = "username", size = 5000, expire = "1h" }
send_proxy = "v2"
retries = 5
redispatch = false
all_backups = true
timeout_connect = "1s"

[[backend.emqx.server]]
name = "emqx1"
address = "192.168.0.2:1883"
weight = 5
maxconn = 300

[[backend.emqx.server]]
name = "emqx2"
address = "[fd00::3]:1883"
backup = true

[stats]
bind = "127.0.0.1:8888"
uri = "/haproxy"
refresh = "5s"
auth = { user = "admin", password_env = "PATH" }
"""

SECOND_SERVER = '\n[[backend.emqx.server]]\nname = "emqx2"\naddress = "192.168.0.3:1883"\n'

# The smallest valid config; tests add or change one thing in it.
MINIMAL = """
[global]
maxconn = 1000

[frontend.mqtt]
bind = "0.0.0.0:1883"
backend = "emqx"

[backend.emqx]
{backend}
[[backend.emqx.server]]
name = "emqx1"
address = "192.168.0.2:1883"
{server}
"""


def minimal(backend: str = "", server: str = "", extra: str = "") -> str:
    return MINIMAL.format(backend=backend, server=server) + textwrap.dedent(extra)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "lb.toml")
    return caught.value.errors


def warnings_of(text: str) -> tuple[str, ...]:
    return load_config_text(text, "lb.toml").warnings


# --- a good config: every value typed, frozen, inherited where unset --------------------------


def test_good_config_every_section() -> None:
    config = load_config_text(GOOD, "lb.toml")
    assert config.path == "lb.toml"
    assert config.warnings == ()
    g = config.global_
    assert (g.maxconn, g.workers, g.relay_threads) == (1000, 2, 2)
    assert (g.log_level, g.log_format, g.grace) == ("debug", "json", 5.0)
    d = config.defaults
    assert (d.timeout_connect, d.timeout_server, d.maxconn, d.inspect_delay) == (2, 300, 500, 3)
    assert d.timeout_client == ClientTimeout(True, 240.0, 45.0, 600.0)

    plain, secure = config.frontends
    assert plain == FrontendConfig(
        name="mqtt",
        bind_host="0.0.0.0",
        bind_port=1883,
        protocol="mqtt",
        backend="emqx",
        inspect_delay=3.0,
        maxconn=500,
        timeout_client=ClientTimeout(True, 240.0, 45.0, 600.0),
    )
    assert (secure.bind_host, secure.bind_port, secure.inspect_delay) == ("::1", 8883, 0.25)
    assert (secure.reject_invalid, secure.allow_bridge) == (False, False)
    assert (secure.max_connect_size, secure.maxconn) == (1024 * 1024, 100)
    assert secure.timeout_client == ClientTimeout(False, 120.0, 45.0, 600.0)
    assert secure.tls == FrontendTLSConfig(cert=os.path.abspath("server.pem"), alpn=("mqtt",))

    backend = config.backend_for(secure)
    assert backend == BackendConfig(
        name="emqx",
        balance="consistent",
        hash_key="username",
        hash_balance_factor=1.25,
        stick=StickConfig("username", 5000, 3600.0),
        send_proxy="v2",
        retries=5,
        redispatch=False,
        all_backups=True,
        timeout_connect=1.0,
        timeout_server=300.0,
        servers=(
            ServerConfig("emqx1", "192.168.0.2", 1883, weight=5, maxconn=300),
            ServerConfig("emqx2", "fd00::3", 1883, backup=True),
        ),
    )
    stats = config.stats
    assert stats is not None
    assert (stats.bind_host, stats.bind_port, stats.uri, stats.refresh) == (
        "127.0.0.1",
        8888,
        "/haproxy",
        5.0,
    )
    assert (stats.auth_user, stats.auth_password_env) == ("admin", "PATH")


def test_defaults_when_sections_are_absent() -> None:
    config = load_config_text(minimal())
    assert config.path == "<string>"
    assert config.defaults.timeout_client == ClientTimeout(False, 240.0, 30.0, 3600.0)
    (frontend,) = config.frontends
    assert (frontend.protocol, frontend.inspect_delay, frontend.maxconn) == ("mqtt", 10.0, 10000)
    assert (frontend.reject_invalid, frontend.max_connect_size, frontend.tls) == (True, 65536, None)
    backend = config.backends["emqx"]
    assert (backend.balance, backend.stick, backend.retries, backend.redispatch) == (
        "roundrobin",
        None,
        3,
        True,
    )
    assert (backend.timeout_connect, backend.timeout_server) == (10.0, 240.0)
    assert backend.servers == (ServerConfig("emqx1", "192.168.0.2", 1883),)
    assert config.stats is None


def test_config_is_immutable() -> None:
    config = load_config_text(GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.global_.maxconn = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.backends["other"] = config.backends["emqx"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.frontends[1].tls.cert = "x"  # type: ignore[misc, union-attr]
    assert isinstance(config.backends, MappingProxyType)
    assert isinstance(config.frontends, tuple)


def test_frontend_overrides_only_part_of_the_auto_timeout() -> None:
    text = minimal(
        extra="""
        [defaults]
        timeout_client = "auto"
        """
    ).replace('backend = "emqx"\n', 'backend = "emqx"\ntimeout_client_max = "5m"\n', 1)
    (frontend,) = load_config_text(text).frontends
    assert frontend.timeout_client == ClientTimeout(True, 240.0, 30.0, 300.0)


def test_workers_auto_is_the_usable_cpu_count() -> None:
    config = load_config_text(minimal().replace("maxconn = 1000", 'workers = "auto"'))
    assert config.global_.workers == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("stick", "expected"),
    [
        ("true", StickConfig()),
        ("false", None),
        ('{ on = "source" }', StickConfig(on="source")),
        ('{ expire = "2h", size = 10 }', StickConfig(size=10, expire=7200.0)),
    ],
)
def test_stick_forms(stick: str, expected: StickConfig | None) -> None:
    config = load_config_text(minimal(backend=f"stick = {stick}"))
    assert config.backends["emqx"].stick == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [("70000", 70000), ('"64KiB"', 65536), ('"64KB"', 64000), ('"2MiB"', 2 * 1024 * 1024)],
)
def test_sizes(size: str, expected: int) -> None:
    text = minimal().replace('backend = "emqx"\n', f'backend = "emqx"\nmax_connect_size = {size}\n')
    assert load_config_text(text).frontends[0].max_connect_size == expected


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("0.0.0.0:1883", "0.0.0.0", 1883),
        ("127.0.0.1:1883", "127.0.0.1", 1883),
        ("[::]:1883", "::", 1883),
        ("[::1]:1", "::1", 1),
        (":1883", "0.0.0.0", 1883),
        ("*:65535", "0.0.0.0", 65535),
        ("localhost:1883", "localhost", 1883),
    ],
)
def test_good_binds(bind: str, host: str, port: int) -> None:
    text = minimal().replace('"0.0.0.0:1883"', f'"{bind}"')
    frontend = load_config_text(text).frontends[0]
    assert (frontend.bind_host, frontend.bind_port) == (host, port)


# --- durations and the keepalive-derived timeout ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("10s", 10.0),
        ("250ms", 0.25),
        ("2m", 120.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 10 s ", 10.0),
        (0, 0.0),  # the same in every unit
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value, "defaults.timeout_connect") == seconds


@pytest.mark.parametrize(
    "value", ["10", "10x", "-1s", "1e3s", "", "s", True, -5, float("nan"), float("inf"), "8d", [1]]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "defaults.timeout_connect")
    (line,) = caught.value.errors
    assert line.startswith("defaults.timeout_connect: expected a duration like")
    assert "did you mean" not in line


@pytest.mark.parametrize(("value", "shown"), [(5000, "5000"), (7, "7"), (0.5, "0.5")])
def test_bare_number_duration_suggests_milliseconds(value: object, shown: str) -> None:
    """HAProxy users write `timeout connect 5000` (ms); a bare 5000 was taken as 83 minutes."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "defaults.timeout_connect")
    assert caught.value.errors == [
        'defaults.timeout_connect: expected a duration like "250ms", "10s", "30m" or "1h" '
        f'(at most "7d"), got {shown} (did you mean {shown} ms, "{shown}ms"? a bare number has '
        "no unit here)"
    ]


@pytest.mark.parametrize(
    ("keepalive", "timeout"), [(60, 90.0), (10, 45.0), (1000, 600.0), (0, 600.0), (30, 45.0)]
)
def test_auto_client_timeout_follows_keepalive(keepalive: int, timeout: float) -> None:
    auto = ClientTimeout(True, 240.0, minimum=45.0, maximum=600.0)
    assert auto.for_keepalive(keepalive) == timeout


def test_fixed_client_timeout_ignores_keepalive() -> None:
    fixed = ClientTimeout(False, 240.0)
    assert [fixed.for_keepalive(k) for k in (0, 5, 60, 65535)] == [240.0] * 4


# --- errors: file, dotted key, what was expected, every one of them -------------------------


def test_exact_message_from_the_issue() -> None:
    text = minimal(
        extra="""
        [[backend.emqx.server]]
        name = "emqx2"
        address = "192.168.0.3:1883"

        [[backend.emqx.server]]
        name = "emqx3"
        address = "192.168.0.4:1883"
        weight = "high"
        """
    )
    assert errors_of(text) == [
        'lb.toml: backend.emqx.server[2].weight: expected an integer 0..256, got "high"'
    ]


@pytest.mark.parametrize(
    ("backend", "server", "error"),
    [
        (
            "retries = 1.5",
            "",
            "backend.emqx.retries: expected an integer 0..100, got 1.5",
        ),
        ("", "weight = 300", "backend.emqx.server[0].weight: expected an integer 0..256, got 300"),
        (
            "",
            "weight = true",
            "backend.emqx.server[0].weight: expected an integer 0..256, got true",
        ),
        (
            "",
            "backup = 1",
            "backend.emqx.server[0].backup: expected a boolean (true or false), got 1",
        ),
        (
            'balance = "roundrobbin"',
            "",
            'backend.emqx.balance: expected one of "roundrobin", "leastconn", "source", '
            '"consistent", "random", got "roundrobbin" (did you mean `roundrobin`?)',
        ),
        (
            "hash_balance_factor = 1.0",
            "",
            "backend.emqx.hash_balance_factor: expected a number above 1.0 and at most 100, "
            "such as 1.25, got 1.0",
        ),
        (
            'send_proxy = "v3"',
            "",
            'backend.emqx.send_proxy: expected one of "v1", "v2", got "v3"',
        ),
        (
            'stick = "yes"',
            "",
            'backend.emqx.stick: expected true, false or a table like { on = "client_id", '
            'size = 100000, expire = "30m" }, got "yes"',
        ),
        (
            'stick = { on = "clientid" }',
            "",
            'backend.emqx.stick.on: expected one of "client_id", "username", "source", '
            'got "clientid" (did you mean `client_id`?)',
        ),
        (
            "tls = 1",
            "",
            "backend.emqx.tls: expected a table, got 1",
        ),
        (
            'timeout_server = "10x"',
            "",
            'backend.emqx.timeout_server: expected a positive duration like "250ms", "10s", '
            '"30m" or "1h" (at most "7d"), got "10x"',
        ),
        (
            'timeout_connect = "0s"',
            "",
            'backend.emqx.timeout_connect: expected a positive duration like "250ms", "10s", '
            '"30m" or "1h" (at most "7d"), got "0s"',
        ),
        (
            "",
            'name = "a/b"',
            "backend.emqx.server[0].name: expected a name of letters, digits, '_', '-', '.' "
            '(at most 64), got "a/b"',
        ),
    ],
)
def test_wrong_type_or_out_of_range(backend: str, server: str, error: str) -> None:
    if server.startswith("name"):
        text = minimal(backend=backend).replace('name = "emqx1"', server)
    else:
        text = minimal(backend=backend, server=server)
    assert errors_of(text) == [f"lb.toml: {error}"]


@pytest.mark.parametrize(
    "bind",
    [
        "1883",
        "0.0.0.0:0",
        "0.0.0.0:65536",
        "0.0.0.0:",
        "[::1:1883",
        "::1:1883",
        "[1.2.3.4]:1883",
        "999.1.1.1:1883",
        "host name:1883",
        "0.0.0.0:1883:1883",
    ],
)
def test_bad_bind(bind: str) -> None:
    text = minimal().replace('"0.0.0.0:1883"', f'"{bind}"')
    assert errors_of(text) == [
        f'lb.toml: frontend.mqtt.bind: expected an address like "0.0.0.0:1883", "127.0.0.1:1883",'
        f' "[::]:1883" or ":1883" (port 1..65535), got "{bind}"'
    ]


@pytest.mark.parametrize("address", [":1883", "emqx1", "*:1883", "emqx1:0", "-bad-:1883"])
def test_bad_server_address(address: str) -> None:
    text = minimal().replace('"192.168.0.2:1883"', f'"{address}"')
    assert errors_of(text) == [
        'lb.toml: backend.emqx.server[0].address: expected "host:port" or "[ipv6]:port" '
        f'(port 1..65535), got "{address}"'
    ]


def test_unknown_keys_suggest_the_close_one() -> None:
    text = minimal(backend="ballance = 'source'").replace("maxconn = 1000", "maxcon = 1000")
    assert errors_of(text) == [
        "lb.toml: global.maxcon: unknown key (did you mean `maxconn`?)",
        "lb.toml: backend.emqx.ballance: unknown key (did you mean `balance`?)",
    ]


def test_unknown_key_without_close_match_lists_the_valid_ones() -> None:
    (error,) = errors_of(minimal(backend="stick = { colour = 'red' }"))
    assert error == "lb.toml: backend.emqx.stick.colour: unknown key; valid keys: on, size, expire"


def test_unknown_section() -> None:
    assert errors_of(minimal(extra="[frontends.x]\n")) == [
        "lb.toml: frontends: unknown section (did you mean `frontend`?)"
    ]


def test_missing_required_keys() -> None:
    text = minimal().replace('bind = "0.0.0.0:1883"\n', "").replace('name = "emqx1"\n', "")
    assert errors_of(text) == [
        "lb.toml: frontend.mqtt.bind: missing required key",
        "lb.toml: backend.emqx.server[0].name: missing required key",
    ]


def test_missing_sections() -> None:
    assert errors_of("[global]\nmaxconn = 10\n") == [
        "lb.toml: frontend: missing: at least one [frontend.NAME] table is required",
        "lb.toml: backend: missing: at least one [backend.NAME] table is required",
    ]


def test_section_without_a_name() -> None:
    text = minimal().replace("[frontend.mqtt]", "[frontend]")
    errors = errors_of(text)
    assert errors[0] == (
        "lb.toml: frontend.bind: expected a [frontend.NAME] table (sections are named, "
        'e.g. [frontend.main]), got "0.0.0.0:1883"'
    )


def test_backend_without_servers() -> None:
    text = "[frontend.a]\nbind = ':1'\nbackend = 'b'\n[backend.b]\nbalance = 'random'\n"
    assert errors_of(text) == ["lb.toml: backend.b.server: missing required key"]


def test_unknown_backend_reference() -> None:
    text = minimal().replace('backend = "emqx"', 'backend = "emqy"')
    assert errors_of(text) == [
        "lb.toml: frontend.mqtt.backend: no [backend.emqy] section (did you mean `emqx`?)"
    ]


WS_ROUTES = """
[frontend.web]
bind = "0.0.0.0:8083"
protocol = "{protocol}"
backend = "{default}"

[[frontend.web.rule]]
action = "route"
client_id = "tenant-*"
backend = "{routed}"

[backend.bridged]
[[backend.bridged.server]]
name = "b1"
address = "192.168.0.2:1883"

[backend.passed]
ws_backend = "passthrough"
[[backend.passed.server]]
name = "p1"
address = "192.168.0.3:8083"
"""
_MIXED_WS = (
    'backend {routed} has ws_backend = "{mode}" but the frontend\'s backend {default} has '
    '"{other}": a WebSocket frontend answers the upgrade (bridging it or passing it through) '
    "before rules read the CONNECT, so every backend it routes to must share its ws_backend"
)


@pytest.mark.parametrize(
    ("protocol", "default", "routed", "error"),
    [
        (
            "ws",
            "bridged",
            "passed",
            _MIXED_WS.format(
                routed="passed", mode="passthrough", default="bridged", other="bridge"
            ),
        ),
        (
            "ws",
            "passed",
            "bridged",
            _MIXED_WS.format(
                routed="bridged", mode="bridge", default="passed", other="passthrough"
            ),
        ),
        (
            "mqtt",
            "bridged",
            "passed",
            'backend passed has ws_backend = "passthrough": needs protocol = "ws"',
        ),
        ("ws", "passed", "passed", None),
        ("ws", "bridged", "bridged", None),
    ],
)
def test_route_rules_keep_the_websocket_mode_of_the_frontend(
    protocol: str, default: str, routed: str, error: str | None
) -> None:
    text = WS_ROUTES.format(protocol=protocol, default=default, routed=routed)
    if error is None:
        load_config_text(text, "lb.toml")
    else:
        assert errors_of(text) == [f"lb.toml: frontend.web.rule[0].backend: {error}"]


def test_duplicate_server_names() -> None:
    text = minimal(
        extra="""
        [[backend.emqx.server]]
        name = "emqx2"
        address = "192.168.0.3:1883"

        [[backend.emqx.server]]
        name = "emqx1"
        address = "192.168.0.4:1883"
        """
    )
    assert errors_of(text) == [
        'lb.toml: backend.emqx.server[2].name: duplicate server name "emqx1" (also server[0])'
    ]


def test_client_timeout_bounds_must_be_ordered() -> None:
    extra = '[defaults]\ntimeout_client = "auto"\ntimeout_client_min = "2h"\n'
    assert errors_of(minimal(extra=extra)) == [
        "lb.toml: defaults.timeout_client_min: is above timeout_client_max (3600s)"
    ]


def test_toml_syntax_error_gives_line_and_column() -> None:
    text = '[global]\nmaxconn = 10\nlog_level = "info\n'
    (error,) = errors_of(text)
    assert error.startswith("lb.toml:3:")
    assert "TOML syntax error" in error
    (twice,) = errors_of("[global]\n[global]\n")
    assert twice == "lb.toml:2:8: TOML syntax error: Cannot declare ('global',) twice"


def test_toml_error_at_end_of_document_points_at_the_end() -> None:
    assert errors_of("[global]\nmaxconn = ") == ["lb.toml:2:11: TOML syntax error: Invalid value"]


def test_every_error_is_collected() -> None:
    text = minimal(backend='balance = "fast"', server="weight = 257").replace(
        "maxconn = 1000", 'maxconn = -1\nlog_level = "loud"'
    )
    text += '\n[stats]\nbind = "nowhere"\nrefresh = "never"\n'
    paths = [error.split(": ")[1] for error in errors_of(text)]
    assert paths == [
        "global.maxconn",
        "global.log_level",
        "backend.emqx.balance",
        "backend.emqx.server[0].weight",
        "stats.bind",
        "stats.refresh",
    ]


def test_quoted_names_appear_quoted_in_paths() -> None:
    text = minimal().replace("[frontend.mqtt]", '[frontend."a b"]')
    (error,) = errors_of(text)
    assert error.startswith('lb.toml: frontend."a b": section name: expected a name of')


# --- warnings: the recipe's traps -------------------------------------------------------------


def test_short_client_timeout_warns() -> None:
    (warning,) = warnings_of(minimal(extra='[defaults]\ntimeout_client = "60s"\n'))
    assert warning.startswith(
        "lb.toml: defaults.timeout_client: 60s is shorter than 1.5 x a typical 60s MQTT keepalive"
    )
    assert warnings_of(minimal(extra='[defaults]\ntimeout_client = "90s"\n')) == ()


def test_sticky_backend_behind_tcp_frontend_warns() -> None:
    text = minimal(backend="stick = true").replace(
        'backend = "emqx"', 'backend = "emqx"\nprotocol = "tcp"'
    )
    assert warnings_of(text) == (
        'lb.toml: frontend.mqtt.protocol: protocol = "tcp" reads no CONNECT, '
        "but backend emqx sticks on client_id",
    )
    on_source = text.replace("stick = true", 'stick = { on = "source" }')
    assert warnings_of(on_source) == ()


def test_consistent_hash_on_client_id_behind_tcp_frontend_warns() -> None:
    text = minimal(backend='balance = "consistent"').replace(
        'backend = "emqx"', 'backend = "emqx"\nprotocol = "tcp"'
    )
    (warning,) = warnings_of(text)
    assert warning.endswith("but backend emqx hashes on client_id")


def test_mqtt_only_keys_on_a_tcp_frontend_warn() -> None:
    text = minimal().replace(
        'backend = "emqx"', 'backend = "emqx"\nprotocol = "tcp"\ninspect_delay = "5s"'
    )
    assert warnings_of(text) == (
        'lb.toml: frontend.mqtt.inspect_delay: has no effect unless protocol = "mqtt"',
    )


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("0.0.0.0:1883", "0.0.0.0:1883", True),
        (":1883", "127.0.0.1:1883", True),
        ("127.0.0.1:1883", "0.0.0.0:1883", True),
        ("[::]:1883", "[::1]:1883", True),
        ("127.0.0.1:1883", "127.0.0.2:1883", False),
        ("0.0.0.0:1883", "0.0.0.0:1884", False),
        ("[::]:1883", "127.0.0.1:1883", True),  # dual-stack: [::] takes IPv4 too
        ("[::1]:1883", "127.0.0.1:1883", False),
        ("[::1]:1883", "0.0.0.0:1883", False),
    ],
)
def test_overlapping_binds_are_errors(first: str, second: str, overlap: bool) -> None:
    """`serve` cannot bind both (checked in test_overlapping_binds_cannot_both_listen)."""
    text = minimal().replace('"0.0.0.0:1883"', f'"{first}"')
    text += f'\n[frontend.other]\nbind = "{second}"\nbackend = "emqx"\n'
    if not overlap:
        assert warnings_of(text) == ()
        return
    (error,) = errors_of(text)
    assert error.startswith("lb.toml: frontend.other.bind: ")
    assert "overlaps frontend.mqtt.bind" in error and error.endswith(": only one can listen there")


def test_overlapping_binds_cannot_both_listen() -> None:
    """What the check above prevents: the second listener of each pair fails to bind."""
    for first, second in [("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("::", "::1")]:
        with open_listener(first, 0, False, 8) as one:
            port = one.getsockname()[1]
            with pytest.raises(OSError, match="in use"):
                open_listener(second, port, False, 8).close()


def test_stats_bind_clashing_with_a_frontend_is_an_error() -> None:
    text = minimal(extra='[stats]\nbind = "0.0.0.0:1883"\n')
    assert errors_of(text) == [
        "lb.toml: stats.bind: 0.0.0.0:1883 overlaps frontend.mqtt.bind (0.0.0.0:1883): only one "
        "can listen there",
    ]


@pytest.mark.parametrize(
    "backend",
    [
        'stick = { on = "client_id" }',
        'stick = { on = "source" }',
        'balance = "consistent"\nhash_key = "username"\nstick = { on = "client_id" }',
    ],
)
def test_workers_share_the_stick_tables_so_check_has_nothing_to_warn(backend: str) -> None:
    """The tables are in shared memory (docs/stick-table.md): a client sticks whichever worker
    it reaches, so several workers with stick tables are no reason for a warning any more."""
    text = minimal(backend=backend).replace("1000", "1000\nworkers = 2", 1)
    assert warnings_of(text) == ()


def test_weight_zero_takes_no_new_clients_as_in_the_admin_api() -> None:
    """One rule with POST /api/servers (HAProxy's too): 0..256, 0 = no new connections."""
    config = load_config_text(minimal(server="weight = 0") + SECOND_SERVER)
    assert [s.weight for s in config.backends["emqx"].servers] == [0, 1]
    assert config.warnings == ()
    assert stats_http.MAX_WEIGHT == MAX_WEIGHT == 256
    assert warnings_of(minimal(server="weight = 0")) == (
        "lb.toml: backend.emqx.server: every server has weight 0: no new client gets in",
    )


def test_hash_keys_without_consistent_balance_warn() -> None:
    text = minimal(backend='hash_key = "username"\nhash_balance_factor = 1.5')
    assert warnings_of(text) == (
        'lb.toml: backend.emqx.hash_key: has no effect unless balance = "consistent"',
        'lb.toml: backend.emqx.hash_balance_factor: has no effect unless balance = "consistent"',
    )


def test_auto_bounds_without_auto_warn() -> None:
    text = minimal(extra='[defaults]\ntimeout_client_max = "5m"\n')
    assert warnings_of(text) == (
        'lb.toml: defaults.timeout_client_max: has no effect unless timeout_client = "auto"',
    )


def test_all_backup_servers_warn() -> None:
    (warning,) = warnings_of(minimal(server="backup = true"))
    assert warning == "lb.toml: backend.emqx.server: every server is a backup: there is no primary"


def test_unset_password_env_warns() -> None:
    extra = '[stats]\nbind = "127.0.0.1:8888"\nauth = { user = "a", password_env = "NOPE_X1" }\n'
    assert warnings_of(minimal(extra=extra)) == (
        "lb.toml: stats.auth.password_env: environment variable NOPE_X1 is not set here",
    )


# --- files ------------------------------------------------------------------------------------


def test_load_config_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.path == str(path)


def test_validate_returns_errors_instead_of_raising(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(minimal(server="weight = -1"))
    config, errors, warnings = validate(path)
    assert config is None
    assert errors == [f"{path}: backend.emqx.server[0].weight: expected an integer 0..256, got -1"]
    assert warnings == []


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert validate(missing) == (None, [f"{missing}: cannot read: No such file or directory"], [])
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n")
    assert validate(latin1)[1] == [f"{latin1}: not UTF-8 text (byte 5)"]
    with pytest.raises(ConfigError):
        load_config(missing)


def test_example_is_the_recipe() -> None:
    config = load_config(EXAMPLE)
    assert config.global_.maxconn == 1900  # fits 4096 open files (test_example_passes_cleanly)
    d = config.defaults
    assert (d.timeout_connect, d.timeout_client, d.timeout_server) == (
        10.0,
        ClientTimeout(False, 240.0),
        240.0,
    )
    (frontend,) = config.frontends
    assert (frontend.bind_host, frontend.bind_port, frontend.protocol) == ("0.0.0.0", 1883, "mqtt")
    assert (frontend.inspect_delay, frontend.reject_invalid) == (10.0, True)
    backend = config.backend_for(frontend)
    assert backend.balance == "roundrobin"
    assert backend.stick == StickConfig("client_id", 100000, 1800.0)
    assert backend.servers == tuple(
        ServerConfig(f"emqx{i}", f"192.168.0.{i + 1}", 1883) for i in (1, 2, 3)
    )


# --- properties -------------------------------------------------------------------------------

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@given(st.integers(0, 10_000), st.sampled_from(sorted(UNITS)))
def test_duration_strings_scale_by_their_unit(number: int, unit: str) -> None:
    seconds = number * UNITS[unit]
    if seconds <= 7 * 86400:
        assert parse_duration(f"{number}{unit}", "k") == pytest.approx(seconds)
    else:
        with pytest.raises(ConfigError):
            parse_duration(f"{number}{unit}", "k")


@given(st.integers(0, 65535), st.floats(1, 3600), st.floats(1, 3600))
def test_auto_timeout_stays_within_its_bounds(keepalive: int, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    timeout = ClientTimeout(True, 240.0, low, high).for_keepalive(keepalive)
    assert low <= timeout <= high


SECTIONS = [
    "[global]",
    "[defaults]",
    "[frontend.f]",
    "[backend.b]",
    "[[backend.b.server]]",
    "[stats]",
    "[backend.b.stick]",
    "[frontend.f.tls]",
    "[oops]",
]
KEYS = sorted(
    {"bind", "backend", "address", "name", "server", "stick", "on", "auth", "x"}
    | {key for table in (GLOBAL_KEYS, DEFAULTS_KEYS, FRONTEND_KEYS, BACKEND_KEYS) for key in table}
)
# TOML literals, right and wrong for most keys
VALUES = [
    "1",
    "-1",
    "0",
    "300",
    "1.5",
    "nan",
    "true",
    '"x"',
    '"auto"',
    '"10s"',
    '"0s"',
    '"64KiB"',
    '":1883"',
    '"[::1]:1"',
    '"b"',
    '"f"',
    '[1, "a"]',
    "{ a = 1 }",
    '{ on = "source" }',
    '"consistent"',
    '"tcp"',
    "1979-05-27",
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(SECTIONS),
            st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=6),
        ),
        max_size=6,
    )
)
def test_any_document_gives_a_config_or_config_errors(sections: list) -> None:
    """Whatever the keys and values, loading ends in a Config or a ConfigError, never a crash."""
    text = "\n".join(
        header + "\n" + "".join(f"{k} = {v}\n" for k, v in body.items())
        for header, body in sections
    )
    try:
        config = load_config_text(text, "lb.toml")
    except ConfigError as error:
        assert error.errors
        assert all(line.startswith("lb.toml") for line in error.errors)
    else:
        assert config.frontends and config.backends


# --- the shared stick table's keys ------------------------------------------------------------


def test_stick_dir_is_an_absolute_directory(tmp_path: Path) -> None:
    text = minimal().replace("maxconn = 1000", f'maxconn = 1000\nstick_dir = "{tmp_path}/x/"')
    assert load_config_text(text).global_.stick_dir == f"{tmp_path}/x"
    assert load_config_text(minimal()).global_.stick_dir is None
    assert errors_of(minimal().replace("maxconn = 1000", 'stick_dir = "sticks"')) == [
        'lb.toml: global.stick_dir: expected an absolute directory path like "/dev/shm/fastmqtt",'
        ' got "sticks"'
    ]
    (tmp_path / "file").write_text("")
    text = minimal().replace("maxconn = 1000", f'stick_dir = "{tmp_path}/file"')
    assert errors_of(text) == [
        f'lb.toml: global.stick_dir: "{tmp_path}/file" exists and is not a directory'
    ]


def test_two_servers_whose_stick_ids_collide_are_refused() -> None:
    from fastmqtt.balance import server_id

    assert server_id("node342") == server_id("node32734")  # found by search, 32-bit ids
    text = minimal(backend="stick = true").replace('name = "emqx1"', 'name = "node342"') + (
        '[[backend.emqx.server]]\nname = "node32734"\naddress = "192.168.0.3:1883"\n'
    )
    assert errors_of(text) == [
        "lb.toml: backend.emqx.server: servers node342 and node32734 hash to the same stick "
        "table id: rename one"
    ]
    assert load_config_text(text.replace("stick = true", "stick = false"))  # no table, no issue


# --- [backend.NAME.rebalance]-----------------------------------------------------------------


def test_rebalance_table_and_its_defaults() -> None:
    config = load_config_text(minimal(), "lb.toml")
    assert config.backends["emqx"].rebalance == RebalanceConfig()
    text = (
        'rebalance = { rate = "3000/m", tolerance = 0.2, only_clean_sessions = true, '
        "reason = 0x8B, automatic = true }\n"
    )
    rebalance = load_config_text(minimal(backend=text), "lb.toml").backends["emqx"].rebalance
    assert rebalance == RebalanceConfig(50, 0.2, True, 0x8B, True)


RATE = 'expected whole clients per second 1..100000, such as 50 or "50/s"'


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("rate = 0", f"rate: {RATE}, got 0"),
        ('rate = "7/m"', f'rate: {RATE}, got "7/m"'),
        ("tolerance = 1.5", "tolerance: expected a fraction above 0 and below 1, such as 0.1 "
         "(+-10%), got 1.5"),
        ("reason = 0x98", "reason: expected 0x9C (use another server) or 0x8B (server shutting "
         "down), got 152"),
        ("only_clean_sessions = 1", "only_clean_sessions: expected a boolean (true or false), "
         "got 1"),
    ],
)  # fmt: skip
def test_rebalance_errors_name_the_key(line: str, error: str) -> None:
    expected = f"lb.toml: backend.emqx.rebalance.{error}"
    assert errors_of(minimal(backend=f"rebalance = {{ {line} }}\n")) == [expected]
