"""Servers found by name: looked up without blocking the event loop, again and again while
running, so brokers that move (Kubernetes pods, cloud instances) are followed.

- A server whose address is a name is looked up at start and then every ``interval`` (or the
  answer's TTL with ``follow_ttl``); a new address takes the new clients, established
  connections keep their sockets. A name that does not resolve leaves its server DOWN, retried
  every ``retry``, never a crash; a name that fails after resolving keeps its last address for
  ``hold_*`` after the last valid answer (HAProxy's ``hold nx/refused/timeout/other``).
- A server template (HAProxy's ``server-template``) is ``count`` servers whose addresses are
  the A/AAAA records (or SRV records: target and port) of one name. A record keeps its server
  (its "slot") while it stays in the answer, so the server's name, and with it stats, stick
  entries and admin states, keeps meaning the same broker; a new record takes the first free
  slot, a record that left frees its slot (after ``hold_obsolete``). Slots without a record are
  MAINT, as HAProxy shows them ("MAINT (resolution)"); their established clients stay.

Lookups go to the libc (getaddrinfo, in a thread; no TTL, no SRV) unless the server names a
``[resolvers.NAME]`` with nameservers: then dnspython's asyncio resolver asks them (imported
only then). What discovery finds goes into the backend through one seam: ``Server.place``
then ``Backend.servers_changed``, which health checks (and the C engine) subscribe to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from fastmqtt.backend import Backend, Endpoint, Server, endpoint, is_ip
from fastmqtt.config import Config, ResolversConfig

log = logging.getLogger("fastmqtt.discovery")

LIBC_WAIT = 5.0  # seconds `serve` waits for the libc's first answers before listening
FAILURES = ("nx", "refused", "timeout", "other")  # as HAProxy's hold periods name them


class ResolutionFailed(Exception):
    """A lookup that gave no address; ``kind`` is one of FAILURES. The text names the host."""

    def __init__(self, kind: str, host: str, detail: str) -> None:
        super().__init__(f"{host}: {detail}")
        self.kind, self.host, self.detail = kind, host, detail


class Answer(NamedTuple):
    found: list[Endpoint]  # in the resolver's order, each address once
    ttl: float | None  # seconds, when the resolver tells


class Resolver(Protocol):
    async def lookup(
        self, host: str, port: int, kind: str, first: Collection[str], limit: int
    ) -> Answer:
        """Addresses of ``host`` for records of ``kind`` (any, a, aaaa, srv); at most ``limit``
        SRV records are followed, those whose slot key is in ``first`` first (each gives
        every address of its target)."""
        ...


def slot_key(kind: str, found: Endpoint) -> str:
    """What identifies a record across answers: the IP, or for SRV the target and port
    (a target whose address changes stays in its slot, as in HAProxy)."""
    if kind == "srv":
        return f"{found.hostname}:{found.sockaddr[1]}"
    return found.sockaddr[0]


def assign_slots(current: Sequence[str | None], answer: Sequence[str]) -> list[str | None]:
    """The key each slot holds after an answer: a key still in the answer keeps its slot, a
    key gone frees it, new keys take the free slots from the first in answer order, and keys
    beyond the free slots wait. ``current`` holds each key once (None: free)."""
    present = set(answer)
    slots = [key if key in present else None for key in current]
    placed = {key for key in slots if key is not None}
    free = iter([i for i, key in enumerate(slots) if key is None])
    for key in answer:
        if key in placed:
            continue
        i = next(free, None)
        if i is None:
            break
        slots[i] = key
        placed.add(key)
    return slots


# -- resolvers -------------------------------------------------------------------------------

_LIBC_FAMILIES = {"any": socket.AF_UNSPEC, "a": socket.AF_INET, "aaaa": socket.AF_INET6}
_LIBC_FAILURES = {socket.EAI_NONAME: "nx", socket.EAI_AGAIN: "timeout"}
if hasattr(socket, "EAI_NODATA"):
    _LIBC_FAILURES[socket.EAI_NODATA] = "nx"


class Libc:
    """getaddrinfo in the loop's thread pool: /etc/hosts and DNS as the system resolves them."""

    async def lookup(
        self, host: str, port: int, kind: str, first: Collection[str], limit: int
    ) -> Answer:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, family=_LIBC_FAMILIES[kind], type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise ResolutionFailed(
                _LIBC_FAILURES.get(exc.errno, "other"), host, exc.strerror or str(exc)
            ) from None
        found = _unique(Endpoint(family, sockaddr, host) for family, _, _, _, sockaddr in infos)
        if not found:
            raise ResolutionFailed("other", host, "no address")
        return Answer(found, None)


