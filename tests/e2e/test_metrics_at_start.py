"""/metrics before the first health check has ended: every checked server already has its
check-duration series (0), as the dashboard in contrib/ expects from the start. The scrape in
test_contrib raced the first check; here a broker that accepts and never answers holds the first
MQTT check for its whole 5 s timeout, so the scrape always comes first."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.lb import lb_port
from tests.support.stats import Stats, checked_recipe

pytestmark = pytest.mark.e2e

SLOW_CHECK = 'type = "mqtt", interval = "10s", timeout = "5s"'


def test_check_duration_is_exported_before_the_first_check_ends(brokers, fastmqtt):
    (node,) = brokers(1)
    with socket.socket() as silent:  # accepts the check's connection, never answers CONNECT
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port, stats_port = lb_port(), lb_port()
        config = checked_recipe([node], port, stats_port, SLOW_CHECK)
        config = config.replace(node.address, f"127.0.0.1:{silent.getsockname()[1]}")
        fastmqtt(config, port=port)
        text = Stats(stats_port).get("/metrics")
    samples = [
        (s.labels.get("server"), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fastmqtt_server_check_duration_seconds"
    ]
    assert samples == [(node.name, 0.0)]
