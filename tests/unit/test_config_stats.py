"""The [stats] keys of the observability pack: the Unix socket, metrics without auth, TLS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.unit.test_config import errors_of, minimal, warnings_of

from fastmqtt.config import FrontendTLSConfig, StatsSocketConfig, load_config_text, validate

AUTH = 'auth = { user = "ops", password_env = "PATH" }\n'


def stats_of(extra: str):
    config = load_config_text(minimal(extra="[stats]\n" + extra), "lb.toml")
    assert config.warnings == ()
    return config.stats


def test_every_new_key_typed() -> None:
    stats = stats_of(
        'bind = "127.0.0.1:8888"\nmetrics_auth = false\n' + AUTH + "socket = { "
        'path = "/run/fastmqtt/admin.sock", mode = "0660", user = "root", group = 0 }\n'
        '[stats.tls]\ncert = "/etc/fastmqtt/stats.pem"\nca = "/etc/ca.pem"\nverify = "required"\n'
    )
    assert stats.metrics_auth is False
    assert stats.socket == StatsSocketConfig("/run/fastmqtt/admin.sock", 0o660, "root", 0)
    assert stats.tls == FrontendTLSConfig(
        cert="/etc/fastmqtt/stats.pem", ca="/etc/ca.pem", verify="required"
    )


def test_socket_alone_is_enough_and_defaults_to_mode_600() -> None:
    stats = stats_of('socket = "/run/fastmqtt.sock"\n')
    assert (stats.bind_host, stats.socket) == (None, StatsSocketConfig("/run/fastmqtt.sock"))
    assert stats.socket.mode == 0o600 and stats.metrics_auth is True and stats.tls is None


def test_a_relative_socket_path_is_beside_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(minimal(extra='[stats]\nsocket = "run/admin.sock"\n'))
    config, errors, _ = validate(path)
    assert errors == [] and config is not None and config.stats is not None
    assert config.stats.socket == StatsSocketConfig(str(tmp_path / "run" / "admin.sock"))


@pytest.mark.parametrize(
    ("stats", "error"),
    [
        (
            'socket = { path = "/s", mode = 600 }',
            'stats.socket.mode: expected a file mode as a string of octal digits like "600" or '
            '"0660", got 600',
        ),
        ('socket = { path = "/s", mode = "rw-------" }', "stats.socket.mode: expected a file mode"),
        ('socket = { path = "/s", mode = "4755" }', "stats.socket.mode: expected a file mode"),
        (
            'socket = { path = "/s", user = true }',
            "stats.socket.user: expected a user or group name, or a numeric id, got true",
        ),
        ('socket = { path = "/s", group = -1 }', "stats.socket.group: expected a user or group"),
        ('socket = { mode = "600" }', "stats.socket.path: missing required key"),
        ('socket = { path = "/s", owner = "x" }', "stats.socket.owner: unknown key"),
        (
            "socket = 5",
            'stats.socket: expected "/run/fastmqtt/admin.sock" or a table like '
            '{ path = "...", mode = "660" }, got 5',
        ),
        (
            f'socket = "/{"x" * 107}"',
            f"stats.socket.path: /{'x' * 107} is longer than a Unix socket path may be (107 bytes)",
        ),
        (
            'uri = "/s"',
            "stats: needs `bind` (an address for HTTP), `socket` (a Unix socket path), or both",
        ),
        ('bind = ":8888"\nmetrics_auth = "no"', "stats.metrics_auth: expected a boolean"),
        ('bind = ":8888"\ntls = { key = "k.pem" }', "stats.tls.cert: missing required key"),
        (
            'bind = ":8888"\ntls = { cert = "c.pem", verify = "required" }',
            'stats.tls.verify: "required" needs `ca`',
        ),
    ],
)
def test_precise_errors(stats: str, error: str) -> None:
    (got,) = errors_of(minimal(extra=f"[stats]\n{stats}\n"))
    assert got.startswith(f"lb.toml: {error}"), got


@pytest.mark.parametrize(
    ("stats", "warning"),
    [
        (
            'bind = ":8888"\nmetrics_auth = false',
            "stats.metrics_auth: has no effect unless auth is set",
        ),
        (
            'socket = "/s"\ntls = { cert = "c.pem" }',
            "stats.tls: has no effect unless bind is set (TLS is for HTTP)",
        ),
        (
            'socket = { path = "/s", user = "no-such-user-x1" }',
            'stats.socket.user: no user "no-such-user-x1" on this machine',
        ),
        (
            'socket = { path = "/s", group = "no-such-group-x1" }',
            'stats.socket.group: no group "no-such-group-x1" on this machine',
        ),
    ],
)
def test_warnings(stats: str, warning: str) -> None:
    assert warnings_of(minimal(extra=f"[stats]\n{stats}\n")) == (f"lb.toml: {warning}",)


def test_the_socket_path_is_not_a_bind_that_can_clash() -> None:
    text = minimal(extra='[stats]\nsocket = "/s"\n')
    assert warnings_of(text) == () and os.path.isabs(load_config_text(text).stats.socket.path)
