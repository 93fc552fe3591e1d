"""Access rules, admission limits and the CONNACKs that explain refusals (no network)."""

from __future__ import annotations

import ipaddress
import re
import tracemalloc

import pytest

from fastmqtt import packets
from fastmqtt.access import client_ip, decide, malformed_connack
from fastmqtt.config import load_config_text
from fastmqtt.config.model import Rate, RateLimitConfig, Rule
from fastmqtt.errors import ConfigError, MalformedPacket
from fastmqtt.mqtt_spec import BAD_PROTOCOL_VERSION
from fastmqtt.parse import inspect_connect
from fastmqtt.ratelimit import BYTES_PER_TRACKED_KEY, RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(Rate(count=2, per=1.0, burst=2), clock)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 0.5  # one token back
    assert bucket.take() and not bucket.take()
    clock.now += 100  # never more than the burst
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def test_reserve_queues_callers_and_refuses_past_the_longest_wait() -> None:
    bucket = TokenBucket(Rate(count=1, per=1.0, burst=1), Clock())
    assert [bucket.reserve(2.5) for _ in range(5)] == [0.0, 1.0, 2.0, None, None]


def test_concurrency_per_source_is_released() -> None:
    limiter = RateLimiter(RateLimitConfig(max_per_source=2))
    assert limiter.open_source("a") is None and limiter.open_source("a") is None
    assert limiter.open_source("a") == "max-per-source"
    assert limiter.open_source("b") is None
    limiter.close_source("a")
    assert limiter.open_source("a") is None


def test_rate_per_source_and_memory_bound() -> None:
    clock = Clock()
    config = RateLimitConfig(per_source=Rate(3, 1.0, 3), tracked=100)
    limiter = RateLimiter(config, clock)
    assert [limiter.open_source("x") for _ in range(4)] == [None, None, None, "rate-per-source"]
    for i in range(10_000):  # a spoofing flood: one connection per address, all closed again
        assert limiter.open_source(f"10.0.{i // 256}.{i % 256}") is None
        limiter.close_source(f"10.0.{i // 256}.{i % 256}")
    assert limiter.tracked_keys() <= 100 + 1  # the LRU plus x's live count


def test_reconnect_delay_per_client_id() -> None:
    clock = Clock()
    config = RateLimitConfig(per_client_id=Rate(1, 2.0, 1), max_delay=3.0)
    limiter = RateLimiter(config, clock)
    assert limiter.reconnect_delay("dev") == 0.0
    assert limiter.reconnect_delay("dev") == pytest.approx(2.0)
    assert limiter.reconnect_delay("dev") is None  # 4 s away: refused
    assert limiter.reconnect_delay("other") == 0.0
    assert limiter.reconnect_delay("") == 0.0  # broker-assigned ids are not one device


def test_client_ids_are_tracked_in_a_fixed_size_whatever_their_length() -> None:
    """``tracked`` keys cost at most BYTES_PER_TRACKED_KEY each (docs/hardening.md), also
    when every id is as long as MQTT allows."""
    tracked = 500
    config = RateLimitConfig(per_client_id=Rate(1, 60.0, 1), tracked=tracked)
    limiter = RateLimiter(config, Clock())  # no refill, however long the loop takes
    tail = "x" * 65_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(tracked * 2):
            assert limiter.reconnect_delay(f"{i:06d}{tail}") == 0.0
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert limiter.tracked_keys() == tracked
    assert held <= tracked * BYTES_PER_TRACKED_KEY, held / tracked
    assert limiter.reconnect_delay(f"{tracked * 2 - 1:06d}{tail}") is None  # still paced


