"""The engine's admission (_admit.pyx) against access.py and ratelimit.py: the same verdicts,
rule and reason word for the same clients at the same times, and memory fixed up front."""

from __future__ import annotations

import ipaddress
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from fastmqtt._admit import AdmissionRef
from fastmqtt.access import client_ip, decide
from fastmqtt.config.model import Rate, RateLimitConfig, Rule
from fastmqtt.fastpath import _id_pattern
from fastmqtt.ratelimit import RateLimiter

NETS = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.7/32", "0.0.0.0/0"]
IDS = ["tenant-a/*", "tenant-b/7", "dev*", "*"]
SOURCES = ["10.1.2.3", "10.9.9.9", "192.0.2.7", "198.51.100.1"]
CLIENT_IDS = ["tenant-a/x", "tenant-a/", "tenant-b/7", "tenant-b/70", "dev-1", "", "other"]


class Oracle:
    """access.Guard's two admissions, synchronous, over the event-loop path's own pieces."""

    def __init__(self, rules: list[Rule], default: str, limits: RateLimitConfig | None,
                 deny_empty: bool) -> None:  # fmt: skip
        self.rules, self.default, self.deny_empty = tuple(rules), default, deny_empty
        self.now = 0.0
        self.limits = None if limits is None else RateLimiter(limits, lambda: self.now)

    def admit_source(self, ip: str) -> str | None:
        if self.limits is not None:
            reason = self.limits.open_source(ip)
            if reason is not None:
                return reason
        decision = decide(self.rules, self.default, client_ip(ip), None, False)
        return f"denied-{decision.rule}" if decision and decision.action == "deny" else None

    def admit_connect(self, ip: str, client_id: str | None) -> tuple[str | None, float]:
        fields = None if client_id is None else (client_id, None)
        decision = decide(self.rules, self.default, client_ip(ip), fields, True)
        assert decision is not None
        if decision.action == "deny":
            return f"denied-{decision.rule}", 0.0
        if client_id == "" and self.deny_empty:
            return "empty-client-id", 0.0
        if self.limits is None:
            return None, 0.0
        reason = self.limits.admit_connect()
        if reason is not None:
            return reason, 0.0
        if client_id is None:
            return None, 0.0
        delay = self.limits.reconnect_delay(client_id)
        return ("reconnect-too-fast", 0.0) if delay is None else (None, delay)


def c_rules(rules: list[Rule]) -> list:
    out = []
    for rule in rules:
        nets = [(n.version == 6, n.prefixlen, n.network_address.packed.ljust(16, b"\0"))
                for n in rule.sources]  # fmt: skip
        pattern = None if rule.client_id is None else _id_pattern(rule.client_id)
        out.append((rule.action, nets, *(pattern or (None, False))))
    return out


rules_st = st.lists(
    st.builds(
        lambda action, nets, cid: Rule(
            action,
            tuple(ipaddress.ip_network(n) for n in nets),
            cid,
            backend="b" * (action == "route"),
        ),
        st.sampled_from(["allow", "deny", "route"]),
        st.lists(st.sampled_from(NETS), max_size=2),
        st.none() | st.sampled_from(IDS),
    ),
    max_size=4,
)
rate_st = st.none() | st.builds(Rate, st.integers(1, 5), st.sampled_from([1.0, 2.0]),
                                st.integers(1, 4))  # fmt: skip
