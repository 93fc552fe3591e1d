"""`fastmqtt check` as a user runs it: a real subprocess on real files, exit code and output."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from fastmqtt._accel import NO_EXTENSIONS

REPO = Path(__file__).resolve().parents[2]
# what `check` says of a frontend the engine can serve (compiled) or of every one (not)
OFF = "compiled extensions are off" if NO_EXTENSIONS else ""
FAST = f"event-loop path ({OFF})" if NO_EXTENSIONS else "fast path"

GOOD = """
[global]
maxconn = 1000

[frontend.mqtt]
bind = "0.0.0.0:1883"
backend = "emqx"

[backend.emqx]
stick = { on = "client_id", size = 100000, expire = "30m" }

[[backend.emqx.server]]
name = "emqx1"
address = "192.168.0.2:1883"

[[backend.emqx.server]]
name = "emqx2"
address = "192.168.0.3:1883"

[[backend.emqx.server]]
name = "emqx3"
address = "192.168.0.4:1883"
"""


def check(*args: str, cwd: Path, open_files: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m fastmqtt check ARGS`; optionally under a lower RLIMIT_NOFILE."""

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    return subprocess.run(
        [sys.executable, "-m", "fastmqtt", "check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_files,
    )


def write(tmp_path: Path, text: str) -> str:
    (tmp_path / "lb.toml").write_text(text)
    return "lb.toml"


def test_example_passes_cleanly() -> None:
    """Even where a process may open only 4096 files (a common default hard limit)."""
    result = check("examples/lb.toml", cwd=REPO, open_files=4096)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "examples/lb.toml: OK: 1 frontend, 1 backend, 3 servers (warnings: 0)\n"
        f"  frontend mqtt: {FAST}\n"
    )


def test_good_config_one_line_summary(tmp_path: Path) -> None:
    result = check(write(tmp_path, GOOD), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"lb.toml: OK: 1 frontend, 1 backend, 3 servers (warnings: 0)\n  frontend mqtt: {FAST}\n"
    )


def test_summary_says_which_frontends_stay_on_the_event_loop(tmp_path: Path) -> None:
    text = GOOD + (
        '\n[frontend.web]\nbind = "127.0.0.1:8083"\nbackend = "emqx"\nprotocol = "ws"\n'
        '\n[frontend.plain]\nbind = "127.0.0.1:1884"\nbackend = "emqx"\nfast_path = false\n'
    )
    result = check(write(tmp_path, text), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        f"  frontend mqtt: {FAST}",
        "  frontend web: event-loop path (" + (OFF or 'protocol = "ws"') + ")",
        f"  frontend plain: event-loop path ({OFF or 'fast_path = false'})",
    ]


def test_bad_config_prints_every_error_and_exits_1(tmp_path: Path) -> None:
    text = GOOD.replace(
        'address = "192.168.0.4:1883"', 'address = "192.168.0.4:1883"\nweight = "high"'
    )
    text = text.replace('name = "emqx2"', 'name = "emqx1"').replace("maxconn = 1000", "maxconn = 0")
    result = check(write(tmp_path, text), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "lb.toml: global.maxconn: expected an integer 1..10000000, got 0",
        'lb.toml: backend.emqx.server[2].weight: expected an integer 0..256, got "high"',
        'lb.toml: backend.emqx.server[1].name: duplicate server name "emqx1" (also server[0])',
    ]


def test_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    result = check(write(tmp_path, GOOD.replace("bind =", "bnd =")), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "lb.toml: frontend.mqtt.bnd: unknown key (did you mean `bind`?)",
        "lb.toml: frontend.mqtt.bind: missing required key",
    ]


