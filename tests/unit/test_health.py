"""Health bookkeeping without the network: HAProxy's rise/fall counter, probe intervals,
how admin states combine with health, per-server check settings, latency buckets."""

from __future__ import annotations

import pytest

from fastmqtt.backend import Server, ServerState
from fastmqtt.config import BackendConfig, CheckConfig, ServerConfig
from fastmqtt.health import Admin, ServerHealth, check_for
from fastmqtt.metrics import Histogram

CHECK = CheckConfig(interval=2.0, fastinter=0.5, downinter=5.0, rise=2, fall=3)


def _health(check: CheckConfig | None = CHECK) -> ServerHealth:
    server = Server(ServerConfig("s1", "127.0.0.1", 1883), 0)
    return ServerHealth(server, check, now=0.0)


def test_starts_up_but_falls_at_the_first_failure_like_haproxy():
    h = _health()
    assert (h.state(), h.status_text()) == (ServerState.UP, "UP 1/3")
    h.failed()
    assert (h.state(), h.health) == (ServerState.DOWN, 0)


def test_rise_successes_bring_it_up_and_fall_failures_take_it_down():
    h = _health()
    h.failed()
    seen = []
    for step in ("passed", "passed", "failed", "failed", "passed", "failed", "failed", "failed"):
        getattr(h, step)()
        seen.append(h.status_text())
    assert seen == ["DOWN 1/2", "UP", "UP 2/3", "UP 1/3", "UP", "UP 2/3", "UP 1/3", "DOWN"]


def test_a_failure_while_coming_up_starts_over():
    h = _health()
    h.failed()
    h.passed()
    h.failed()
    h.passed()
    assert h.status_text() == "DOWN 1/2"


def test_observed_errors_take_it_down_only_while_it_is_up():
    h = _health(CheckConfig(rise=2, fall=1, observe=True, error_limit=2))
    counters = h.server.counters
    counters.connect_errors += 1
    assert h.observe() == 0 and h.up  # 1 of 2
    counters.connect_errors += 1
    assert h.observe() == 2 and not h.up
    counters.connect_errors += 3  # attempts begun before, or counted late: it is down already
    assert h.observe() == 0
    h.passed()
    h.passed()
    assert h.up
    assert h.observe() == 0 and h.up  # back up: the old failures do not take it down again
    counters.connect_errors += 1
    counters.total += 1
    assert h.observe() == 0  # a success in the same look resets the count
    counters.connect_errors += 2
    assert h.observe() == 2 and not h.up


def test_intervals_follow_the_state():
    h = _health()
    h.passed()
    assert h.next_interval() == 2.0  # steady
    h.failed()
    assert h.next_interval() == 0.5  # going down: fastinter
    h.failed()
    h.failed()
    assert h.next_interval() == 5.0  # down: downinter
    h.passed()
    assert h.next_interval() == 0.5  # coming up: fastinter


@pytest.mark.parametrize(
    ("admin", "up", "state"),
    [
        (Admin.READY, True, ServerState.UP),
        (Admin.DRAIN, True, ServerState.DRAIN),
        (Admin.DRAIN, False, ServerState.DOWN),
        (Admin.MAINT, False, ServerState.MAINT),
        (Admin.MAINT, True, ServerState.MAINT),
    ],
)
def test_admin_state_and_health_combine(admin, up, state):
    h = _health()
    h.admin, h.up = admin, up
    assert h.state() is state


def test_unchecked_server_says_so():
    assert _health(None).status_text() == "no check"


def test_downtime_counts_only_while_down():
    h = _health()
    h.set_up(False, now=10.0)
    assert h.downtime_total(now=12.5) == 2.5
    h.set_up(True, now=13.0)
    h.set_up(True, now=20.0)
    assert (h.downtime_total(now=30.0), h.up_down) == (3.0, 1)


def _server(check: object) -> ServerConfig:
    return ServerConfig(name="n", host="127.0.0.1", port=1883, check=check)  # type: ignore[arg-type]


def test_per_server_check_settings():
    backend = BackendConfig(name="b", check=CheckConfig(type="mqtt", rise=4))
    assert check_for(backend, _server(None)) == backend.check
    assert check_for(backend, _server(False)) is None
    assert check_for(backend, _server({"port": 18083})) == CheckConfig(
        type="mqtt", rise=4, port=18083
    )
    unchecked = BackendConfig(name="b")
    assert check_for(unchecked, _server(None)) is None
    assert check_for(unchecked, _server(True)) == CheckConfig()


def test_histogram_buckets_are_upper_inclusive():
    h = Histogram()
    for value in (0.0005, 0.0006, 10.0, 11.0):
        h.observe(value)
    assert (h.counts[0], h.counts[1], h.counts[-2], h.counts[-1]) == (1, 1, 1, 1)
    assert h.count == 4 and h.total == pytest.approx(21.0011)


def test_a_reload_keeps_up_or_down_within_the_new_rise_and_fall():
    down = _health()
    down.failed()
    down.admin = Admin.MAINT
    down.retune(CheckConfig(rise=3, fall=1))
    assert (down.state(), down.status_text()) == (ServerState.DOWN, "DOWN")  # admin: READY
    down.passed()
    down.passed()
    assert down.status_text() == "DOWN 2/3"  # rise 3 now
    down.passed()
    assert down.state() is ServerState.UP
    up = _health()
    up.passed()  # fully up: health = rise + fall - 1 = 4
    up.retune(CheckConfig(rise=2, fall=1))
    assert (up.state(), up.health, up.status_text()) == (ServerState.UP, 2, "UP")
    down.failed()
    down.retune(None)  # checks switched off: never probed again, so up
    assert (down.state(), down.status_text()) == (ServerState.UP, "no check")