class Nameservers:
    """DNS queries to the nameservers of a [resolvers.NAME] section (dnspython, asyncio)."""

    def __init__(self, config: ResolversConfig) -> None:
        import dns.asyncresolver
        import dns.exception
        import dns.nameserver

        self.broken = ""  # why there is no nameserver to ask
        try:
            resolver = dns.asyncresolver.Resolver(configure=config.parse_resolv_conf)
        except dns.exception.DNSException as exc:  # no (usable) /etc/resolv.conf
            resolver = dns.asyncresolver.Resolver(configure=False)
            self.broken = f"/etc/resolv.conf: {exc}"
        servers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in config.nameservers]
        resolver.nameservers = [*resolver.nameservers, *servers]  # type: ignore[list-item]
        resolver.timeout = config.timeout
        resolver.lifetime = config.timeout * config.attempts
        resolver.cache = None  # every lookup asks: the interval is the cache
        self.resolver = resolver

    async def lookup(
        self, host: str, port: int, kind: str, first: Collection[str], limit: int
    ) -> Answer:
        if not self.resolver.nameservers:
            raise ResolutionFailed("other", host, self.broken or "no nameserver")
        if kind == "srv":
            return await self._srv(host, first, limit)
        types = {"a": ("A",), "aaaa": ("AAAA",), "any": ("AAAA", "A")}[kind]
        return await self._addresses(host, port, types)

    async def _query(self, host: str, rdtype: str) -> Any:
        import dns.exception
        import dns.resolver

        try:
            return await self.resolver.resolve(host, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise ResolutionFailed("nx", host, "no such name (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise ResolutionFailed("other", host, f"no {rdtype} record") from None
        except dns.exception.Timeout:
            text = f"no answer within {self.resolver.lifetime:g}s"
            raise ResolutionFailed("timeout", host, text) from None
        except dns.resolver.NoNameservers as exc:
            errors = exc.kwargs.get("errors") or []
            refused = any(str(error[3]) == "REFUSED" for error in errors)
            said = "; ".join(dict.fromkeys(f"{e[0]}:{e[2]} said {e[3]}" for e in errors))
            raise ResolutionFailed("refused" if refused else "other", host, said) from None
        except dns.exception.DNSException as exc:
            raise ResolutionFailed("other", host, str(exc)) from None

    async def _addresses(self, host: str, port: int, rdtypes: Sequence[str]) -> Answer:
        """A and/or AAAA records, asked at once; the first type listed comes first."""
        results = await asyncio.gather(
            *(self._query(host, rdtype) for rdtype in rdtypes), return_exceptions=True
        )
        answers = [r for r in results if not isinstance(r, BaseException)]
        if not answers:
            failures = [r for r in results if isinstance(r, ResolutionFailed)]
            if len(failures) < len(results):
                raise next(r for r in results if not isinstance(r, ResolutionFailed))
            raise _worst(failures)
        found = _unique(
            endpoint(rdata.address, port, host) for answer in answers for rdata in answer
        )
        return Answer(found, min(answer.rrset.ttl for answer in answers))

    async def _srv(self, host: str, first: Collection[str], limit: int) -> Answer:
        """SRV records, then each target's address: from the answer's glue when there, else
        asked (at most ``limit`` targets, the slot holders in ``first`` before the others)."""
        answer = await self._query(host, "SRV")
        by_key = {}
        for r in sorted(answer, key=lambda r: r.priority):
            target = str(r.target).rstrip(".").lower()
            by_key.setdefault(f"{target}:{r.port}", (target, r.port, r.priority))
        records = sorted(
            by_key.values(), key=lambda r: (f"{r[0]}:{r[1]}" not in first, r[2], r[0], r[1])
        )[:limit]
        glue = _glue(answer.response)
        ttl = float(answer.rrset.ttl)
        found: list[Endpoint] = []
        results = await asyncio.gather(
            *(self._target(target, port, glue) for target, port, _ in records),
            return_exceptions=True,
        )
        for (target, _, _), result in zip(records, results, strict=True):
            if isinstance(result, ResolutionFailed):  # that one record has no address now
                log.debug("SRV %s: target %s: %s", host, target, result.detail)
                continue
            if isinstance(result, BaseException):
                raise result
            found += result[0]  # every address of the target: the Watch picks one
            ttl = ttl if result[1] is None else min(ttl, result[1])
        return Answer(found, ttl)

    async def _target(
        self, target: str, port: int, glue: Mapping[str, list[tuple[str, float]]]
    ) -> tuple[list[Endpoint], float | None]:
        if target in glue:
            ips = glue[target]
            return [endpoint(ip, port, target) for ip, _ in ips], min(ttl for _, ttl in ips)
        answer = await self._addresses(target, port, ("AAAA", "A"))
        return answer.found, answer.ttl


def _glue(response: Any) -> dict[str, list[tuple[str, float]]]:
    """Addresses the SRV answer carried for its targets (additional section), IPv6 first."""
    import dns.rdatatype

    out: dict[str, list[tuple[str, float]]] = {}
    for rdtype in (dns.rdatatype.AAAA, dns.rdatatype.A):
        for rrset in response.additional:
            if rrset.rdtype == rdtype:
                name = str(rrset.name).rstrip(".").lower()
                out.setdefault(name, []).extend((r.address, float(rrset.ttl)) for r in rrset)
    return out


def _worst(failures: Sequence[ResolutionFailed]) -> ResolutionFailed:
    """Of an A and an AAAA failure, the one that says most: the name exists (no record of
    that type) beats NXDOMAIN; otherwise the first."""
    return next((f for f in failures if f.kind != "nx"), failures[0])


def _unique(endpoints: Any) -> list[Endpoint]:
    return list(dict.fromkeys(endpoints))


def make_resolver(config: ResolversConfig) -> Resolver:
    return Nameservers(config) if config.uses_dns else Libc()


# -- watching one name -----------------------------------------------------------------------


class Name(NamedTuple):
    """One name of a config to look up, and the servers it places."""

    backend: str
    path: str  # where the config gives it, e.g. backend.emqx.server_template[0].address
    host: str
    port: int  # 0 for SRV
    kind: str  # any, a, aaaa, srv
    resolvers: str | None  # the [resolvers.NAME]; None: the libc
    prefer: str | None  # resolve_prefer
    template: str | None  # the template's prefix; None: one server given by name
    servers: tuple[str, ...]


def names(config: Config) -> list[Name]:
    """Every name of ``config``: each server given by name, then each template."""
    out = []
    for backend, bc in config.backends.items():
        plain = [sc for sc in bc.servers if sc.template is None]
        for i, sc in enumerate(plain):
            if not is_ip(sc.host):
                path = f"backend.{backend}.server[{i}].address"
                args = (sc.host, sc.port, "any", sc.resolvers, sc.resolve_prefer, None)
                out.append(Name(backend, path, *args, (sc.name,)))
        for i, t in enumerate(bc.server_templates):
            path = f"backend.{backend}.server_template[{i}].address"
            args = (t.host, t.port, t.type, t.resolvers, t.resolve_prefer, t.prefix)
            out.append(Name(backend, path, *args, tuple(sc.name for sc in t.servers())))
    return out


class Watch:
    """One name looked up on a schedule and the servers it places: one server given by name,
    or every server of one template."""

    def __init__(
        self, backend: Backend, name: Name, settings: ResolversConfig, resolver: Resolver
    ) -> None:
        self.backend, self.kind = backend, name.kind
        self.servers = [backend.by_name[server] for server in name.servers]
        self.host, self.port = name.host, name.port
        self.prefer, self.template = name.prefer, name.template
        self.settings, self.resolver = settings, resolver
        self.loop = asyncio.get_running_loop()
        self.last_valid: float | None = None
        now = self.loop.time()  # slot key -> when an answer last had it (hold_obsolete)
        self.seen = {slot_key(self.kind, s.endpoint): now for s in self.servers if s.endpoint}
        self.failure: str | None = None  # the failure last logged, so retries stay quiet
        self.answered = asyncio.Event()  # the first lookup is over, whatever it gave

    @property
    def what(self) -> str:
        if self.template is None:
            return f"server {self.backend.name}/{self.servers[0].name}"
        return f"template {self.backend.name}/{self.template}"

    async def run(self) -> None:
        while True:
            try:
                delay = await self.refresh()
            except Exception:  # a bug of ours must not end the watch
                log.exception("%s: looking up %s failed", self.what, self.host)
                delay = self.settings.retry
            self.answered.set()
            await asyncio.sleep(delay)

    async def refresh(self) -> float:
        """One lookup, applied; returns the seconds until the next."""
        current = [slot_key(self.kind, s.endpoint) for s in self.servers if s.endpoint]
        try:
            answer = await self.resolver.lookup(
                self.host, self.port, self.kind, current, len(self.servers)
            )
        except ResolutionFailed as exc:
            return self._failed(exc)
        if self.failure is not None:
            log.info("%s: %s resolves again", self.what, self.host, extra=self._extra())
            self.failure = None
        self.last_valid = self.loop.time()
        self._place(answer.found)
        settings = self.settings
        if settings.follow_ttl and answer.ttl is not None:
            return min(max(answer.ttl, settings.ttl_min), settings.ttl_max)
        return settings.interval

    def _failed(self, exc: ResolutionFailed) -> float:
        hold = getattr(self.settings, f"hold_{exc.kind}")
        held = self.last_valid is not None and self.loop.time() - self.last_valid < hold
        text = f"resolution failed: {exc}"
        if held:
            outcome = f"keeping the last addresses until {hold:g}s after the last answer"
        elif self.template is None:
            outcome = "DOWN until it resolves"
        else:
            outcome = "its servers have no address (MAINT) until it resolves"
        if text != self.failure:
            log.warning(
                "%s: cannot resolve %s; %s (next try in %gs)",
                self.what,
                exc,
                outcome,
                self.settings.retry,
                extra=self._extra(error=exc.detail),
            )
            self.failure = text
        for server in self.servers:
            server.resolution = text
        if not held:
            self._apply([None] * len(self.servers))
        return self.settings.retry

    def _place(self, found: list[Endpoint]) -> None:
        if self.template is None:
            self._apply([self._choose(found)])
            return
        now = self.loop.time()
        by_key: dict[str, Endpoint] = {}
        for candidate in self._preferred(found):  # an SRV target's first address wins
            by_key.setdefault(slot_key(self.kind, candidate), candidate)
        for key in by_key:
            self.seen[key] = now
        # new addresses fill free servers in a fixed order (the preferred family, then by
        # address), not the answer's, which DNS servers rotate: workers number them alike
        keys = sorted(by_key, key=lambda key: (by_key[key].family != self._family(), key))
        for server in self.servers:  # gone from this answer, but not for hold_obsolete yet
            key = slot_key(self.kind, server.endpoint) if server.endpoint else None
            if (
                key is not None
                and key not in by_key
                and now - self.seen.get(key, now) < self.settings.hold_obsolete
            ):
                by_key[key] = server.endpoint  # type: ignore[assignment]
                keys.append(key)
        current = [slot_key(self.kind, s.endpoint) if s.endpoint else None for s in self.servers]
        slots = assign_slots(current, keys)
        if len(by_key) > len(slots):
            log.debug("%s: %d addresses for %d servers", self.what, len(by_key), len(slots))
        self._apply([by_key[key] if key is not None else None for key in slots], len(by_key))

    def _choose(self, found: list[Endpoint]) -> Endpoint:
        """A server given by name keeps its address while the answer has it (round-robin DNS
        must not move it), else takes the first of the preferred family."""
        current = self.servers[0].endpoint
        for candidate in found:
            if current is not None and candidate.sockaddr[0] == current.sockaddr[0]:
                return candidate
        return self._preferred(found)[0]

    def _preferred(self, found: list[Endpoint]) -> list[Endpoint]:
        """``resolve_prefer``'s family first, the resolver's order otherwise kept."""
        family = self._family()
        return sorted(found, key=lambda e: e.family != family) if family else found

    def _family(self) -> int | None:
        return {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(self.prefer or "")

    def _apply(self, endpoints: Sequence[Endpoint | None], records: int = 0) -> None:
        """Place each server; log and tell the backend what moved, and which of those had
        no address before (a free template slot a new record took, a name resolving again)."""
        moved, joined = [], []
        for server, target in zip(self.servers, endpoints, strict=True):
            was = server.endpoint
            if target is not None or self.failure is None:
                server.resolution = None if target is not None else self._why_empty(records)
            if not server.place(target):
                continue
            moved.append(server)
            if was is None:
                joined.append(server)
            self._log_move(server, was)
        if moved:
            self.backend.servers_changed(moved, joined)

    def _why_empty(self, records: int) -> str:
        return f"no address: {self.host} gave {records} for {len(self.servers)} servers"

    def _log_move(self, server: Server, was: Endpoint | None) -> None:
        now = _where(server.endpoint)
        text = f"now at {now} ({server.hostname})" if now else f"no address ({server.resolution})"
        if was is not None:
            text += f", was at {_where(was)}"
            live = server.counters.current
            if live:
                text += f"; established connections kept: {live}"
        log.info(
            "server %s/%s: %s",
            self.backend.name,
            server.name,
            text,
            extra={**self._extra(), "server": server.name, "address": now or ""},
        )

    def _extra(self, **fields: str) -> dict[str, str]:
        return {"backend": self.backend.name, "host": self.host, **fields}


def _where(found: Endpoint | None) -> str:
    if found is None:
        return ""
    host, port = found.sockaddr[0], found.sockaddr[1]
    return f"[{host}]:{port}" if found.family == socket.AF_INET6 else f"{host}:{port}"


# -- every name of a process -----------------------------------------------------------------


class Discovery:
    """The lookups of one process: one Watch per server given by name and per template."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task] = []
        self._watches: list[Watch] = []
        self._resolvers: dict[ResolversConfig, Resolver] = {}

    def watch(self, config: Config, backends: Mapping[str, Backend]) -> None:
        """(Re)start watching every name of ``config`` (start and reload): each is looked up
        at once, then on its schedule. Servers keep their addresses meanwhile."""
        self.stop()
        resolvers: dict[ResolversConfig, Resolver] = {}
        for name in names(config):
            settings = config.resolvers_for(name.resolvers)
            resolver = resolvers.get(settings) or self._resolvers.get(settings)
            resolvers[settings] = resolver = resolver or make_resolver(settings)
            self._watches.append(Watch(backends[name.backend], name, settings, resolver))
        self._resolvers = resolvers  # sections gone from the config are dropped
        self._tasks = [asyncio.get_running_loop().create_task(w.run()) for w in self._watches]

    async def settled(self) -> None:
        """Wait for every first lookup, as long as one resolution may take (bounded)."""
        waits = [asyncio.ensure_future(w.answered.wait()) for w in self._watches]
        if not waits:
            return
        limit = max(_longest(w.settings, w.kind) for w in self._watches)
        _, pending = await asyncio.wait(waits, timeout=limit + 0.5)
        for wait in pending:
            wait.cancel()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks, self._watches = [], []


def _longest(settings: ResolversConfig, kind: str) -> float:
    """How long one lookup may take: SRV records, then their targets."""
    if not settings.uses_dns:
        return LIBC_WAIT
    return settings.timeout * settings.attempts * (2 if kind == "srv" else 1)


# -- `fastmqtt check` ------------------------------------------------------------------------


def check_names(config: Config) -> list[str]:
    """Warnings for names that do not resolve from here (`fastmqtt check`): `serve` would start
    those servers DOWN (templates: empty) and keep trying."""
    return asyncio.run(_check_names(config))


async def _check_names(config: Config) -> list[str]:
    resolvers: dict[ResolversConfig, Resolver] = {}

    async def one(name: Name) -> str | None:
        settings = config.resolvers_for(name.resolvers)
        resolver = resolvers.setdefault(settings, make_resolver(settings))
        try:
            await resolver.lookup(name.host, name.port, name.kind, (), 1)
        except ResolutionFailed as exc:
            via = f" (resolvers {name.resolvers})" if name.resolvers else ""
            then = "this server DOWN" if name.template is None else "its servers empty"
            return f"{config.path}: {name.path}: {exc}{via}: serve starts {then} and keeps trying"
        return None

    texts = await asyncio.gather(*(one(name) for name in names(config)))
    return [text for text in texts if text is not None]