def test_unknown_backend_is_an_error(tmp_path: Path) -> None:
    result = check(
        write(tmp_path, GOOD.replace('backend = "emqx"', 'backend = "mqtt"')), cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr == "lb.toml: frontend.mqtt.backend: no [backend.mqtt] section\n"


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    result = check(
        write(tmp_path, GOOD.replace("maxconn = 1000", "maxconn = = 1000")), cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr == "lb.toml:3:11: TOML syntax error: Invalid value\n"


def test_missing_file(tmp_path: Path) -> None:
    result = check("absent.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "absent.toml: cannot read: No such file or directory\n"


def test_warnings_go_to_stderr_and_do_not_fail(tmp_path: Path) -> None:
    text = (
        GOOD + '\n[frontend.plain]\nbind = "127.0.0.1:1884"\nprotocol = "tcp"\nbackend = "emqx"\n'
    )
    result = check(
        write(tmp_path, text.replace("maxconn = 1000", "maxconn = 1000\nworkers = 2")), cwd=tmp_path
    )
    assert result.returncode == 0
    assert (
        result.stdout.splitlines()[0]
        == "lb.toml: OK: 2 frontends, 1 backend, 3 servers (warnings: 1)"
    )
    assert result.stderr.splitlines() == [
        'warning: lb.toml: frontend.plain.protocol: protocol = "tcp" reads no CONNECT, '
        "but backend emqx sticks on client_id",
    ]


def test_a_frontend_and_stats_on_one_address_is_an_error(tmp_path: Path) -> None:
    text = GOOD + '\n[stats]\nbind = "127.0.0.1:1883"\n'
    result = check(write(tmp_path, text), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "lb.toml: stats.bind: 127.0.0.1:1883 overlaps frontend.mqtt.bind (0.0.0.0:1883): "
        "only one can listen there\n"
    )


def test_several_files_each_checked(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD.replace('backend = "emqx"', 'backend = "nope"'))
    (tmp_path / "c.toml").write_text(GOOD.replace("maxconn = 1000", "maxconn = 999"))
    result = check("a.toml", "b.toml", "c.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "a.toml: OK: 1 frontend, 1 backend, 3 servers (warnings: 0)",
        f"  frontend mqtt: {FAST}",
        "c.toml: OK: 1 frontend, 1 backend, 3 servers (warnings: 0)",
        f"  frontend mqtt: {FAST}",
    ]
    assert result.stderr == "b.toml: frontend.mqtt.backend: no [backend.nope] section\n"
    assert check("a.toml", "c.toml", cwd=tmp_path).returncode == 0


def test_bare_number_duration_asks_for_a_unit(tmp_path: Path) -> None:
    text = GOOD.replace("[frontend.mqtt]", "[defaults]\ntimeout_connect = 5000\n\n[frontend.mqtt]")
    result = check(write(tmp_path, text), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        'lb.toml: defaults.timeout_connect: expected a positive duration like "250ms", "10s", '
        '"30m" or "1h" (at most "7d"), got 5000 (did you mean 5000 ms, "5000ms"? a bare number '
        "has no unit here)\n"
    )


def test_an_haproxy_config_gets_pointed_at_convert(tmp_path: Path) -> None:
    haproxy = "global\n    maxconn 100\n\nfrontend mqtt\n    bind :1883\n"
    for name in ("haproxy.cfg", "lb.toml"):
        (tmp_path / name).write_text(haproxy)
        result = check(name, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith(f"{name}:1:7: TOML syntax error: ")
        assert result.stderr.endswith(
            f"(an HAProxy config? translate it: fastmqtt convert {name} > lb.toml)\n"
        )
    (tmp_path / "bad.toml").write_text("[global]\nmaxconn = = 1\n")
    assert "convert" not in check("bad.toml", cwd=tmp_path).stderr


def test_quiet_prints_only_errors(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"0.0.0.0:1883"', '"127.0.0.1:1883"') + "[frontend.b]\n")
    quiet_bad = check("--quiet", path, cwd=tmp_path)
    assert quiet_bad.returncode == 1
    assert quiet_bad.stderr.startswith("lb.toml: frontend.b.bind: missing required key\n")
    write(tmp_path, GOOD.replace('name = "emqx1"', 'name = "emqx1"\nbackup = true'))
    quiet_good = check("-q", path, cwd=tmp_path)
    assert (quiet_good.returncode, quiet_good.stdout, quiet_good.stderr) == (0, "", "")


def test_maxconn_beyond_the_open_file_limit_warns(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)  # maxconn 1000: 2100 fds
    low = check(path, cwd=tmp_path, open_files=1024)
    assert low.returncode == 0
    assert low.stderr == (
        "warning: lb.toml: global.maxconn: 1000 connections (the lower of global.maxconn and "
        "the frontends' total maxconn) need about 2100 open files "
        "(2 per connection + 100 spare), but this process may open at most 1024 "
        "(RLIMIT_NOFILE hard limit; soft 1024): lower maxconn to 462 or raise the limit\n"
    )
    assert low.stdout.splitlines()[0].endswith("(warnings: 1)")
    enough = check(path, cwd=tmp_path, open_files=4096)
    assert (enough.returncode, enough.stderr) == (0, "")
