"""Shared fixtures: real Mosquitto brokers, a real `fastmqtt serve` process, paho clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from fastmqtt.tools.brokers import Mosquitto, start_brokers
from tests.support.lb import FastMQTT
from tests.support.twins import IMPLEMENTATIONS, Implementation

# Wall-clock deadlines fail examples when the 2-core CI box is busy: judge results, not speed.
settings.register_profile("fastmqtt", deadline=None)
settings.load_profile("fastmqtt")


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Implementation:
    """Runs the test once per implementation of the hot paths ("c" and "py"; only "py" under
    FASTMQTT_NO_EXTENSIONS=1): ``implementation.parse``, ``.balance``, ``.ws``, ``.stick`` are
    modules."""
    return Implementation(request.param)


@pytest.fixture
def brokers() -> Iterator[Callable[[int], list[Mosquitto]]]:
    """Factory: ``brokers(3)`` starts three Mosquitto brokers, all stopped after the test."""
    started: list[Mosquitto] = []

    def start(count: int) -> list[Mosquitto]:
        new = start_brokers(count)
        started.extend(new)
        return new

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def fastmqtt() -> Iterator[Callable[..., FastMQTT]]:
    """Factory: ``fastmqtt(toml_text)`` runs `fastmqtt serve` on it until the test ends."""
    started: list[FastMQTT] = []

    def start(config: str, **kwargs: object) -> FastMQTT:
        lb = FastMQTT(config, **kwargs).start()  # type: ignore[arg-type]
        started.append(lb)
        return lb

    yield start
    for lb in started:
        lb.stop()