@pytest.mark.parametrize(
    ("prefix", "same", "other"),
    [
        (64, ("2001:db8:1:2::a", "2001:db8:1:2:ffff::1"), "2001:db8:1:3::a"),
        (56, ("2001:db8:1:200::1", "2001:db8:1:2ff::1"), "2001:db8:1:300::1"),
        (128, ("2001:db8::1", "2001:db8::1"), "2001:db8::2"),
    ],
)
def test_ipv6_sources_are_grouped_by_prefix(prefix: int, same: tuple, other: str) -> None:
    limiter = RateLimiter(RateLimitConfig(max_per_source=1, ipv6_prefix=prefix))
    assert limiter.open_source(same[0]) is None
    assert limiter.open_source(same[1]) == "max-per-source"  # one LAN, one budget
    assert limiter.open_source(other) is None
    limiter.close_source(same[0])
    assert limiter.open_source(same[1]) is None


def test_ipv4_sources_stay_per_address() -> None:
    limiter = RateLimiter(RateLimitConfig(per_source=Rate(1, 60.0, 1)), Clock())
    assert limiter.open_source("10.0.0.1") is None
    assert limiter.open_source("10.0.0.1") == "rate-per-source"
    assert limiter.open_source("10.0.0.2") is None  # its /24 neighbour has its own bucket
    assert limiter.open_source("::ffff:10.0.0.3") is None  # dual-stack listeners map IPv4
    assert limiter.open_source("10.0.0.3") == "rate-per-source"


def test_an_ipv6_flood_from_one_prefix_holds_one_key() -> None:
    # The clock stands still: on time.monotonic a loop slower than 0.2 s (a busy machine)
    # had a sixth token back.
    config = RateLimitConfig(per_source=Rate(5, 1.0, 5), tracked=100)
    limiter = RateLimiter(config, Clock())
    admitted = 0
    for i in range(10_000):  # one address per connection, all in 2001:db8:1:2::/64
        source = f"2001:db8:1:2:{i >> 16:x}:{i & 0xFFFF:x}::1"
        admitted += limiter.open_source(source) is None
    assert admitted == 5
    assert limiter.tracked_keys() == 2  # the bucket and the live count of one /64


RULES = (
    Rule("deny", sources=(ipaddress.ip_network("10.0.0.0/8"),)),
    Rule("route", client_id="tenant-a/*", backend="a"),
    Rule("deny", client_id_regex=re.compile(r"bad-\d+")),
    Rule("allow", username="ops-*", sources=(ipaddress.ip_network("192.0.2.0/24"),)),
)


@pytest.mark.parametrize(
    ("ip", "fields", "final", "expected"),
    [
        ("10.1.2.3", None, False, ("deny", None, "rule-0")),  # decided before any CONNECT
        ("127.0.0.1", None, False, None),  # rule 1 needs the client id
        ("127.0.0.1", None, True, ("allow", None, "default")),  # tcp frontend: never known
        ("127.0.0.1", ("tenant-a/x", None), True, ("route", "a", "rule-1")),
        ("127.0.0.1", ("Tenant-a/x", None), True, ("allow", None, "default")),  # case matters
        ("127.0.0.1", ("bad-12", None), True, ("deny", None, "rule-2")),
        ("127.0.0.1", ("bad-12x", None), True, ("allow", None, "default")),  # whole id
        ("192.0.2.9", ("x", "ops-1"), True, ("allow", None, "rule-3")),
        ("192.0.2.9", ("x", None), True, ("allow", None, "default")),  # no username
        ("10.1.2.3", ("tenant-a/x", None), True, ("deny", None, "rule-0")),  # first match
    ],
)
def test_first_matching_rule_decides(
    ip: str, fields: tuple | None, final: bool, expected: tuple | None
) -> None:
    decision = decide(RULES, "allow", ipaddress.ip_address(ip), fields, final)
    assert (None if decision is None else tuple(decision)) == expected


def test_ipv4_clients_of_a_dual_stack_listener_match_ipv4_rules() -> None:
    assert client_ip("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")


def _reason(data: bytes, accept_bridge: bool = True) -> MalformedPacket:
    with pytest.raises(MalformedPacket) as info:
        inspect_connect(data, accept_bridge=accept_bridge)
    return info.value


def _connack_for(data: bytes, accept_bridge: bool = True) -> bytes | None:
    return malformed_connack(_reason(data, accept_bridge))


