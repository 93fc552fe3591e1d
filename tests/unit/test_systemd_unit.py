"""contrib/fastmqtt.service: systemd itself must accept it, and it must say what ops rely on."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

UNIT = pathlib.Path(__file__).parents[2] / "contrib" / "fastmqtt.service"
INSTALLED = "/usr/local/bin/fastmqtt"


def _verify(unit_text: str, tmp_path: pathlib.Path) -> str:
    """`systemd-analyze verify` output; empty means systemd has nothing to say about the unit.

    verify insists that every Exec path exists, so the install path is pointed at this
    environment's `fastmqtt` for the check.
    """
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: `apt-get install systemd`"
    fastmqtt = shutil.which("fastmqtt") or str(pathlib.Path(sys.executable).with_name("fastmqtt"))
    unit = tmp_path / "fastmqtt.service"
    unit.write_text(unit_text.replace(INSTALLED, fastmqtt))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    status = f"exit {done.returncode}" if done.returncode else ""
    return (done.stdout + done.stderr + status).strip()


def _settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_accepts_the_unit(tmp_path):
    assert _verify(UNIT.read_text(), tmp_path) == ""


def test_verify_does_catch_mistakes(tmp_path):
    """The check above can fail: a misspelled type and key are reported."""
    broken = UNIT.read_text().replace("Type=notify", "Type=notfy\nLimitNOFILES=1")
    report = _verify(broken, tmp_path)
    assert "notfy" in report
    assert "LimitNOFILES" in report


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("ExecStart", f"{INSTALLED} serve /etc/fastmqtt/lb.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("User", "fastmqtt"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("LimitNOFILE", "1048576"),
        ("NoNewPrivileges", "yes"),
    ],
)
def test_the_unit_sets(key, value):
    assert value in _settings()[key]
