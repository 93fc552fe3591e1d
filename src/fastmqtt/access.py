"""Who may connect through a frontend, and to which backend.

``Guard`` is what a frontend asks, twice per connection:

* ``admit_source(session)`` right after accept: per-source limits (ratelimit.py) and the
  rules that look at the source address only, so a denied address never holds a slot for
  ``inspect_delay``;
* ``admit(conn, session, connect)`` once the CONNECT is inspected: every rule, empty client
  ids, the CONNECT admission rate and the per-client-id reconnect delay. It returns the
  backend of a ``route`` rule (tenants), or None for the frontend's own.

A refusal raises ``Refused(reason)``; with ``reject_with_connack`` the client first gets a
CONNACK saying why (3.1.1 return code / 5.0 reason code), so well-behaved clients back off.

Rules are tried in file order; the first whose every condition holds decides. Conditions:
``source`` (CIDR list), ``client_id`` (glob: ``*``, ``?``, ``[...]``, case-sensitive),
``client_id_regex`` (Python ``re``, whole id), ``username`` (glob). No rule matching means
``access_default``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, NoReturn, Protocol

from fastmqtt import packets
from fastmqtt.errors import CLIENT_ID_FIELD, MalformedPacket, Refused
from fastmqtt.mqtt_spec import BAD_PROTOCOL_VERSION, BAD_UTF8, PACKET_TOO_LARGE
from fastmqtt.ratelimit import RateLimiter

if TYPE_CHECKING:
    from fastmqtt.backend import Backend
    from fastmqtt.config import FrontendConfig
    from fastmqtt.config.model import Rule
    from fastmqtt.parse import Connect
    from fastmqtt.session import Session

log = logging.getLogger("fastmqtt.access")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refusal reason -> (3.1/3.1.1 return code, 5.0 reason code) of the CONNACK that explains it.
NOT_AUTHORIZED = (5, 0x87)
IDENTIFIER_REJECTED = (2, 0x85)
RATE_EXCEEDED = (3, 0x9F)  # 3.1.1 has no rate code: "server unavailable" makes clients retry
V5_MALFORMED = 0x81
V5_UNSUPPORTED_VERSION = 0x84
V5_PACKET_TOO_LARGE = 0x95
V3_UNACCEPTABLE_VERSION = 1


class Writable(Protocol):
    """The client side as far as a refusal needs it: a socket, or a TLS / WebSocket stream
    (streams.py) that encrypts or frames what it is given."""

    def send(self, data: bytes) -> int: ...

    def shutdown(self, how: int) -> None: ...


class Decision(NamedTuple):
    action: str
    backend: str | None
    rule: str  # "rule-N" (0-based, file order) or "default"


def decide(
    rules: tuple[Rule, ...],
    default: str,
    ip: IPAddress,
    fields: tuple[str, str | None] | None,
    final: bool,
) -> Decision | None:
    """The first matching rule's decision. ``fields`` = (client id, username), or None when
    no CONNECT is known: then a rule that reads one stops the search (None: undecided) unless
    ``final``, where no CONNECT will ever come and such rules cannot match."""
    for i, rule in enumerate(rules):
        if not rule.matches_source(ip):
            continue
        if rule.reads_connect:
            if fields is None:
                if final:
                    continue
                return None
            if not rule.matches_connect(*fields):
                continue
        return Decision(rule.action, rule.backend, f"rule-{i}")
    return Decision(default, None, "default")


@functools.lru_cache(maxsize=4096)  # devices reconnect from the same few addresses
def client_ip(host: str) -> IPAddress:
    """The address rules compare: IPv4 clients of a dual-stack listener arrive as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Guard:
    """Access rules and admission limits of one frontend."""

    def __init__(self, config: FrontendConfig, backend_named: Callable[[str], Backend]) -> None:
        self.config = config
        self.backend_named = backend_named  # the backend a route rule names (Runtime's)
        self.limits = None if config.rate_limit is None else RateLimiter(config.rate_limit)
        self.decisions: Counter[str] = Counter()  # "rule-N:action" / "default:action"
        self._counted: set[int] = set()  # sessions holding a per-source slot

    def reconfigure(self, config: FrontendConfig) -> None:
        """A reload: new rules at once; limiter state survives unless its limits changed."""
        self.config = config
        if self.limits is None or self.limits.config != config.rate_limit:
            self.limits = None if config.rate_limit is None else RateLimiter(config.rate_limit)
            self._counted.clear()  # their slots belonged to the old limiter

    def admit_source(self, session: Session) -> None:
        """Before reading anything: per-source limits, then source-only rules."""
        if self.limits is not None:
            reason = self.limits.open_source(session.client_addr[0])
            if reason is not None:
                raise Refused(reason)
            self._counted.add(session.id)
        decision = self._decide(session, None, False)
        if decision is not None and decision.action == "deny":
            self._note(session, decision)
            raise Refused(f"denied-{decision.rule}")

    async def admit(
        self, conn: Writable, session: Session, connect: Connect | None
    ) -> Backend | None:
        """After inspection: the backend a route rule chose (None: the frontend's own)."""
        fields = None if connect is None else (connect.client_id, connect.username)
        decision = self._decide(session, fields, True)
        assert decision is not None  # final: always decided
        self._note(session, decision)
        if decision.action == "deny":
            self._refuse(conn, connect, f"denied-{decision.rule}", NOT_AUTHORIZED)
        if connect is not None and not connect.client_id and self.config.deny_empty_client_id:
            self._refuse(conn, connect, "empty-client-id", IDENTIFIER_REJECTED)
        if self.limits is not None:
            await self._pace(conn, connect)
        return self.backend_named(decision.backend) if decision.backend else None

    def _decide(
        self, session: Session, fields: tuple[str, str | None] | None, final: bool
    ) -> Decision | None:
        if not self.config.rules:  # the common case: no address to parse, nothing to match
            return Decision(self.config.access_default, None, "default")
        ip = client_ip(session.client_addr[0])
        return decide(self.config.rules, self.config.access_default, ip, fields, final)

    async def _pace(self, conn: Writable, connect: Connect | None) -> None:
        """The frontend's CONNECT rate, then a reconnecting client id's delay."""
        assert self.limits is not None
        reason = self.limits.admit_connect()
        if reason is not None:
            self._refuse(conn, connect, reason, RATE_EXCEEDED)
        if connect is None:
            return
        delay = self.limits.reconnect_delay(connect.client_id)
        if delay is None:
            self._refuse(conn, connect, "reconnect-too-fast", RATE_EXCEEDED)
        if delay:
            await asyncio.sleep(delay)  # held, not refused: the device retries less often

    def release(self, session: Session) -> None:
        """Every session of this frontend ends here once (Session.ended): give back its
        per-source slot."""
        if self.limits is not None and session.id in self._counted:
            self._counted.discard(session.id)
            self.limits.close_source(session.client_addr[0])

    def refuse_malformed(self, conn: Writable, exc: MalformedPacket) -> None:
        """An invalid CONNECT: tell the client why first, when the spec has a code for it."""
        if self.config.reject_with_connack:
            packet = malformed_connack(exc)
            if packet is not None:
                send_last(conn, packet)

    def _note(self, session: Session, decision: Decision) -> None:
        self.decisions[f"{decision.rule}:{decision.action}"] += 1
        log.debug(
            "frontend %s: %s %s cid=%r user=%r -> %s%s",
            self.config.name,
            decision.rule,
            session.client_addr[0],
            session.client_id,
            session.username,
            decision.action,
            f" {decision.backend}" if decision.backend else "",
        )

    def _refuse(
        self, conn: Writable, connect: Connect | None, reason: str, codes: tuple[int, int]
    ) -> NoReturn:
        if self.config.reject_with_connack and connect is not None:
            version = connect.protocol_version & 0x7F  # bridges set the top bit
            send_last(conn, packets.connack(codes[version == 5], version))
        raise Refused(reason)


