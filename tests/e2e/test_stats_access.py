"""Who may reach the stats listener of a real `fastmqtt serve`: /metrics without auth for
scrapers, the admin API on a Unix socket guarded by its file mode and owner, HTTPS."""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmqtt.stats.http import REQUEST_DEADLINE
from fastmqtt.tools.brokers import free_port, wait_for_port
from tests.support.certs import make_certs
from tests.support.lb import closed_by_peer, lb_port, raw_connect, recipe, wait_until
from tests.support.stats import Stats

pytestmark = pytest.mark.e2e

PASSWORD = "scr4pe-pw"
SYSTEM_PYTHON = "/usr/bin/python3"  # runs as another user (the test's Python is under /root)


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastmqtt", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_metrics_can_be_open_while_everything_else_keeps_auth(brokers, fastmqtt):
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    stats = (
        f'\n[stats]\nbind = "127.0.0.1:{stats_port}"\nmetrics_auth = false\n'
        'auth = { user = "ops", password_env = "STATS_PW" }\n'
    )
    fastmqtt(recipe(nodes, port) + stats, port=port, env={"STATS_PW": PASSWORD})
    anonymous, admin = Stats(stats_port), Stats(stats_port, "ops", PASSWORD)
    status, text = anonymous.request("/metrics")
    assert status == 200 and "fastmqtt_build_info" in text
    for path in ("/stats", "/stats;csv", "/stats.json", "/api/servers"):
        assert anonymous.request(path)[0] == 401, path
        assert admin.request(path)[0] == 200, path
    assert anonymous.request("/api/servers/cluster/node1", {"state": "drain"})[0] == 401
    assert anonymous.request("/api/reload", {}, method="POST")[0] == 401
    assert admin.state("node1") == "UP"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory other users may pass through, so only the socket's own mode decides."""
    path = Path(tempfile.mkdtemp(prefix="fastmqtt-sock-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _connect_as_nobody(path: Path) -> str:
    """Connect to the socket as user nobody; "connected" or the error's name."""
    nobody = pwd.getpwnam("nobody")

    def become_nobody() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1]); print('connected')\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
    )
    done = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", probe, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=become_nobody,
        env={},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_admin_api_on_a_unix_socket_guarded_by_its_mode(brokers, fastmqtt, socket_dir):
    nodes = brokers(2)
    port, path = lb_port(), socket_dir / "admin.sock"
    stats = f'\n[stats]\nsocket = "{path}"\n'  # no HTTP listener, no auth: the file decides
    lb = fastmqtt(recipe(nodes, port) + stats, port=port)
    assert wait_until(path.exists)
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()

    done = ctl("--socket", str(path), "drain", "cluster/node1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "DRAIN"
    assert f"set to drain by admin API (uid {os.getuid()} pid " in lb.logs()
    assert f" on {path})" in lb.logs()
    shown = json.loads(ctl("--socket", str(path), "show").stdout)
    assert {row["svname"]: row["state"] for row in shown} == {"node1": "DRAIN", "node2": "UP"}
    reloaded = ctl("--socket", str(path), "reload")
    assert reloaded.returncode == 0 and json.loads(reloaded.stdout)["reloaded"]

    assert _connect_as_nobody(path) == "PermissionError"  # mode 600, owned by us
    path.chmod(0o666)
    assert _connect_as_nobody(path) == "connected"  # so it was the mode that refused

    lb.signal(signal.SIGTERM)
    assert lb.proc.wait(timeout=15) == 0
    assert not path.exists()  # removed on exit


def test_socket_mode_and_owner_are_configurable(brokers, fastmqtt, socket_dir):
    nodes = brokers(1)
    port, path = lb_port(), socket_dir / "admin.sock"
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    stats = (
        f'\n[stats]\nsocket = {{ path = "{path}", mode = "660", user = "nobody", '
        f'group = "{group}" }}\n'
    )
    fastmqtt(recipe(nodes, port) + stats, port=port)
    assert wait_until(path.exists)
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (pwd.getpwnam("nobody").pw_uid, grp.getgrnam(group).gr_gid)
    assert _connect_as_nobody(path) == "connected"


def test_a_stale_socket_is_replaced_and_a_live_one_or_a_file_is_not(brokers, fastmqtt, socket_dir):
    nodes = brokers(1)
    path = socket_dir / "admin.sock"
    stats = f'\n[stats]\nsocket = "{path}"\n'

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # what a killed process leaves behind
    port = lb_port()
    lb = fastmqtt(recipe(nodes, port) + stats, port=port)
    assert ctl("--socket", str(path), "show").returncode == 0
    lb.stop()

    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        port = lb_port()
        lb = fastmqtt(recipe(nodes, port) + stats)
        assert lb.proc.wait(timeout=15) == 1
        assert f"stats.socket: {path}: another process is listening on it" in lb.logs()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # still ours
    finally:
        live.close()
        path.unlink()

    path.write_text("not a socket")
    lb = fastmqtt(recipe(nodes, lb_port()) + stats)
    assert lb.proc.wait(timeout=15) == 1
    assert f"stats.socket: {path} exists and is not a socket" in lb.logs()
    assert path.read_text() == "not a socket"


def test_stats_over_tls_with_client_certificates(brokers, fastmqtt, tmp_path):
    certs = make_certs(tmp_path)
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    stats = (
        f'\n[stats]\nbind = "127.0.0.1:{stats_port}"\n'
        'auth = { user = "ops", password_env = "STATS_PW" }\n'
        f'[stats.tls]\ncert = "{certs.server_cert}"\nkey = "{certs.server_key}"\n'
        f'ca = "{certs.ca}"\nverify = "optional"\n'
    )
    lb = fastmqtt(recipe(nodes, port) + stats, port=port, env={"STATS_PW": PASSWORD})
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    raw_connect(port, "over-tls").close()
    url = f"https://127.0.0.1:{stats_port}"
    assert f"stats on {url}/stats" in lb.logs()

    request = urllib.request.Request(url + "/metrics", headers=Stats(0, "ops", PASSWORD).headers)
    with urllib.request.urlopen(request, context=certs.client_context(), timeout=10) as answer:
        families = {f.name for f in text_string_to_metric_families(answer.read().decode())}
    assert "fastmqtt_frontend_mqtt_connects" in families
    context = certs.client_context(certs.client)  # a scraper with a client certificate
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        assert answer.status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(request, context=ssl.create_default_context(), timeout=10)
    with pytest.raises(OSError):  # TLS 1.3: the client hears of its rejected certificate late
        urllib.request.urlopen(request, context=certs.client_context(certs.stranger), timeout=10)
    with pytest.raises(OSError):  # plain HTTP gets no answer
        urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/healthz", timeout=10)

    env = {"CTL_PW": PASSWORD}
    common = ("--url", url, "--user", "ops", "--password-env", "CTL_PW")
    done = ctl(*common, "--cafile", certs.ca, "show", env=env)
    assert done.returncode == 0, done.stderr
    assert [row["svname"] for row in json.loads(done.stdout)] == ["node1"]
    unverified = ctl(*common, "show", env=env)
    assert unverified.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr


def test_bad_stats_tls_material_stops_serve_and_check_names_the_key(brokers, fastmqtt, tmp_path):
    certs = make_certs(tmp_path)
    nodes = brokers(1)
    stats = (
        f'\n[stats]\nbind = "127.0.0.1:{free_port()}"\n'
        f'[stats.tls]\ncert = "{certs.server_cert}"\nkey = "{certs.a_example}"\n'
    )
    config = recipe(nodes, lb_port()) + stats
    lb = fastmqtt(config)
    assert lb.proc.wait(timeout=15) == 1
    expected = "stats.tls.key: " + certs.a_example + ": the private key does not match"
    assert expected in lb.logs()
    path = tmp_path / "lb.toml"
    path.write_text(config)
    checked = subprocess.run(
        [sys.executable, "-m", "fastmqtt", "check", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 1 and expected in checked.stderr


def test_the_supervisor_serves_the_socket_for_every_worker(brokers, fastmqtt, socket_dir):
    nodes = brokers(2)
    port, path = lb_port(), socket_dir / "admin.sock"
    config = recipe(nodes, port).replace("[global]\n", "[global]\nworkers = 2\n")
    lb = fastmqtt(config + f'\n[stats]\nsocket = "{path}"\n', port=port)
    assert wait_until(lambda: "2 workers serving" in lb.logs())
    done = ctl("--socket", str(path), "maint", "cluster/node2")
    assert done.returncode == 0, done.stderr
    assert lb.logs().count("cluster/node2 is MAINT (was UP): set to maint by admin API (uid") == 2
    for i in range(6):
        raw_connect(port, f"w-{i}").close()
    assert {
        row["svname"]: row["stot"] for row in json.loads(ctl("--socket", str(path), "show").stdout)
    } == {
        "node1": 6,
        "node2": 0,
    }
    lb.stop()  # two signals: the fast way out
    assert not path.exists()


def test_a_silent_tls_client_is_cut_after_the_request_deadline(brokers, fastmqtt, tmp_path):
    certs = make_certs(tmp_path)
    nodes = brokers(1)
    port, stats_port = lb_port(), free_port()
    stats = (
        f'\n[stats]\nbind = "127.0.0.1:{stats_port}"\n'
        f'tls = {{ cert = "{certs.server_cert}", key = "{certs.server_key}" }}\n'
    )
    lb = fastmqtt(recipe(nodes, port) + stats, port=port)
    wait_for_port("127.0.0.1", stats_port, 10, lb.proc)
    with socket.create_connection(("127.0.0.1", stats_port)) as silent:
        started = time.monotonic()
        assert closed_by_peer(silent, timeout=REQUEST_DEADLINE + 5)  # no ClientHello ever
        assert time.monotonic() - started > REQUEST_DEADLINE - 1
