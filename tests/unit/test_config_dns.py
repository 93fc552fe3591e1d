"""[resolvers.NAME], [[backend.NAME.server_template]] and the name keys of a server: what they
load to, and the exact errors and warnings `fastmqtt check` gives for them."""

from __future__ import annotations

import pytest

from fastmqtt.config import ServerConfig, load_config_text
from fastmqtt.config.load import _validate_text

HEAD = '[frontend.f]\nbind = "127.0.0.1:1883"\nbackend = "b"\n[backend.b]\n'
DNS = '[resolvers.dns]\nnameservers = ["127.0.0.1:5353", "10.96.0.10", "[fd00::53]:53"]\n'


def _problems(text: str) -> tuple[list[str], list[str]]:
    _, errors, warnings = _validate_text(text, "lb.toml")
    return errors, warnings


def test_resolvers_section_defaults_and_values():
    config = load_config_text(
        DNS
        + 'interval = "2s"\nhold_nx = "5s"\nattempts = 2\n'
        + HEAD
        + '[[backend.b.server]]\nname = "n1"\naddress = "10.0.0.1:1883"\n'
    )
    dns = config.resolvers["dns"]
    assert dns.nameservers == (("127.0.0.1", 5353), ("10.96.0.10", 53), ("fd00::53", 53))
    assert (dns.interval, dns.hold_nx, dns.hold_other, dns.attempts) == (2.0, 5.0, 30.0, 2)
    assert (dns.timeout, dns.retry, dns.hold_obsolete, dns.follow_ttl) == (1.0, 1.0, 0.0, False)
    assert dns.uses_dns
    assert config.resolvers_for(None).uses_dns is False  # no section named: the libc


def test_a_template_expands_to_its_servers_after_the_others():
    config = load_config_text(
        DNS + HEAD + '[[backend.b.server]]\nname = "n1"\naddress = "broker.example:1883"\n'
        'resolvers = "dns"\nresolve_prefer = "ipv4"\ninit_addr = "10.0.0.5"\n'
        '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\nfirst = 5\n'
        'address = "_mqtt._tcp.emqx.svc"\nresolvers = "dns"\nweight = 3\ncheck = true\n'
    )
    backend = config.backends["b"]
    assert backend.servers[0] == ServerConfig(
        "n1", "broker.example", 1883, resolvers="dns", resolve_prefer="ipv4", init_addr="10.0.0.5"
    )
    assert [
        (s.name, s.host, s.port, s.weight, s.check, s.template) for s in backend.servers[1:]
    ] == [
        ("emqx5", "_mqtt._tcp.emqx.svc", 0, 3, True, "emqx"),
        ("emqx6", "_mqtt._tcp.emqx.svc", 0, 3, True, "emqx"),
    ]
    assert backend.server_templates[0].type == "srv"  # a name starting with "_" is an SRV name


def test_a_backend_of_templates_only_needs_no_server():
    config = load_config_text(
        HEAD + '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 3\n'
        'address = "emqx-headless.mqtt.svc.cluster.local:1883"\n'
    )
    template = config.backends["b"].server_templates[0]
    assert (template.type, template.port, template.resolvers) == ("any", 1883, None)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            DNS + HEAD + '[[backend.b.server]]\nname = "n1"\naddress = "x.example:1883"\n'
            'resolvers = "dsn"\n',
            "lb.toml: backend.b.server[0].resolvers: no [resolvers.dsn] section "
            "(did you mean `dns`?)",
        ),
        (
            HEAD + '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\n'
            'address = "_mqtt._tcp.emqx.svc"\n',
            "lb.toml: backend.b.server_template[0].type: SRV records need resolvers = NAME, a "
            "[resolvers.NAME] with nameservers or parse_resolv_conf = true (the libc's resolver "
            "cannot read them)",
        ),
        (
            DNS + HEAD + '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\n'
            'address = "_mqtt._tcp.emqx.svc:1883"\nresolvers = "dns"\n',
            "lb.toml: backend.b.server_template[0].address: SRV records carry the port: write "
            '"_mqtt._tcp.emqx.svc" without :1883',
        ),
        (
            HEAD + '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\n'
            'address = "emqx.svc"\n',
            'lb.toml: backend.b.server_template[0].address: type = "any" needs a port: '
            '"emqx.svc:1883"',
        ),
        (
            HEAD + '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 2\n'
            'address = "10.0.0.1:1883"\n',
            'lb.toml: backend.b.server_template[0].address: expected "name:port" (A/AAAA records) '
            'or an SRV name like "_mqtt._tcp.emqx.svc" (a name: an IP needs no template), '
            'got "10.0.0.1:1883"',
        ),
        (
            HEAD + '[[backend.b.server]]\nname = "emqx2"\naddress = "10.0.0.1:1883"\n'
            '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 3\naddress = "e.svc:1883"\n',
            'lb.toml: backend.b.server_template[0].prefix: makes a server named "emqx2", '
            "as server[0] does",
        ),
        (
            HEAD
            + '[[backend.b.server_template]]\nprefix = "emqx"\ncount = 0\naddress = "e.svc:1"\n',
            "lb.toml: backend.b.server_template[0].count: expected an integer 1..1024, got 0",
        ),
        (
            '[resolvers.dns]\nnameservers = ["dns.example"]\n'
            + HEAD
            + '[[backend.b.server]]\nname = "n1"\naddress = "10.0.0.1:1883"\n',
            "lb.toml: resolvers.dns.nameservers: expected a list of nameserver IPs like "
            '["10.96.0.10", "127.0.0.1:5353", "[fd00::53]:53"] (an IP: a nameserver\'s name would '
            'need one), got "dns.example"',
        ),
        (
            "[resolvers.sys]\nfollow_ttl = true\n"
            + HEAD
            + '[[backend.b.server]]\nname = "n1"\naddress = "10.0.0.1:1883"\n',
            "lb.toml: resolvers.sys.follow_ttl: needs nameservers or parse_resolv_conf = true "
            "(the libc's resolver tells no TTL)",
        ),
        (
            DNS
            + 'follow_ttl = true\nttl_min = "1m"\nttl_max = "30s"\n'
            + HEAD
            + '[[backend.b.server]]\nname = "n1"\naddress = "10.0.0.1:1883"\n',
            "lb.toml: resolvers.dns.ttl_min: is above ttl_max (30s)",
        ),
        (
            DNS
            + 'hold_nx = "forever"\n'
            + HEAD
            + '[[backend.b.server]]\nname = "n1"\naddress = "10.0.0.1:1883"\n',
            'lb.toml: resolvers.dns.hold_nx: expected a duration like "250ms", "10s", "30m" or '
            '"1h" (at most "7d"), got "forever"',
        ),
    ],
)
def test_errors_name_file_key_and_what_was_expected(text, error):
    errors, _ = _problems(text)
    assert errors == [error]


def test_name_keys_on_an_ip_have_no_effect():
    _, warnings = _problems(
        DNS + 'ttl_max = "1m"\n' + HEAD + '[[backend.b.server]]\nname = "n1"\n'
        'address = "10.0.0.1:1883"\nresolvers = "dns"\ninit_addr = "10.0.0.2"\n'
    )
    assert warnings == [
        "lb.toml: backend.b.server[0].resolvers: has no effect unless the address is a name",
        "lb.toml: backend.b.server[0].init_addr: has no effect unless the address is a name",
        "lb.toml: resolvers.dns.ttl_max: has no effect unless follow_ttl = true",
    ]
