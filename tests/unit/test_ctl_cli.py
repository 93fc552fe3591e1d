"""`fastmqtt ctl` mistakes answered with one line and exit 2, before any request is sent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastmqtt.tools.brokers import free_port


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastmqtt", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_unset_password_variable_is_named() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FASTMQTT_STATS_PASSWORD"}
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the check comes first
    done = ctl("--url", url, "--user", "ops", "show", env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "fastmqtt ctl: --user ops: the password variable FASTMQTT_STATS_PASSWORD is not set "
        "(export it, or name another with --password-env)\n"
    )


@pytest.mark.parametrize("url", ["/some/path", "127.0.0.1:8888", "ftp://host/", "http://"])
def test_url_without_scheme_or_host_is_one_error_line(url: str) -> None:
    done = ctl("--url", url, "show")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"fastmqtt ctl: --url {url}: expected http://HOST:PORT, the [stats] listener\n"
    )
