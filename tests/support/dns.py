"""A real authoritative DNS server on loopback for the tests (dnslib's DNSServer, UDP and TCP
on one port), whose records the test changes while fastmqtt resolves against it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from fastmqtt.tools.brokers import Mosquitto, free_port


class _Quiet:
    """dnslib's logger prints every query; the tests count them instead."""

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


class Zone(BaseResolver):
    """Records by (name, type); every name is answered from here (authoritative, no recursion).
    A name with no record of any type is NXDOMAIN; ``rcode`` makes a name fail another way."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[tuple[str, str], list[RR]] = {}
        self.rcodes: dict[str, str] = {}
        self.silent: set[str] = set()  # names whose queries get no answer at all
        self.glue = True  # SRV answers carry their targets' addresses
        self.queries: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        reply = request.reply()
        with self.lock:
            self.queries.append((name, qtype))
            if name in self.silent:
                raise DNSError("dropped on purpose")  # dnslib's handler sends nothing
            if name in self.rcodes:
                reply.header.rcode = getattr(RCODE, self.rcodes[name])
                return reply
            known = any(n == name for n, _ in self.records)
            for rr in self.records.get((name, qtype), ()):
                reply.add_answer(rr)
            if qtype == "SRV" and self.glue:  # the targets' addresses, as real servers add
                for rr in self.records.get((name, qtype), ()):
                    target = str(rr.rdata.target).rstrip(".").lower()
                    for kind in ("A", "AAAA"):
                        for glue in self.records.get((target, kind), ()):
                            reply.add_ar(glue)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class DnsServer:
    """``with DnsServer() as dns: dns.a("emqx.test", ["127.0.0.2"])``; ``dns.nameserver`` is
    its "127.0.0.1:PORT"."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.zone = Zone()
        self.host = host
        self.port = 0
        self.servers: list[DNSServer] = []

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> DnsServer:
        for _ in range(20):  # UDP and TCP on one free port; another process may take it first
            self.port = free_port(self.host)
            try:
                udp = DNSServer(self.zone, self.host, self.port, logger=_Quiet())
                tcp = DNSServer(self.zone, self.host, self.port, tcp=True, logger=_Quiet())
            except OSError:
                continue
            self.servers = [udp, tcp]
            for server in self.servers:  # a short poll: stop() returns at once
                loop = server.server.serve_forever
                threading.Thread(target=loop, kwargs={"poll_interval": 0.05}, daemon=True).start()
            return self
        raise RuntimeError("no free port for the DNS server")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
            server.server.server_close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- records ---------------------------------------------------------------------

    def _set(self, name: str, kind: str, rrs: list[RR]) -> None:
        with self.zone.lock:
            key = (name.lower(), kind)
            if rrs:
                self.zone.records[key] = rrs
            else:
                self.zone.records.pop(key, None)
            self.zone.rcodes.pop(name.lower(), None)

    def a(self, name: str, ips: Iterable[str], ttl: int = 5) -> None:
        self._set(name, "A", [RR(name, QTYPE.A, rdata=A(ip), ttl=ttl) for ip in ips])

    def aaaa(self, name: str, ips: Iterable[str], ttl: int = 5) -> None:
        self._set(name, "AAAA", [RR(name, QTYPE.AAAA, rdata=AAAA(ip), ttl=ttl) for ip in ips])

    def srv(self, name: str, targets: Iterable[tuple[str, int]], ttl: int = 5) -> None:
        """SRV records (priority 10, weight 10) for (target, port) pairs."""
        self._set(
            name,
            "SRV",
            [
                RR(name, QTYPE.SRV, rdata=SRV(10, 10, port, target), ttl=ttl)
                for target, port in targets
            ],
        )

    def fail(self, name: str, rcode: str = "SERVFAIL") -> None:
        with self.zone.lock:
            self.zone.rcodes[name.lower()] = rcode

    def queries_for(self, name: str) -> int:
        with self.zone.lock:
            return sum(1 for n, _ in self.zone.queries if n == name.lower())


HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # loopback addresses an A record can name


def brokers_on_one_port(hosts: Iterable[str], prefix: str = "node") -> list[Mosquitto]:
    """Brokers on several loopback addresses (127.0.0.2, 127.0.0.3, ...) and one port, so that
    an A record alone decides which one a name reaches."""
    hosts = list(hosts)
    for _ in range(20):
        port = free_port(hosts[0])
        if all(_free(host, port) for host in hosts[1:]):
            break
    else:
        raise RuntimeError("no port free on every address")
    started: list[Mosquitto] = []
    try:
        for i, host in enumerate(hosts):
            started.append(Mosquitto(port=port, host=host, name=f"{prefix}{i + 1}").start())
    except BaseException:
        for broker in started:
            broker.stop()
        raise
    return started


def _free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