def test_connack_codes_for_invalid_connects() -> None:
    v4 = packets.connect("ok", version=4)
    v5 = packets.connect("ok", version=5)
    # an unknown level: 3.1.1's return code 1, the only CONNACK every client can read; 5.0's
    # 0x84 only for level 5 (a bridge's 0x85 when allow_bridge is off), as Mosquitto answers
    for level in (b"\x02", b"\x06", b"\x07", b"\x86", b"\xff"):
        assert _connack_for(v4.replace(b"\x04\x02", level + b"\x02", 1)) == b"\x20\x02\x00\x01"
    bridge = _reason(v5.replace(b"\x05\x02", b"\x85\x02", 1), accept_bridge=False)
    assert (bridge.reason, bridge.level, bridge.field) == (BAD_PROTOCOL_VERSION, 0x85, None)
    assert malformed_connack(bridge) == b"\x20\x03\x00\x84\x00"
    assert _connack_for(packets.connect("a\x00b", version=4)) == b"\x20\x02\x00\x02"
    assert _connack_for(packets.connect("a\x00b", version=5)) == b"\x20\x03\x00\x85\x00"
    # bad UTF-8 in the username, not the client id: 3.1.1 has no code for it, 5.0 says malformed
    assert _connack_for(packets.connect("ok", 4, username="\x00")) is None
    assert _connack_for(packets.connect("ok", 5, username="\x00")) == b"\x20\x03\x00\x81\x00"
    assert _connack_for(b"GET / HTTP/1.1\r\n\r\n") is None  # not MQTT: no CONNACK it could read
    big = packets.connect("x" * 65_000, 5, username="u" * 2_000)  # over 64 KiB
    exc = _reason(big)
    assert exc.reason == "packet-too-large"
    assert malformed_connack(exc) == b"\x20\x03\x00\x95\x00"
    assert _connack_for(v5[:-1] + b"\xff") == b"\x20\x03\x00\x85\x00"


LB = """
[frontend.m]
bind = "127.0.0.1:1883"
backend = "b"
{extra}
[backend.b]
[[backend.b.server]]
name = "x"
address = "127.0.0.1:1"
"""


def test_config_reads_rules_and_limits() -> None:
    extra = """
rate_limit = { per_source = "50/s", max_per_source = 1000, connect_rate = "3/10s" }
[[frontend.m.rule]]
action = "route"
client_id = "t-a/*"
source = ["10.0.0.0/8", "2001:db8::/32"]
backend = "b"
"""
    frontend = load_config_text(LB.format(extra=extra)).frontends[0]
    assert frontend.rate_limit is not None
    assert frontend.rate_limit.per_source == Rate(50, 1.0, 50)
    assert frontend.rate_limit.connect_rate == Rate(3, 10.0, 3)
    assert frontend.rate_limit.ipv6_prefix == 64  # a subscriber's LAN is one source
    assert frontend.rules[0].backend == "b" and len(frontend.rules[0].sources) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('rate_limit = { per_source = "fast" }', 'expected a rate like "50/s"'),
        ("rate_limit = { max_per_source = 0 }", "max_per_source: expected an integer"),
        ("rate_limit = { ipv6_prefix = 129 }", "ipv6_prefix: expected an integer 1..128"),
        ('[[frontend.m.rule]]\naction = "route"', 'is required by action = "route"'),
        ('[[frontend.m.rule]]\naction = "deny"\nbackend = "b"', 'only goes with action = "route"'),
        ('[[frontend.m.rule]]\naction = "route"\nbackend = "c"', "no [backend.c] section"),
        ('[[frontend.m.rule]]\naction = "deny"\nsource = "10.0.0.300/8"', "expected a CIDR"),
        ('[[frontend.m.rule]]\naction = "deny"\nclient_id_regex = "("', "regular expression"),
        ('[[frontend.m.rule]]\naction = "block"', "rule[0].action: expected one of"),
    ],
)
def test_config_errors_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(LB.format(extra=extra))
    assert message in str(info.value)
