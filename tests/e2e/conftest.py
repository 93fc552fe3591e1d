"""Fixtures of the e2e tests: a DNS server and brokers it can name, and the connection-setup
path as a test parameter: tests that take the ``path`` fixture run once on the engine's fast
path and once on the event-loop path (``[global] fast_path = false``), with the same config
otherwise, and check which path the frontend took.

Without compiled extensions there is only the event-loop path, and only that variant runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from fastmqtt._accel import NO_EXTENSIONS
from fastmqtt.tools.brokers import Mosquitto
from tests.support.dns import HOSTS, DnsServer, brokers_on_one_port
from tests.support.lb import FastMQTT, wait_until

PATHS = ["loop"] if NO_EXTENSIONS else ["fast", "loop"]


def on_path(config: str, path: str | None) -> str:
    """``config`` set to take ``path`` ("fast": as written; "loop": fast_path = false)."""
    if path != "loop" or "fast_path = false\n" in config:
        return config
    if "[global]\n" in config:
        return config.replace("[global]\n", "[global]\nfast_path = false\n", 1)
    return "[global]\nfast_path = false\n\n" + config


def assert_path(lb: FastMQTT, path: str | None) -> None:
    """The start-up line names each frontend's path: the expected one was taken."""
    if path is None:
        return
    assert wait_until(lambda: " listening: " in lb.read("stderr.log"), timeout=10), lb.read(
        "stderr.log"
    )
    line = next(x for x in lb.read("stderr.log").splitlines() if " listening: " in x)
    expected = "(fast path)" if path == "fast" else "(event-loop path"
    assert expected in line, line


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def fastmqtt(request: pytest.FixtureRequest) -> Iterator[Callable[..., FastMQTT]]:
    """Factory: ``fastmqtt(toml_text)`` runs `fastmqtt serve` until the test ends; on the
    test's ``path`` when it takes that fixture."""
    path = request.getfixturevalue("path") if "path" in request.fixturenames else None
    started: list[FastMQTT] = []

    def start(config: str, **kwargs: object) -> FastMQTT:
        lb = FastMQTT(on_path(config, path), **kwargs).start()  # type: ignore[arg-type]
        started.append(lb)
        assert_path(lb, path)
        return lb

    yield start
    for lb in started:
        lb.stop()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    """An authoritative DNS server on loopback whose records a test sets."""
    with DnsServer() as server:
        yield server


@pytest.fixture
def nodes() -> Iterator[list[Mosquitto]]:
    """Brokers on HOSTS, one port: an A record alone decides which one a name reaches."""
    started = brokers_on_one_port(HOSTS)
    yield started
    for broker in started:
        broker.stop()
