"""discovery.py: template slots (property-tested), the DNS client and the libc resolver against
a real DNS server on loopback, and Watch placing real Backend servers as records change."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.dns import DnsServer

from fastmqtt.backend import Backend, Server
from fastmqtt.config import Config, ResolversConfig, load_config_text
from fastmqtt.discovery import (
    Libc,
    Nameservers,
    ResolutionFailed,
    Watch,
    assign_slots,
    check_names,
    make_resolver,
    names,
)

# -- template slots ---------------------------------------------------------------------------

_KEYS = st.sampled_from([f"10.0.0.{i}" for i in range(1, 10)])


@st.composite
def _slots(draw: Callable) -> list[str | None]:
    """A template's slots: each key at most once, None for a free slot."""
    keys = draw(st.lists(_KEYS, max_size=8, unique=True))
    free = draw(st.lists(st.none(), max_size=4))
    return draw(st.permutations(keys + free))


@given(current=_slots(), answer=st.lists(_KEYS, max_size=12))
def test_slots_keep_their_key_and_new_keys_take_the_first_free_ones(current, answer):
    out = assign_slots(current, answer)
    present = set(answer)
    assert len(out) == len(current)
    for i, key in enumerate(current):
        if key in present:
            assert out[i] == key  # an address keeps its server while it stays in the answer
    filled = [key for key in out if key is not None]
    assert len(filled) == len(set(filled)) and set(filled) <= present
    assert len(filled) == min(len(present), len(current))  # every slot used while keys last
    freed = [i for i, key in enumerate(current) if key not in present]
    new = [key for key in dict.fromkeys(answer) if key not in current][: len(freed)]
    assert [out[i] for i in freed] == new + [None] * (len(freed) - len(new))