def send_last(conn: Writable, packet: bytes) -> None:
    """Best effort, without waiting: the socket closes next, and a client that is gone or
    not reading loses nothing it was owed. SHUT_WR sends the FIN right behind the packet."""
    with contextlib.suppress(OSError):
        conn.send(packet)
        conn.shutdown(socket.SHUT_WR)


# --- answering an invalid CONNECT ------------------------------------------------------------


def malformed_connack(exc: MalformedPacket) -> bytes | None:
    """The CONNACK for a CONNECT the inspector refused, or None when the client could not
    read one (no recognisable level) or 3.1.1 has no code for the problem."""
    if exc.level is None:
        return None
    return malformed_answer(exc.reason, exc.level, exc.field == CLIENT_ID_FIELD)


def malformed_answer(reason: str, level: int, in_client_id: bool) -> bytes | None:
    """malformed_connack once the CONNECT's protocol level (bridge bit included) and whether
    the error lies in the client id are known; the engine's fast path answers from a table
    of these (fastpath.refusal_table)."""
    version = level & 0x7F
    if reason == BAD_PROTOCOL_VERSION:  # [MQTT-3.1.2-2]; 5.0 3.1.2.2 allows 0x84
        if version == 5:  # a bridge's 0x85 where bridges are not allowed
            return packets.connack(V5_UNSUPPORTED_VERSION, 5)
        # any other level: the 3.1.1 form, the one a client of an unknown level can read
        # (Mosquitto answers the same)
        return packets.connack(V3_UNACCEPTABLE_VERSION, 4)
    if version not in (3, 4, 5):
        return None
    if reason == BAD_UTF8 and in_client_id:
        return packets.connack(IDENTIFIER_REJECTED[version == 5], version)
    if version != 5:
        return None
    return packets.connack(V5_PACKET_TOO_LARGE if reason == PACKET_TOO_LARGE else V5_MALFORMED, 5)
