"""`fastmqtt convert`: resolvers sections, server-template, init-addr, resolvers and
resolve-prefer on server lines (HAProxy accepts the input: `haproxy -c`; `fastmqtt check`
accepts the output)."""

from __future__ import annotations

from tests.unit.test_convert import assert_haproxy_accepts, convert_and_check

from fastmqtt.tools import convert as cv

# init-addr none / an IP: `haproxy -c` looks names up with the libc otherwise
K8S = """\
resolvers k8s
    nameserver dns1 10.96.0.10:53
    nameserver dns2 udp@10.96.0.11:53
    nameserver dns3 tcp@[fd00::53]:53
    resolve_retries 2
    timeout resolve 5s
    timeout retry 500ms
    hold valid 10s
    hold nx 20s
    hold obsolete 30s
    accepted_payload_size 8192

defaults
    mode tcp
    timeout connect 5s
    timeout client 240s
    timeout server 240s
    default-server init-addr none resolvers k8s

frontend mqtt
    bind 127.0.0.1:1883
    default_backend emqx

backend emqx
    server-template emqx 5 _mqtt._tcp.emqx-headless.mqtt.invalid check inter 2s
    server-template pod 3-5 emqx-headless.mqtt.invalid:1883 resolve-prefer ipv4 weight 2
    server static broker.invalid:1883 init-addr 10.0.0.7 resolvers k8s resolve-prefer ipv6
    server byip 10.0.0.9:1883
"""


def test_resolvers_and_templates_convert(tmp_path):
    assert_haproxy_accepts(K8S, tmp_path)
    config, report = convert_and_check(K8S, tmp_path)
    assert report.skipped == []
    assert report.notes == [
        "haproxy.cfg:4: note: tcp@[fd00::53]:53: asked over UDP (TCP when an answer is truncated)",
        "haproxy.cfg:8: note: hold valid: HAProxy 2.6 applies it to do-resolve actions only, "
        "not to servers",
        "haproxy.cfg:11: note: accepted_payload_size: fastmqtt asks again over TCP when truncated",
    ]
    k8s = config.resolvers["k8s"]
    assert k8s.nameservers == (("10.96.0.10", 53), ("10.96.0.11", 53), ("fd00::53", 53))
    assert (k8s.interval, k8s.retry, k8s.timeout, k8s.attempts) == (5.0, 5.0, 0.5, 2)
    assert (k8s.hold_nx, k8s.hold_other, k8s.hold_obsolete) == (20.0, 30.0, 30.0)
    backend = config.backends["emqx"]
    srv, pods = backend.server_templates
    assert (srv.prefix, srv.count, srv.host, srv.port, srv.type, srv.resolvers) == (
        "emqx", 5, "_mqtt._tcp.emqx-headless.mqtt.invalid", 0, "srv", "k8s",
    )  # fmt: skip
    assert (pods.first, pods.count, pods.port, pods.type, pods.resolve_prefer, pods.weight) == (
        3, 3, 1883, "any", "ipv4", 2,
    )  # fmt: skip
    names = [server.name for server in backend.servers]
    assert names == ["static", "byip", *(f"emqx{i}" for i in range(1, 6)), "pod3", "pod4", "pod5"]
    static, byip = backend.servers[:2]
    assert (static.resolvers, static.init_addr, static.resolve_prefer) == (
        "k8s",
        "10.0.0.7",
        "ipv6",
    )
    assert (byip.resolvers, byip.init_addr) == (None, None)  # an IP: nothing to look up
    assert backend.check is not None and backend.servers[-1].check is False  # pods: no check


def test_what_does_not_convert_is_reported():
    text = (
        "resolvers sys\n    timeout resolve 2s\n"
        "resolvers named\n    nameserver ns dns.example:53\n    parse-resolv-conf\n"
        "backend b\n    server-template s 0-x emqx.invalid:1883\n"
        "    server a a.invalid:1883 init-addr libc,bogus resolve-prefer ipv5\n"
        "    server-template t 2 t.invalid:1883 init-addr 10.0.0.1\n"
    )
    _, report = cv.convert(text)
    assert report.unsupported == [
        "haproxy.cfg:1: unsupported: resolvers sys (no nameserver: names would go to the libc's "
        "resolver)",
        "haproxy.cfg:4: unsupported: nameserver ns dns.example:53 (a nameserver given by name: "
        "fastmqtt needs its IP)",
        "haproxy.cfg:7: unsupported: server-template s 0-x emqx.invalid:1883 (NUM or LOW-HIGH "
        "servers)",
        "haproxy.cfg:8: unsupported: server option init-addr libc,bogus (not a method or an IP: "
        "bogus)",
        "haproxy.cfg:8: unsupported: server option resolve-prefer ipv5 (ipv4 or ipv6)",
        "haproxy.cfg:9: unsupported: server option init-addr 10.0.0.1 (one address for every "
        "server of a template)",
    ]
    assert (
        "haproxy.cfg:9: note: t.invalid:1883: HAProxy resolves it once with the libc"
        in (report.notes[0])
    )