def test_slots_as_haproxy_fills_them():
    """As Debian's HAProxy 2.6 did with server-template emqx 4 (docs/running.md)."""
    slots = assign_slots([None] * 4, ["127.0.0.2", "127.0.0.3"])
    assert slots == ["127.0.0.2", "127.0.0.3", None, None]
    slots = assign_slots(slots, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    assert slots == ["127.0.0.2", "127.0.0.3", "127.0.0.4", None]
    slots = assign_slots(slots, ["127.0.0.3", "127.0.0.4"])
    assert slots == [None, "127.0.0.3", "127.0.0.4", None]
    assert assign_slots(["127.0.0.2", None], ["127.0.0.9"]) == ["127.0.0.9", None]


# -- resolvers against a real DNS server ---------------------------------------------------------


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _nameservers(dns: DnsServer, **settings: Any) -> Nameservers:
    host, port = dns.nameserver.rsplit(":", 1)
    return Nameservers(ResolversConfig("dns", nameservers=((host, int(port)),), **settings))


def _ips(answer: Any) -> list[str]:
    return [e.sockaddr[0] for e in answer.found]


def test_nameservers_read_a_aaaa_and_their_ttl(dns):
    dns.a("emqx.test", ["10.0.0.1", "10.0.0.2"], ttl=7)
    dns.aaaa("emqx.test", ["fd00::1"], ttl=3)

    async def main() -> None:
        resolver = _nameservers(dns)
        a = await resolver.lookup("emqx.test", 1883, "a", (), 10)
        assert (_ips(a), a.ttl) == (["10.0.0.1", "10.0.0.2"], 7)
        assert a.found[0].sockaddr == ("10.0.0.1", 1883)
        aaaa = await resolver.lookup("emqx.test", 1883, "aaaa", (), 10)
        assert (aaaa.found[0].family, aaaa.found[0].sockaddr[:2]) == (
            socket.AF_INET6,
            ("fd00::1", 1883),
        )
        both = await resolver.lookup("emqx.test", 1883, "any", (), 10)
        assert (_ips(both), both.ttl) == (["fd00::1", "10.0.0.1", "10.0.0.2"], 3)

    _run(main())


def test_nameservers_read_srv_records_with_and_without_glue(dns):
    dns.srv("_mqtt._tcp.emqx.test", [("b1.test", 1884), ("b2.test", 1885), ("gone.test", 1886)])
    dns.a("b1.test", ["10.0.0.1"], ttl=9)
    dns.a("b2.test", ["10.0.0.2"], ttl=2)

    async def main() -> None:
        resolver = _nameservers(dns)
        for glue in (True, False):
            dns.zone.glue = glue
            answer = await resolver.lookup("_mqtt._tcp.emqx.test", 0, "srv", (), 10)
            assert [(e.hostname, e.sockaddr) for e in answer.found] == [
                ("b1.test", ("10.0.0.1", 1884)),
                ("b2.test", ("10.0.0.2", 1885)),
            ]  # gone.test has no address: that record alone is left out
            assert answer.ttl == 2  # the shortest of the SRV and address TTLs
        limited = await resolver.lookup("_mqtt._tcp.emqx.test", 0, "srv", {"b2.test:1885"}, 1)
        assert [e.hostname for e in limited.found] == ["b2.test"]  # slot holders first

    _run(main())


@pytest.mark.parametrize(
    ("setup", "kind", "words"),
    [
        (lambda dns: None, "nx", "NXDOMAIN"),
        (lambda dns: dns.fail("emqx.test", "REFUSED"), "refused", "REFUSED"),
        (lambda dns: dns.fail("emqx.test", "SERVFAIL"), "other", "SERVFAIL"),
        (lambda dns: dns.zone.silent.add("emqx.test"), "timeout", "no answer within 0.6s"),
        (lambda dns: dns.aaaa("emqx.test", ["fd00::1"]), "other", "no A record"),
    ],
)
def test_nameserver_failures_name_the_host_and_their_kind(dns, setup, kind, words):
    setup(dns)

    async def main() -> ResolutionFailed:
        with pytest.raises(ResolutionFailed) as failed:
            await _nameservers(dns, timeout=0.3, attempts=2).lookup("emqx.test", 1, "a", (), 1)
        return failed.value

    failure = _run(main())
    assert failure.kind == kind
    assert str(failure).startswith("emqx.test: ") and words in str(failure)


def test_a_nameserver_that_is_not_there_fails_the_lookup(dns):
    dns.stop()  # its port is closed now: the kernel refuses the datagrams

    async def main() -> None:
        with pytest.raises(ResolutionFailed, match=r"emqx\.test"):
            await _nameservers(dns, timeout=0.3, attempts=2).lookup("emqx.test", 1, "a", (), 1)

    _run(main())


def test_libc_reads_etc_hosts():
    async def main() -> None:
        answer = await Libc().lookup("localhost", 1883, "a", (), 1)
        assert answer.found[0].sockaddr == ("127.0.0.1", 1883) and answer.ttl is None

    _run(main())


def test_resolvers_without_nameservers_are_the_libc():
    assert isinstance(make_resolver(ResolversConfig("sys")), Libc)


# -- Watch: placing real servers -----------------------------------------------------------------


def _config(dns: DnsServer, servers: str, resolvers: str = "") -> Config:
    return load_config_text(
        f'[resolvers.dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "300ms"\n{resolvers}\n'
        '[frontend.f]\nbind = "127.0.0.1:1883"\nbackend = "b"\n[backend.b]\n' + servers
    )


def _watch(config: Config) -> tuple[Backend, Watch, list[list[str]]]:
    """The backend, the Watch of its first name, and the names of the servers each
    servers_changed call carried."""
    backend = Backend(config.backends["b"])
    moved: list[list[str]] = []
    backend.subscribe(lambda _, servers, joined: moved.append([s.name for s in servers]))
    name = names(config)[0]
    settings = config.resolvers_for(name.resolvers)
    return backend, Watch(backend, name, settings, make_resolver(settings)), moved


def _where(servers: list[Server]) -> list[str | None]:
    return [s.sockaddr[0] if s.sockaddr else None for s in servers]


def test_a_server_keeps_its_address_while_the_answer_has_it(dns):
    dns.a("emqx.test", ["10.0.0.1", "10.0.0.2"])
    server = '[[backend.b.server]]\nname = "n1"\naddress = "emqx.test:1883"\nresolvers = "dns"\n'

    async def main() -> None:
        backend, watch, moved = _watch(_config(dns, server))
        assert backend.servers[0].sockaddr is None and not backend.servers[0].accepts_new()
        assert await watch.refresh() == 10.0  # the default interval
        assert _where(backend.servers) == ["10.0.0.1"] and moved == [["n1"]]
        dns.a("emqx.test", ["10.0.0.3", "10.0.0.1"])  # round-robin DNS reorders answers
        await watch.refresh()
        assert _where(backend.servers) == ["10.0.0.1"] and len(moved) == 1
        dns.a("emqx.test", ["10.0.0.3"])
        await watch.refresh()
        assert _where(backend.servers) == ["10.0.0.3"] and moved[-1] == ["n1"]
        assert backend.servers[0].resolution is None

    _run(main())


@pytest.mark.parametrize(("prefer", "expected"), [("ipv4", "10.0.0.1"), ("ipv6", "fd00::1")])
def test_resolve_prefer_picks_the_family(dns, prefer, expected):
    dns.a("emqx.test", ["10.0.0.1"])
    dns.aaaa("emqx.test", ["fd00::1"])
    server = (
        '[[backend.b.server]]\nname = "n1"\naddress = "emqx.test:1883"\nresolvers = "dns"\n'
        f'resolve_prefer = "{prefer}"\n'
    )

    async def main() -> None:
        backend, watch, _ = _watch(_config(dns, server))
        await watch.refresh()
        assert _where(backend.servers) == [expected]

    _run(main())


def test_a_failing_name_keeps_its_address_for_the_hold_then_is_down(dns):
    dns.a("emqx.test", ["10.0.0.1"])
    server = '[[backend.b.server]]\nname = "n1"\naddress = "emqx.test:1883"\nresolvers = "dns"\n'
    holds = 'hold_nx = "400ms"\nretry = "50ms"\n'

    async def main() -> None:
        backend, watch, moved = _watch(_config(dns, server, holds))
        n1 = backend.servers[0]
        await watch.refresh()
        dns.a("emqx.test", [])  # NXDOMAIN now
        assert await watch.refresh() == 0.05  # retried sooner than the interval
        assert _where([n1]) == ["10.0.0.1"]  # held: a DNS hiccup takes no server out
        assert n1.resolution == "resolution failed: emqx.test: no such name (NXDOMAIN)"
        await asyncio.sleep(0.45)
        await watch.refresh()
        assert _where([n1]) == [None] and moved[-1] == ["n1"]
        assert "emqx.test" in (n1.resolution or "")
        dns.a("emqx.test", ["10.0.0.2"])
        await watch.refresh()
        assert (_where([n1]), n1.resolution) == (["10.0.0.2"], None)

    _run(main())


def test_follow_ttl_within_its_bounds(dns):
    server = '[[backend.b.server]]\nname = "n1"\naddress = "emqx.test:1883"\nresolvers = "dns"\n'
    ttls = 'follow_ttl = true\nttl_min = "2s"\nttl_max = "60s"\n'

    async def main() -> None:
        _, watch, _ = _watch(_config(dns, server, ttls))
        for ttl, expected in ((30, 30.0), (1, 2.0), (3600, 60.0)):
            dns.a("emqx.test", ["10.0.0.1"], ttl=ttl)
            assert await watch.refresh() == expected

    _run(main())


TEMPLATE3 = (
    '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 3\n'
    'address = "emqx.test:1883"\nresolvers = "dns"\n'
)


def test_a_template_grows_and_shrinks_keeping_each_address_in_its_server(dns):

    async def main() -> None:
        dns.a("emqx.test", ["10.0.0.1", "10.0.0.2"])
        backend, watch, moved = _watch(_config(dns, TEMPLATE3))
        assert [s.name for s in backend.servers] == ["emqx1", "emqx2", "emqx3"]
        await watch.refresh()
        assert _where(backend.servers) == ["10.0.0.1", "10.0.0.2", None]
        assert backend.servers[2].resolution == "no address: emqx.test gave 2 for 3 servers"
        dns.a("emqx.test", ["10.0.0.4", "10.0.0.3", "10.0.0.2", "10.0.0.1"])  # one too many
        await watch.refresh()  # new ones in address order, not the answer's: workers agree
        assert _where(backend.servers) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        dns.a("emqx.test", ["10.0.0.2", "10.0.0.4"])
        await watch.refresh()
        assert _where(backend.servers) == ["10.0.0.4", "10.0.0.2", None]
        assert moved[-1] == ["emqx1", "emqx3"]  # emqx2 did not move

    _run(main())


def test_servers_that_get_an_address_after_having_none_are_told_as_joined(dns):
    """What automatic rebalance counts as a server added: a free slot taking a record, not a
    slot whose record was replaced by another in one answer (an address change)."""

    async def main() -> None:
        dns.a("emqx.test", ["10.0.0.1", "10.0.0.2"])
        backend, watch, _ = _watch(_config(dns, TEMPLATE3))
        joined: list[list[str]] = []
        backend.subscribe(lambda _, servers, new: joined.append([s.name for s in new]))
        await watch.refresh()
        assert joined == [["emqx1", "emqx2"]]
        dns.a("emqx.test", ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        await watch.refresh()
        assert joined[-1] == ["emqx3"]
        dns.a("emqx.test", ["10.0.0.4", "10.0.0.2", "10.0.0.3"])  # 10.0.0.1 replaced
        await watch.refresh()
        assert _where(backend.servers) == ["10.0.0.4", "10.0.0.2", "10.0.0.3"]
        assert joined[-1] == []
        dns.a("emqx.test", ["10.0.0.4", "10.0.0.2"])
        await watch.refresh()
        assert joined[-1] == []  # emqx3 lost its address
        dns.a("emqx.test", ["10.0.0.4", "10.0.0.2", "10.0.0.5"])
        await watch.refresh()
        assert joined[-1] == ["emqx3"] and len(joined) == 5

    _run(main())


def test_hold_obsolete_keeps_a_vanished_address_in_its_slot(dns):
    template = (
        '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\n'
        'address = "emqx.test:1883"\nresolvers = "dns"\n'
    )

    async def main() -> None:
        dns.a("emqx.test", ["10.0.0.1", "10.0.0.2"])
        backend, watch, _ = _watch(_config(dns, template, 'hold_obsolete = "300ms"\n'))
        await watch.refresh()
        dns.a("emqx.test", ["10.0.0.2", "10.0.0.3"])  # a DNS server that answers a subset
        await watch.refresh()
        assert _where(backend.servers) == ["10.0.0.1", "10.0.0.2"]
        await asyncio.sleep(0.35)
        await watch.refresh()
        assert _where(backend.servers) == ["10.0.0.3", "10.0.0.2"]

    _run(main())


def test_srv_template_servers_take_target_and_port(dns):
    dns.srv("_mqtt._tcp.emqx.test", [("b1.test", 1884), ("b2.test", 1885)])
    dns.a("b1.test", ["10.0.0.1"])
    dns.a("b2.test", ["10.0.0.2"])
    template = (
        '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\n'
        'address = "_mqtt._tcp.emqx.test"\nresolvers = "dns"\n'
    )

    async def main() -> None:
        backend, watch, _ = _watch(_config(dns, template))
        await watch.refresh()
        assert [(s.hostname, s.sockaddr) for s in backend.servers] == [
            ("b1.test", ("10.0.0.1", 1884)),
            ("b2.test", ("10.0.0.2", 1885)),
        ]
        dns.a("b1.test", ["10.0.0.9"])  # the target moved: it keeps its server
        await watch.refresh()
        assert backend.servers[0].sockaddr == ("10.0.0.9", 1884)

    _run(main())


def test_a_reload_keeps_the_address_found_for_the_same_name(dns):
    dns.a("emqx.test", ["10.0.0.1"])
    server = '[[backend.b.server]]\nname = "n1"\naddress = "emqx.test:1883"\nresolvers = "dns"\n'

    async def main() -> None:
        backend, watch, _ = _watch(_config(dns, server))
        await watch.refresh()
        backend.reconfigure(_config(dns, server + "weight = 3\n").backends["b"])
        assert _where(backend.servers) == ["10.0.0.1"]  # no lookup needed, no gap
        backend.reconfigure(_config(dns, server.replace("1883", "1884")).backends["b"])
        assert _where(backend.servers) == [None]  # another port: looked up again

    _run(main())


# -- `fastmqtt check` ----------------------------------------------------------------------------


def test_check_warns_about_names_that_do_not_resolve(dns):
    dns.a("ok.test", ["10.0.0.1"])
    servers = (
        '[[backend.b.server]]\nname = "n1"\naddress = "ok.test:1883"\nresolvers = "dns"\n'
        '[[backend.b.server]]\nname = "n2"\naddress = "gone.test:1883"\nresolvers = "dns"\n'
        '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\n'
        'address = "_mqtt._tcp.emqx.test"\nresolvers = "dns"\n'
    )
    assert check_names(_config(dns, servers)) == [
        "<string>: backend.b.server[1].address: gone.test: no such name (NXDOMAIN) "
        "(resolvers dns): serve starts this server DOWN and keeps trying",
        "<string>: backend.b.server_template[0].address: _mqtt._tcp.emqx.test: no such name "
        "(NXDOMAIN) (resolvers dns): serve starts its servers empty and keeps trying",
    ]


@pytest.mark.parametrize(("prefer", "expected"), [("ipv4", "10.0.0.1"), ("ipv6", "fd00::1")])
def test_a_template_takes_the_preferred_family_of_an_srv_target(dns, prefer, expected):
    dns.srv("_mqtt._tcp.emqx.test", [("b1.test", 1884)])
    dns.a("b1.test", ["10.0.0.1"])
    dns.aaaa("b1.test", ["fd00::1"])
    template = (
        '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 1\n'
        f'address = "_mqtt._tcp.emqx.test"\nresolvers = "dns"\nresolve_prefer = "{prefer}"\n'
    )

    async def main() -> None:
        backend, watch, _ = _watch(_config(dns, template))
        await watch.refresh()
        assert _where(backend.servers) == [expected]

    _run(main())
