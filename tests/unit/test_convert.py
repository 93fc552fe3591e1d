"""`fastmqtt convert` on real-world HAProxy configs: the EMQX guide's snippets, the bench recipe
and a file using every supported directive. Each input is first checked with the real HAProxy
(`haproxy -c`), each output with the real `fastmqtt check`, then read back with fastmqtt's own
config loader to assert what it means."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import trustme
from tests.support.haproxy import find_haproxy

from fastmqtt.config import Config, load_config_text
from fastmqtt.tools import convert as cv
from fastmqtt.tools.brokers import free_port, stop_process

ROOT = pathlib.Path(__file__).parents[2]
DATA = ROOT / "tests" / "data" / "haproxy"
EMQX = sorted(path.name for path in DATA.glob("emqx_*.cfg") if path.name != "emqx_lb_listen.cfg")
# Where the guides (and Debian's crt-base) keep their certificates -> the test's own files.
CERT_PATHS = {
    "/etc/haproxy/certs/": "{}/", "/etc/ssl/emqx/emq.pem": "{}/server.pem",
    "crt-base /etc/ssl/private": "crt-base {}", "emqx.pem": "server.pem",
}  # fmt: skip
SYSLOG = "log 127.0.0.1 local3 info (fastmqtt logs to stdout; under systemd that is the journal)"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    """server.pem (certificate + key, as HAProxy's `crt` takes it) and cacert.pem."""
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(folder / "server.pem")
    ca.cert_pem.write_to_path(folder / "cacert.pem")
    return folder


def _read(name: str, certs: pathlib.Path) -> str:
    """A test config with the guide's certificate paths pointing at real files."""
    text = (DATA / name).read_text()
    for path, ours in CERT_PATHS.items():
        text = text.replace(path, ours.format(certs))
    return text


def assert_haproxy_accepts(text: str, tmp_path: pathlib.Path, warning: str = "") -> None:
    """`haproxy -c` passes without warnings (but ``warning``, when given, must be there).

    There is no DNS here, and HAProxy resolves server names while parsing: the guide's
    emqxN-cluster.emqx.io become 127.0.0.N for this check only."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(re.sub(r"emqx(\d)-cluster\.emqx\.io", r"127.0.0.\1", text))
    done = subprocess.run(
        [find_haproxy(), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("[WARNING]") == (1 if warning else 0), output
    assert warning in output


def convert_and_check(text: str, tmp_path: pathlib.Path) -> tuple[Config, cv.Report]:
    """Convert, then `fastmqtt check` must accept the output (exit 0)."""
    toml, report = cv.convert(text, "haproxy.cfg")
    lb = tmp_path / "lb.toml"
    lb.write_text(toml)
    done = subprocess.run(
        [sys.executable, "-m", "fastmqtt", "check", str(lb)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr + toml
    assert ": OK: " in done.stdout
    return load_config_text(toml, str(lb)), report


def _skipped(report: cv.Report) -> list[str]:
    return [text for _, text in report.skipped]


def _servers(config: Config, backend: str) -> list[tuple[str, str, int, int, bool]]:
    return [(s.name, s.host, s.port, s.weight, s.backup) for s in config.backends[backend].servers]


EMQX_NODES = [f"emqx{i}-cluster.emqx.io" for i in (1, 2, 3)]


def _nodes(port: int, weights=(1, 1, 1)) -> list[tuple[str, str, int, int, bool]]:
    return [(f"emqx{i + 1}", host, port, weights[i], False) for i, host in enumerate(EMQX_NODES)]


# --- the EMQX guide, snippet by snippet ------------------------------------------------------


@pytest.mark.parametrize("name", EMQX)
def test_emqx_snippet_is_valid_haproxy_and_converts(name, certs, tmp_path):
    text = _read(name, certs)
    assert_haproxy_accepts(text, tmp_path)
    config, report = convert_and_check(text, tmp_path)
    # The guide's global `log` line (syslog) is the one thing without an equivalent.
    assert _skipped(report) == [SYSLOG]
    assert config.defaults.timeout_connect == 10.0  # `timeout connect 10000`: milliseconds
    assert config.defaults.timeout_client.seconds == 240.0
    assert config.defaults.timeout_server == 240.0
    assert config.defaults.maxconn == 20000


def _convert(name: str, certs: pathlib.Path, tmp_path: pathlib.Path) -> Config:
    return convert_and_check(_read(name, certs), tmp_path)[0]


def test_emqx_reverse_proxy_for_mqtt(certs, tmp_path):
    config = _convert("emqx_mqtt.cfg", certs, tmp_path)
    assert config.global_.maxconn == 1024000
    (frontend,) = config.frontends
    assert (frontend.name, frontend.bind_host, frontend.bind_port) == (
        "mqtt_servers",
        "0.0.0.0",
        1883,
    )
    assert (frontend.protocol, frontend.reject_invalid, frontend.inspect_delay) == (
        "mqtt",
        True,
        10.0,
    )
    backend = config.backend_for(frontend)
    assert backend.name == "mqtt_backend"
    stick = backend.stick
    assert (stick.on, stick.size, stick.expire) == ("client_id", 102400, 1800.0)  # 100k = 100*1024
    assert backend.balance == "roundrobin"
    assert backend.send_proxy is None and backend.check is None
    assert _servers(config, "mqtt_backend") == _nodes(1883)


@pytest.mark.parametrize("name", ["emqx_mqtt_tls.cfg", "emqx_mqtt_mutual_tls.cfg"])
def test_emqx_mqtt_over_tls(name, certs, tmp_path):
    config = _convert(name, certs, tmp_path)
    (frontend,) = config.frontends
    assert (frontend.name, frontend.bind_port, frontend.protocol) == (
        "mqtt_tls_frontend",
        8883,
        "tcp",
    )
    tls = frontend.tls
    mutual = (str(certs / "cacert.pem"), "required")
    assert tls.cert == str(certs / "server.pem")
    assert (tls.ca, tls.verify) == (mutual if "mutual" in name else (None, "none"))
    backend = config.backend_for(frontend)
    assert backend.send_proxy == "v2"
    # check-send-proxy without `check`: HAProxy runs no checks, and neither does fastmqtt.
    assert backend.check is None
    assert _servers(config, "mqtt_backend") == _nodes(1883)


@pytest.mark.parametrize(("name", "port"), [("emqx_ws.cfg", 8083), ("emqx_ws_tls.cfg", 8084)])
def test_emqx_websocket(name, port, certs, tmp_path):
    config = _convert(name, certs, tmp_path)
    (frontend,) = config.frontends
    assert (frontend.bind_port, frontend.protocol) == (port, "tcp")  # WebSocket passes through
    assert (frontend.tls is not None) == (port == 8084)
    check = config.backend_for(frontend).check
    assert (check.type, check.interval, check.rise, check.fall) == ("tcp", 2.0, 2, 3)
    assert _servers(config, "mqtt_ws_backend") == _nodes(8083)


@pytest.mark.parametrize(
    ("name", "balance", "weights", "checked"),
    [
        ("emqx_roundrobin.cfg", "roundrobin", (1, 1, 1), True),
        ("emqx_weighted.cfg", "roundrobin", (5, 2, 3), True),
        ("emqx_source.cfg", "source", (1, 1, 1), False),
        ("emqx_leastconn.cfg", "leastconn", (1, 1, 1), False),
        ("emqx_sticky.cfg", "roundrobin", (1, 1, 1), False),
    ],
)
def test_emqx_balancing_strategies(name, balance, weights, checked, certs, tmp_path):
    config = _convert(name, certs, tmp_path)
    backend = config.backends["mqtt_backend"]
    assert backend.balance == balance
    assert (backend.check is not None) == checked
    assert _servers(config, "mqtt_backend") == _nodes(1883, weights)
    assert (backend.stick is not None) == (name == "emqx_sticky.cfg")


def test_emqx_stats_page(certs, tmp_path):
    config = _convert("emqx_stats.cfg", certs, tmp_path)
    stats = config.stats
    assert (stats.bind_host, stats.bind_port, stats.uri, stats.refresh) == (
        "0.0.0.0",
        8888,
        "/stats",
        10.0,
    )
    assert [frontend.name for frontend in config.frontends] == ["mqtt_servers"]


def test_emqx_quick_start_repository(certs, tmp_path):
    config, report = convert_and_check(_read("emqx_usage_example.cfg", certs), tmp_path)
    assert config.global_.maxconn == 10240
    frontends = {f.name: (f.bind_port, f.protocol, f.backend) for f in config.frontends}
    assert frontends == {
        "mqtt_servers": (1883, "mqtt", "mqtt_backend"),
        "mqtt_tls_frontend": (8883, "tcp", "mqtts_backend"),
        "mqtt_ws_frontend": (8083, "tcp", "mqtt_ws_backend"),
        "mqtt_ws_tls_frontend": (8084, "tcp", "mqtt_ws_backend"),
    }
    # Its reject rule is commented out, but its backend sticks on the client id: fastmqtt must
    # read the CONNECT (as HAProxy did for `stick on`) without rejecting anything.
    assert config.frontends[0].reject_invalid is False
    assert any("does not reject invalid ones" in note for note in report.notes)
    assert config.backends["mqtt_backend"].stick.size == 1000 * 1024
    assert _servers(config, "mqtts_backend") == _nodes(1883, (5, 2, 3))
    assert config.stats.bind_port == 8888


def test_emqx_load_balancing_page_listen(certs, tmp_path):
    """The older "Load Balancing" page: a `listen` handing over to a backend."""
    text = _read("emqx_lb_listen.cfg", certs)
    assert_haproxy_accepts(text, tmp_path, warning="missing timeouts for backend 'emqx_cluster'")
    config, report = convert_and_check(text, tmp_path)
    assert report.skipped == []  # no-sslv3 is what fastmqtt does anyway (TLS 1.2+)
    (frontend,) = config.frontends
    assert (frontend.name, frontend.bind_port, frontend.protocol) == ("mqtt-ssl", 8883, "tcp")
    assert (frontend.maxconn, frontend.timeout_client.seconds) == (50000, 600.0)
    assert frontend.tls.cert == str(certs / "server.pem")
    backend = config.backend_for(frontend)
    assert [b.name for b in config.backends.values()] == ["emqx_cluster"]
    assert (backend.balance, backend.timeout_server) == ("source", 50.0)
    check = backend.check  # inter 10000 fall 2 rise 5, timeout check 5000: milliseconds
    assert (check.interval, check.rise, check.fall, check.timeout) == (10.0, 5, 2, 5.0)
    assert [(s.host, s.weight) for s in backend.servers] == [("192.168.0.2", 1), ("192.168.0.3", 1)]


# --- the bench recipe ------------------------------------------------------------------------


def test_bench_recipe(monkeypatch, tmp_path):
    """bench/haproxy.cfg takes its addresses from the environment, as HAProxy does."""
    env = {"MAXCONN": "9600", "BIND": "127.0.0.1:1883"}
    env |= {f"SERVER{i}": f"127.0.0.1:{1883 + i}" for i in (1, 2, 3)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    text = (ROOT / "bench" / "haproxy.cfg").read_text()
    assert_haproxy_accepts(text, tmp_path)
    config, report = convert_and_check(text, tmp_path)
    assert report.skipped == []  # the bench recipe converts completely
    assert config.global_.maxconn == 9600
    (frontend,) = config.frontends
    assert (frontend.bind_host, frontend.bind_port, frontend.protocol) == (
        "127.0.0.1",
        1883,
        "mqtt",
    )
    assert (frontend.reject_invalid, frontend.inspect_delay) == (True, 10.0)
    backend = config.backend_for(frontend)
    assert (backend.stick.on, backend.stick.size, backend.stick.expire) == (
        "client_id",
        102400,
        1800.0,
    )
    assert [(s.name, s.port) for s in backend.servers] == [("n1", 1884), ("n2", 1885), ("n3", 1886)]


def test_unset_variable_is_reported_but_not_in_comments(monkeypatch):
    monkeypatch.delenv("FASTMQTT_TEST_UNSET", raising=False)
    text = '# ${FASTMQTT_TEST_UNSET} in a comment\nglobal\n    maxconn "${FASTMQTT_TEST_UNSET}"\n'
    _, report = cv.convert(text)
    assert report.unsupported == [
        "haproxy.cfg:3: unsupported: ${FASTMQTT_TEST_UNSET} (environment variable not set)",
        "haproxy.cfg:3: unsupported: maxconn (missing argument)",
    ]


def test_unquoted_variable_is_literal_as_in_haproxy(monkeypatch):
    """HAProxy 2.6 reads `maxconn ${N}` as maxconn 0 (atol of "${N}"): said, not converted."""
    monkeypatch.setenv("N", "777")
    toml, report = cv.convert("global\n    maxconn ${N}\n")
    assert "maxconn" not in toml.split("# Not converted")[0]
    assert report.unsupported == [
        "haproxy.cfg:2: unsupported: maxconn ${N} (not a number: ${N}; HAProxy expands "
        'variables only inside double quotes ("${NAME}"))'
    ]


# The environment as HAProxy reads it, line by line: `global` may change it for what follows.
ENV_CFG = """global
    presetenv KEEP from-preset
    presetenv NEW preset-new
    setenv SET1 "set one"
    setenv OVER overwritten
    unsetenv GONE
{description}
    stats socket {socket} mode 600
defaults
    mode tcp
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend f
    bind 127.0.0.1:${PORT}
    default_backend b
backend b
    server s1 ${HOST}:1
""".replace(
    "{description}",
    "    description \"q-${SET1}-${KEEP}-${NEW}-${OVER}-${GONE}-$SET1-'x'\" '${SET1}'"
    ' u${SET1} "${DEF-dflt}" "${MULTI[*]}" "${KEEP-unused}" "\\${SET1}" "a\\"b" c#d',
)
ENV = {"KEEP": "orig", "OVER": "orig", "GONE": "bye", "MULTI": "a  b", "HOST": "127.0.0.9"}


def _haproxy_view(text: str, env: dict[str, str], tmp_path: pathlib.Path) -> tuple[str, dict]:
    """(the description HAProxy read, its environment after `global`), from a running HAProxy."""
    cfg, sock = tmp_path / "env.cfg", tmp_path / "admin.sock"
    cfg.write_text(text.replace("{socket}", str(sock)))
    proc = subprocess.Popen(
        [find_haproxy(), "-db", "-f", str(cfg)],
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)

        def ask(command: str) -> str:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(command.encode() + b"\n")
                return b"".join(iter(lambda: s.recv(65536), b"")).decode()

        info = dict(line.split(": ", 1) for line in ask("show info").splitlines() if ": " in line)
        shown = dict(line.split("=", 1) for line in ask("show env").splitlines() if "=" in line)
    finally:
        stop_process(proc)
    return info["description"], shown


def test_environment_is_read_as_haproxy_reads_it(tmp_path):
    port = str(free_port())
    env = {**ENV, "PORT": port}
    description, haproxy_env = _haproxy_view(ENV_CFG, env, tmp_path)
    sections = cv.read_sections(ENV_CFG, cv.Report("haproxy.cfg"), env)
    (global_,) = [s for s in sections if s.kind == "global"]
    line = next(line for line in global_.lines if line.words[0] == "description")
    ours = " ".join(line.words[1:])
    if '"' in ours:  # `show info` writes such a value as a CSV field
        ours = '"' + ours.replace('"', '""') + '"'
    assert ours == description
    assert {k: v for k, v in line.env.items() if k in haproxy_env} == {
        k: v for k, v in haproxy_env.items() if k in (*ENV, "SET1", "NEW", "PORT")
    }
    assert "GONE" not in line.env and "GONE" not in haproxy_env
    frontend = next(s for s in sections if s.kind == "frontend")
    assert cv.env_expand(frontend.lines[0].words[1], frontend.lines[0].env) == f"127.0.0.1:{port}"


def test_resetenv_keeps_only_the_names_given(tmp_path):
    rest = ENV_CFG[ENV_CFG.index("    stats socket") :]
    text = f'global\n    resetenv KEEP PORT\n    description "${{KEEP}}-${{GONE}}"\n{rest}'
    env = {**ENV, "PORT": str(free_port())}
    description, haproxy_env = _haproxy_view(text, env, tmp_path)
    sections = cv.read_sections(text, cv.Report("haproxy.cfg"), env)
    line = sections[0].lines[1]
    assert (" ".join(line.words[1:]), description) == ("orig-", "orig-")
    own = {name for name in haproxy_env if name.startswith("HAPROXY_")}  # set after reading
    assert set(line.env) == {"KEEP", "PORT"} == set(haproxy_env) - own


# --- every supported directive, and the report of what is not --------------------------------


@pytest.fixture
def coverage(certs, monkeypatch, tmp_path) -> tuple[Config, cv.Report]:
    monkeypatch.setenv("CERTS", str(certs))
    monkeypatch.setenv("COVERAGE_MAXCONN", "4000")
    text = (DATA / "coverage.cfg").read_text()
    assert_haproxy_accepts(text, tmp_path)
    return convert_and_check(text, tmp_path)


def test_coverage_reports_exactly_what_it_left_out(coverage):
    _, report = coverage
    assert report.unsupported == [
        "haproxy.cfg:10: unsupported: stats socket /run/haproxy-coverage.sock mode 660",
        "haproxy.cfg:39: unsupported: option clitcpka",
        "haproxy.cfg:40: unsupported: use_backend cluster if { src 10.0.0.0/8 }"
        " (conditional routing: one backend per frontend)",
        "haproxy.cfg:52: unsupported: server option id 7",
        "haproxy.cfg:69: unsupported: server h: send-proxy (lb.toml sets it for the whole backend)",
        "haproxy.cfg:79: unsupported: stats admin if TRUE",
    ]
    # nbthread, user, log stdout, dontlognull (need no translation), accept-proxy, hash-type,
    # len, the stats password, the prometheus exporter
    assert [n for n, _ in report.noted] == [6, 7, 11, 24, 28, 45, 46, 77, 78]


def test_coverage_global_and_defaults(coverage):
    config, _ = coverage
    assert (config.global_.maxconn, config.global_.workers) == (4000, 2)
    defaults = config.defaults
    assert (defaults.timeout_connect, defaults.timeout_server) == (5.0, 180.0)
    assert defaults.timeout_client.seconds == 180.0


def test_coverage_frontends(coverage, certs):
    config, _ = coverage
    frontends = {f.name: f for f in config.frontends}
    assert list(frontends) == ["mqtt", "mqtt_2", "mqtt_tls", "mqtt_tls_2", "legacy"]
    # Two binds in one HAProxy frontend, and an address list: one lb.toml frontend per address.
    assert [(f.bind_host, f.bind_port) for f in frontends.values()] == [
        ("0.0.0.0", 1883), ("::1", 1883), ("127.0.0.1", 8883), ("127.0.0.2", 8883),
        ("127.0.0.1", 11883),
    ]  # fmt: skip
    mqtt, tls = frontends["mqtt"], frontends["mqtt_tls"]
    assert (mqtt.protocol, mqtt.reject_invalid) == ("mqtt", True)  # reject unless ACL
    assert (mqtt.maxconn, mqtt.backend) == (5000, "cluster")
    assert (mqtt.accept_proxy, frontends["mqtt_2"].accept_proxy) == (False, True)  # accept-proxy
    assert [str(net) for net in frontends["mqtt_2"].trusted_proxies] == ["0.0.0.0/0", "::/0"]
    assert (tls.protocol, tls.reject_invalid, tls.backend) == ("mqtt", True, "by_user")  # if !{...}
    assert (tls.inspect_delay, tls.timeout_client.seconds) == (10.0, 600.0)
    settings = tls.tls  # crt-base / ca-base applied
    assert (settings.cert, settings.ca) == (str(certs / "server.pem"), str(certs / "cacert.pem"))
    assert (settings.verify, settings.alpn, settings.min_version) == (
        "optional",
        ("mqtt",),
        "TLSv1.3",
    )
    assert settings.ciphers == "ECDHE+AESGCM"
    assert frontends["legacy"].protocol == "tcp"


def test_coverage_backend_with_checks_and_backups(coverage):
    config, _ = coverage
    cluster = config.backends["cluster"]
    assert (cluster.balance, cluster.all_backups, cluster.send_proxy) == ("leastconn", True, "v2")
    assert (cluster.retries, cluster.redispatch) == (2, True)  # from defaults
    assert (cluster.stick.on, cluster.stick.size, cluster.stick.expire) == (
        "client_id",
        1 << 20,
        3600.0,
    )
    check = cluster.check  # default-server inter 3s rise 3 fall 2, timeout check 3s
    assert (check.type, check.interval, check.rise, check.fall) == ("tcp", 3.0, 3, 2)
    assert (check.timeout, check.send_proxy) == (3.0, True)
    servers = {s.name: s for s in cluster.servers}
    assert (servers["a"].weight, servers["a"].maxconn, servers["a"].check) == (10, 2000, None)
    assert dict(servers["b"].check) == {"interval": 1.0}  # its own `inter 1s`
    assert [(servers[n].backup, servers[n].check) for n in "cd"] == [(True, False), (True, False)]


def test_coverage_backend_sticky_on_username_with_http_check(coverage):
    config, _ = coverage
    by_user = config.backends["by_user"]
    assert (by_user.balance, by_user.retries, by_user.redispatch) == ("source", 0, False)
    assert (by_user.stick.on, by_user.stick.size, by_user.stick.expire) == ("username", 10240, 30.0)
    check = by_user.check
    assert (check.type, check.path, check.expect_status, check.port) == (
        "http", "/api/v5/status", 200, 18083,
    )  # fmt: skip
    assert [(s.host, s.port) for s in by_user.servers] == [("::1", 1888), ("::1", 1889)]


def test_coverage_listen_and_stats(coverage):
    config, _ = coverage
    legacy = config.backends["legacy"]
    assert legacy.balance == "random"
    assert [(s.name, s.weight) for s in legacy.servers] == [("g", 0), ("h", 1)]  # 0 as HAProxy
    stats = config.stats
    assert (stats.bind_host, stats.bind_port, stats.uri, stats.refresh) == (
        "127.0.0.1",
        8404,
        "/haproxy",
        5.0,
    )
    assert (stats.auth_user, stats.auth_password_env) == ("admin", "FASTMQTT_STATS_PASSWORD")


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "bare", "expected"),
    [
        ("10000", "ms", "10s"),
        ("1500", "ms", "1500ms"),
        ("500us", "ms", "1ms"),  # HAProxy rounds up to its millisecond ticks
        ("2000us", "ms", "2ms"),
        ("240s", "ms", "240s"),
        ("30m", "ms", "30m"),
        ("1h", "ms", "1h"),
        ("7d", "ms", "7d"),
        ("10", "s", "10s"),  # `stats refresh 10` is in seconds
    ],
)
def test_duration(word, bare, expected):
    assert cv.duration(word, bare) == expected


@pytest.mark.parametrize("word", ["0", "8d", "10x", "-1", "1.5s", ""])
def test_duration_refused(word):
    with pytest.raises(cv.Unconvertible):
        cv.duration(word)


@pytest.mark.parametrize(
    ("word", "expected"), [("100k", 102400), ("1m", 1 << 20), ("1g", 1 << 30), ("5000", 5000)]
)
def test_size(word, expected):
    assert cv.size(word) == expected


@pytest.mark.parametrize(
    ("word", "bind", "expected"),
    [
        ("*:1883", True, "0.0.0.0:1883"),
        (":1883", True, "0.0.0.0:1883"),
        (":::1883", True, "[::]:1883"),
        ("ipv6@:1883", True, "[::]:1883"),
        ("ipv4@10.0.0.1:1883", True, "10.0.0.1:1883"),
        ("[::1]:1883", False, "[::1]:1883"),
        ("fd00::2:1883", False, "[fd00::2]:1883"),
        ("emqx1:1883", False, "emqx1:1883"),
    ],
)
def test_address(word, bind, expected):
    assert cv.address(word, bind) == expected


@pytest.mark.parametrize(
    ("word", "bind"),
    [("unix@/run/x.sock", True), ("*:1883-1890", True), (":1883", False), ("emqx1", False)],
)
def test_address_refused(word, bind):
    with pytest.raises(cv.Unconvertible):
        cv.address(word, bind)


# --- the command -----------------------------------------------------------------------------


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastmqtt", "convert", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_command_exit_codes_and_stderr(tmp_path):
    complete = tmp_path / "complete.cfg"
    complete.write_text(
        "frontend f\n    bind :1883\n    default_backend b\n"
        "backend b\n    server s1 10.0.0.1:1883\n"
    )
    done = _command(str(complete))
    assert (done.returncode, done.stderr) == (0, "")
    assert '[frontend.f]\nbind = "0.0.0.0:1883"\nprotocol = "tcp"\nbackend = "b"\n' in done.stdout

    partial = tmp_path / "partial.cfg"
    partial.write_text(complete.read_text() + "    option httplog\n")
    done = _command(str(partial), "-o", str(tmp_path / "lb.toml"))
    assert done.returncode == 2
    assert done.stderr == f"{partial}:6: unsupported: option httplog\n"
    assert (
        (tmp_path / "lb.toml")
        .read_text()
        .endswith(f"#   {partial}:6: unsupported: option httplog\n")
    )

    assert _command(str(tmp_path / "missing.cfg")).returncode == 1


# --- PROXY protocol on traffic and checks ----------------------------------------------------

PP2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _first_bytes_of_haproxy_checks(server_options: str) -> bytes:
    """What HAProxy's health check sends first to a server line ending in ``server_options``
    (a listener records it; the check connects every 100 ms)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(5)
        port = listener.getsockname()[1]
        options = server_options.replace("{port}", str(port))
        config = (
            "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1s\n"
            "    timeout server 1s\n    timeout check 1s\n"
            f"listen l\n    bind 127.0.0.1:{free_port()}\n"
            f"    server s 127.0.0.1:{port} check inter 100ms {options}\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            cfg = pathlib.Path(tmp) / "haproxy.cfg"
            cfg.write_text(config)
            proc = subprocess.Popen(
                [find_haproxy(), "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL
            )
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(1)
                    return conn.recv(16)
            except (TimeoutError, ConnectionResetError):
                return b""  # a plain TCP check sends nothing (and may reset before accept)
            finally:
                stop_process(proc)


@pytest.mark.parametrize(
    ("options", "haproxy_sends"),
    [
        ("send-proxy-v2", True),  # checks follow the traffic's PROXY setting...
        ("send-proxy-v2-ssl-cn", True),
        ("send-proxy-v2 port {port}", False),  # ...unless they go to a port of their own
        ("send-proxy-v2 check-send-proxy port {port}", True),
        ("", False),
    ],
)
def test_checks_send_the_proxy_header_when_haproxy_does(options, haproxy_sends, tmp_path):
    assert _first_bytes_of_haproxy_checks(options).startswith(PP2_SIGNATURE) == haproxy_sends
    text = f"backend b\n    server s 127.0.0.1:1884 check {options.replace('{port}', '1885')}\n"
    text = "frontend f\n    bind :1883\n    default_backend b\n" + text
    config, report = convert_and_check(text, tmp_path)
    assert report.skipped == []
    assert config.backends["b"].check.send_proxy is haproxy_sends


def test_send_proxy_v2_ssl_keeps_the_header_on_traffic_and_checks(tmp_path):
    """The issue's case: -ssl-cn was dropped while check-send-proxy stayed, so the converted
    config checked with a PROXY header and sent none to clients' brokers."""
    text = (
        "frontend f\n    bind :1883\n    default_backend b\nbackend b\n"
        "    server s1 127.0.0.1:1884 check send-proxy-v2-ssl-cn check-send-proxy\n"
        "    server s2 127.0.0.1:1885 check send-proxy-v2-ssl check-send-proxy\n"
        "    server s3 127.0.0.1:1886 check send-proxy-v2 proxy-v2-options ssl,cert-cn,authority"
        " check-send-proxy\n"
    )
    timeouts = "defaults\n    mode tcp\n" + "".join(
        f"    timeout {kind} 5s\n" for kind in ("connect", "client", "server")
    )
    assert_haproxy_accepts(timeouts + text, tmp_path)
    config, report = convert_and_check(text, tmp_path)
    backend = config.backends["b"]
    assert (backend.send_proxy, backend.proxy_tlvs, backend.check.send_proxy) == (
        "v2",
        ("ssl",),
        True,
    )
    assert _skipped(report) == [
        "server s3: tlvs (lb.toml sets it for the whole backend)"  # authority on s3 only
    ]


def test_checks_never_disagree_with_traffic_on_the_same_port(tmp_path):
    text = (
        "frontend f\n    bind :1883\n    default_backend b\nbackend b\n"
        "    server s1 127.0.0.1:1884 check check-send-proxy\n"
    )
    config, report = convert_and_check(text, tmp_path)
    assert (config.backends["b"].send_proxy, config.backends["b"].check.send_proxy) == (None, False)
    assert _skipped(report) == [
        "server s1: PROXY header on checks but not on traffic (converted so that both agree "
        "(same port))"
    ]


def test_directives_that_need_no_translation_are_notes(tmp_path):
    text = (
        "global\n    log stdout format raw local0\n"
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tlsv11 no-tls-tickets\n"
        "defaults\n    mode tcp\n    option dontlognull\n"
        "frontend f\n    bind :1883\n    default_backend b\nbackend b\n    server s 10.0.0.1:1883\n"
    )
    _, report = convert_and_check(text, tmp_path)
    assert [text.split(":")[0] for _, text in report.noted] == [
        "log stdout", "ssl-min-ver TLSv1.2", "no-tlsv11", "option dontlognull",
    ]  # fmt: skip
    assert _skipped(report) == ["ssl-default-bind-options no-tls-tickets"]


def test_stdin_is_read_with_a_dash(tmp_path):
    text = (
        "frontend f\n    bind :1883\n    default_backend b\nbackend b\n    server s 10.0.0.1:1883\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "fastmqtt", "convert", "-"],
        input=text + "    option httplog\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert '[frontend.f]\nbind = "0.0.0.0:1883"' in done.stdout
    assert done.stderr == "<stdin>:6: unsupported: option httplog\n"


def test_binds_haproxy_shares_become_the_widest_one(tmp_path):
    """HAProxy binds :1883 and :::1883 side by side (SO_REUSEPORT, [::] is dual-stack); fastmqtt
    could not bind both (a `check` error): the dual-stack one covers the others."""
    text = (
        "frontend f\n    bind :1883\n    bind :::1883\n    bind 127.0.0.1:1883\n"
        "    bind 127.0.0.1:8883\n    default_backend b\nbackend b\n    server s 10.0.0.1:1883\n"
    )
    config, report = convert_and_check(text, tmp_path)
    assert [(f.bind_host, f.bind_port) for f in config.frontends] == [
        ("::", 1883),
        ("127.0.0.1", 8883),
    ]
    assert [text for _, text in report.noted] == [
        "bind 0.0.0.0:1883: already covered by [::]:1883",
        "bind 127.0.0.1:1883: already covered by [::]:1883",
    ]


def test_debian_stock_config_with_the_recipe_appended(certs, tmp_path):
    """Debian's shipped haproxy.cfg (syslog, chroot, Mozilla TLS defaults, `mode http` and
    errorfiles in defaults) plus the recipe in `mode tcp`: what needs no translation is noted,
    and only three things are left out."""
    text = _read("debian_stock_emqx.cfg", certs)
    assert_haproxy_accepts(text, tmp_path)
    config, report = convert_and_check(text, tmp_path)
    assert _skipped(report) == [
        "stats socket /run/haproxy/admin.sock mode 660 level admin",
        "ssl-default-bind-options no-tls-tickets",
    ]
    noted = [text.split(":")[0] for _, text in report.noted]
    assert noted == [
        "log /dev/log", "log /dev/log", "chroot", "stats timeout", "user", "group", "daemon",
        "ssl-default-bind-ciphersuites", "ssl-min-ver TLSv1.2", "option httplog",
        "option dontlognull", *["errorfile"] * 7, "len 32",
    ]  # fmt: skip
    mqtt, tls = config.frontends
    assert (mqtt.protocol, mqtt.reject_invalid, tls.bind_port) == ("mqtt", True, 8883)
    assert tls.tls.ciphers.startswith("ECDHE-ECDSA-AES128-GCM-SHA256:")  # the global default
    backend = config.backend_for(mqtt)
    assert (backend.send_proxy, backend.proxy_tlvs, backend.check.send_proxy) == (
        "v2", ("ssl",), True,
    )  # fmt: skip
    assert config.defaults.timeout_connect == 5.0  # `timeout connect 5000`: milliseconds


def test_mode_http_from_defaults_is_reported_where_it_applies():
    text = (
        "defaults\n    mode http\n"
        "frontend web\n    bind :80\n    default_backend b\n"
        "frontend mqtt\n    mode tcp\n    bind :1883\n    default_backend b\n"
        "backend b\n    mode tcp\n    server s 10.0.0.1:1883\n"
    )
    _, report = cv.convert(text)
    assert report.unsupported == [
        "haproxy.cfg:3: unsupported: mode http (from defaults) (fastmqtt proxies TCP)"
    ]
