"""The metric names read out of the PromQL in contrib/ (the e2e test compares them with what a
live fastmqtt exports, so the extraction itself must be right)."""

from __future__ import annotations

import pytest
from tests.support.promql import contrib_queries, grafana_query, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('fastmqtt_server_status{state="DOWN", backend=~"a|b"} == 1', {"fastmqtt_server_status"}),
        (
            "histogram_quantile(0.99, sum by (le, backend) "
            '(rate(x_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',
            {"x_seconds_bucket"},
        ),
        ("sum(rate(a_total[5m])) by (frontend) / ignoring(reason) b_total", {"a_total", "b_total"}),
        (
            "(process_open_fds / process_max_fds > 0.8) and on (instance, job) fastmqtt_build_info",
            {"process_open_fds", "process_max_fds", "fastmqtt_build_info"},
        ),
        ("a * on (x) group_left (y, z) b", {"a", "b"}),
        ("time() - max by (worker) (start_seconds) offset 1h", {"start_seconds"}),
        ("count(x == 1) or vector(0) unless y > 1e3", {"x", "y"}),
        ('z{le="+Inf", name="sum(rate(fake[1m]))"} - 2.5e-3', {"z"}),
        ("-sum by (backend) (rate(bytes_out_total[1m]))", {"bytes_out_total"}),
        ("foo:bar:rate5m > bool 3", {"foo:bar:rate5m"}),
        ("max_over_time(x[5m:30s])", {"x"}),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_grafana_label_values_reads_its_series_only():
    assert grafana_query("label_values(fastmqtt_build_info, instance)") == "fastmqtt_build_info"
    query = 'label_values(fastmqtt_backend_status{instance=~"$instance"}, backend)'
    assert metric_names(grafana_query(query)) == {"fastmqtt_backend_status"}
    assert grafana_query("up") == "up"


def test_contrib_queries_are_found():
    queries = contrib_queries()
    assert len(queries) > 30
    names = set().union(*map(metric_names, queries))
    assert {"fastmqtt_build_info", "process_open_fds", "fastmqtt_last_reload_success"} <= names
    assert all(name.startswith(("fastmqtt_", "process_")) for name in names), names