events_st = st.lists(
    st.tuples(
        st.sampled_from(SOURCES),
        st.none() | st.sampled_from(CLIENT_IDS),
        st.floats(0.0, 0.7),  # seconds since the previous event
        st.booleans(),  # the connection ends right away (gives its per-source slot back)
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(
    rules_st,
    st.sampled_from(["allow", "deny"]),
    st.booleans(),
    rate_st,
    st.none() | st.integers(1, 3),
    rate_st,
    rate_st,
    events_st,
)
def test_same_verdicts_as_the_event_loop_path(
    rules, default, deny_empty, per_source, max_per_source, connect_rate, per_client_id, events
) -> None:
    has_limits = any(x is not None for x in (per_source, max_per_source, connect_rate,
                                             per_client_id))  # fmt: skip
    limits = RateLimitConfig(per_source, max_per_source, connect_rate, per_client_id, 2.0)
    oracle = Oracle(rules, default, limits if has_limits else None, deny_empty)
    rate = lambda r: None if r is None else (r.per_second, float(r.burst))  # noqa: E731
    engine = AdmissionRef(
        default,
        c_rules(rules),
        deny_empty_client_id=deny_empty,
        per_source=rate(per_source),
        max_per_source=max_per_source or 0,
        connect_rate=rate(connect_rate),
        per_client_id=rate(per_client_id),
        max_delay=2.0,
        tracked=limits.tracked,
    )
    for ip, client_id, gap, ends in events:
        oracle.now += gap
        expected = oracle.admit_source(ip)
        verdict, _ = engine.admit_source(ip, oracle.now)
        assert verdict == expected
        if verdict is None:
            cid = None if client_id is None else client_id.encode()
            expected_c, expected_delay = oracle.admit_connect(ip, client_id)
            verdict_c, _, _, delay = engine.admit_connect(ip, cid, oracle.now)
            assert verdict_c == expected_c
            assert abs(delay - expected_delay) < 1e-6
        if ends and (verdict is None or verdict.startswith("denied")) and has_limits:
            oracle.limits.close_source(ip)  # type: ignore[union-attr]
            engine.release(ip)


def test_route_rule_names_its_rule() -> None:
    engine = AdmissionRef("allow", c_rules([Rule("route", (), "tenant-a/*", backend="t")]))
    assert engine.admit_connect("10.0.0.1", b"tenant-a/dev", 0.0) == (None, 0, 0, 0.0)
    assert engine.admit_connect("10.0.0.1", b"tenant-b/dev", 0.0) == (None, None, None, 0.0)


def test_mapped_ipv4_is_its_ipv4_source() -> None:
    """A dual-stack listener shows IPv4 clients as ::ffff:a.b.c.d: one source, for rules and
    limits alike (ratelimit.source_key)."""
    net = [(False, 8, bytes([10]) + bytes(15))]
    engine = AdmissionRef("allow", [("deny", net, None, False)], max_per_source=1)
    assert engine.admit_source("::ffff:10.1.2.3", 0.0) == ("denied-rule-0", 0)
    assert engine.admit_source("::ffff:192.0.2.1", 0.0)[0] is None
    assert engine.admit_source("192.0.2.1", 0.0)[0] == "max-per-source"


def test_ipv6_sources_count_by_prefix() -> None:
    """max_per_source = 1: another address of the same /64 is the same source."""
    engine = AdmissionRef("allow", [], max_per_source=1, ipv6_prefix=64)
    assert engine.admit_source("2001:db8:0:1::1", 0.0)[0] is None
    assert engine.admit_source("2001:db8:0:1::ffff", 0.0)[0] == "max-per-source"
    assert engine.admit_source("2001:db8:0:2::1", 0.0)[0] is None
    engine.release("2001:db8:0:1::1")
    assert engine.admit_source("2001:db8:0:1::2", 0.0)[0] is None


def test_new_rules_keep_the_limiters_state() -> None:
    """A reload that keeps the limits swaps the rules only (access.Guard.reconfigure): the
    per-source count and the buckets go on."""
    engine = AdmissionRef("allow", [], max_per_source=1, per_client_id=(1.0, 1.0))
    assert engine.admit_source("10.0.0.1", 0.0)[0] is None
    assert engine.admit_connect("10.0.0.1", b"dev", 0.0)[3] == 0.0
    net = [(False, 32, bytes([10, 0, 0, 2]) + bytes(12))]
    engine.set_rules("allow", [("deny", net, None, False)], deny_empty_client_id=True)
    assert engine.admit_source("10.0.0.2", 0.0) == ("denied-rule-0", 0)
    assert engine.admit_source("10.0.0.1", 0.0)[0] == "max-per-source"
    assert engine.admit_connect("10.0.0.1", b"dev", 0.0)[3] > 0.9
    assert engine.admit_connect("10.0.0.3", b"", 0.0)[0] == "empty-client-id"
    engine.set_rules("deny", [])
    assert engine.admit_connect("10.0.0.3", b"other", 0.0)[:2] == ("denied-default", None)


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_flood_of_client_ids_and_sources_stays_in_the_tables_made_up_front() -> None:
    """200,000 distinct long client ids and sources against tables of 1,000 keys: memory
    stays what the tables took at configuration, and the limits keep working."""
    engine = AdmissionRef(
        "allow", [], per_source=(1.0, 1.0), per_client_id=(1.0, 1.0), tracked=1000
    )
    engine.admit_connect("10.0.0.1", b"warm-up", 0.0)
    before = _rss_kib()
    for i in range(200_000):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        engine.admit_source(ip, 0.0)
        engine.admit_connect(ip, b"x" * 1000 + str(i).encode(), 0.0)
    assert _rss_kib() - before < 1024  # KiB: nothing per key
    assert engine.admit_connect("10.0.0.1", b"dev", 0.0)[3] == 0.0
    assert engine.admit_connect("10.0.0.1", b"dev", 0.0)[3] > 0.9  # paced still
