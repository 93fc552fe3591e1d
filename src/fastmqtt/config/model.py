"""The objects the rest of fastmqtt reads: frozen dataclasses, one per config section, and
the vocabularies and limits their values come from.
"""

from __future__ import annotations

import ipaddress
import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType

from fastmqtt.packets import SERVER_SHUTTING_DOWN, USE_ANOTHER_SERVER

PROTOCOLS = ("mqtt", "tcp", "ws")
ACTIONS = ("allow", "deny", "route")  # what a [[frontend.NAME.rule]] does
BALANCES = ("roundrobin", "leastconn", "source", "consistent", "random")
HASH_KEYS = ("client_id", "username", "source")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
SEND_PROXY = ("v1", "v2")
CHECK_TYPES = ("tcp", "mqtt", "http")
ON_MARKED_DOWN = ("none", "shutdown-sessions")
TLS_VERIFY = ("none", "optional", "required")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
WS_BACKENDS = ("bridge", "passthrough")
WS_SUBPROTOCOLS = ("mqtt", "mqttv3.1", "mqttv5")
PROXY_TLVS = ("ssl", "authority", "client_id")
RECORD_TYPES = ("any", "a", "aaaa", "srv")  # what a server template expands
FAMILIES = ("ipv4", "ipv6")
MAX_TEMPLATE_SERVERS = 1024
PP2_TYPE_MIN_CUSTOM, PP2_TYPE_MAX_CUSTOM = 0xE0, 0xEF  # proxy-protocol.txt 2.2.8
DEFAULT_PROTOCOL = "mqtt"

TYPICAL_KEEPALIVE = 60.0  # seconds; what most MQTT client libraries send by default
KEEPALIVE_FACTOR = 1.5  # a client is idle for up to 1x keepalive between pings, plus slack
FDS_PER_CONNECTION = 2  # a client socket and a broker socket
FD_MARGIN = 100  # listeners, health checks, logs, pipes, the event loop itself
MAX_CONNECTIONS = 10_000_000
MAX_DURATION = 7 * 86400.0  # keeps millisecond timers of the C relay within 32 bits
MQTT_MAX_PACKET = 256 * 1024 * 1024
MAX_WEIGHT = 256  # as HAProxy: 0..256, and 0 takes no new connections (admin API alike)
MAX_MOVE_RATE = 100_000  # clients a rebalance or an evacuation may ask to leave per second
# the MQTT 5 DISCONNECT reason codes that tell a moved client to come back
MOVE_REASONS = {
    USE_ANOTHER_SERVER: "use another server",
    SERVER_SHUTTING_DOWN: "server shutting down",
}


# --- the objects the rest of fastmqtt reads ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientTimeout:
    """Client-side idle timeout: a fixed number of seconds, or derived from the keepalive."""

    auto: bool
    seconds: float  # used when not auto
    minimum: float = 30.0
    maximum: float = 3600.0

    def for_keepalive(self, keepalive: int) -> float:
        """Idle timeout in seconds for a client that announced ``keepalive`` (never 0/None)."""
        if not self.auto:
            return self.seconds
        if keepalive <= 0:  # keepalive 0 = the client never pings; only the ceiling applies
            return self.maximum
        return min(max(KEEPALIVE_FACTOR * keepalive, self.minimum), self.maximum)


_CLIENT_TIMEOUT = ClientTimeout(False, 240.0)


def default_maxconn() -> int:
    """10000, or fewer when the open-file limit cannot hold that many proxied connections."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 10000
    return max(1, min(10000, (hard - FD_MARGIN) // FDS_PER_CONNECTION))


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    maxconn: int = field(default_factory=default_maxconn)
    workers: int = 1
    relay_threads: int = 1
    log_level: str = "info"
    log_format: str = "text"
    grace: float = 30.0
    drain_disconnect: bool = False  # MQTT 5 clients get DISCONNECT 0x8B on SIGTERM
    drain_rate: int = 500  # such DISCONNECTs per second, so reconnects arrive spread out
    track_packets: bool = True  # follow packet boundaries: kick/move between two packets
    stick_dir: str | None = None  # stick table files that outlive a restart (stick.py)
    fast_path: bool = True  # frontends the C engine can serve from accept to close, it does
    log_connections: bool = True  # one line per connection on standard output
    takeover_socket: str | None = None  # offer listeners and connections to a new process


@dataclass(frozen=True, slots=True)
class Defaults:
    timeout_connect: float = 10.0
    timeout_client: ClientTimeout = _CLIENT_TIMEOUT
    timeout_server: float = 240.0
    maxconn: int = 10000
    inspect_delay: float = 10.0


@dataclass(frozen=True, slots=True)
class SNICert:
    """``[[frontend.NAME.tls.sni]]``: the certificate for clients asking for ``name``."""

    name: str  # a host name, or "*.example.com" for one label under it
    cert: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class FrontendTLSConfig:
    """``[frontend.NAME.tls]``: TLS termination. File paths are absolute after loading."""

    cert: str  # PEM with the chain and (unless ``key`` is set) the private key
    key: str | None = None
    ca: str | None = None  # CA bundle for client certificates
    verify: str = "none"
    min_version: str = "TLSv1.2"
    ciphers: str | None = None
    alpn: tuple[str, ...] = ()
    sni: tuple[SNICert, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendTLSConfig:
    """``[backend.NAME.tls]``: TLS from fastmqtt to the brokers."""

    ca: str | None = None  # None: the system's trust store
    verify: str = "required"
    sni: str | None = None  # server name sent and checked; default: the server's host
    cert: str | None = None  # client certificate, for brokers that want mutual TLS
    key: str | None = None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` events per ``per`` seconds, with bursts of up to ``burst`` events."""

    count: int
    per: float
    burst: int

    @property
    def per_second(self) -> float:
        return self.count / self.per


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """``[frontend.NAME] rate_limit = {...}``; None = no limit of that kind."""

    per_source: Rate | None = None  # new connections per source address
    max_per_source: int | None = None  # live connections per source address
    connect_rate: Rate | None = None  # CONNECTs admitted per second, whole frontend
    per_client_id: Rate | None = None  # reconnects per client id, beyond the burst delayed
    max_delay: float = 5.0  # longest a reconnecting client is held before being refused
    tracked: int = 100_000  # sources and client ids remembered (LRU)
    ipv6_prefix: int = 64  # IPv6 sources sharing this many leading bits count as one


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[frontend.NAME.rule]]``; a condition left out matches anything."""

    action: str
    sources: tuple[Network, ...] = ()
    client_id: str | None = None
    client_id_regex: re.Pattern[str] | None = None
    username: str | None = None
    backend: str | None = None  # where a "route" rule sends the client

    @property
    def reads_connect(self) -> bool:
        return not (
            self.client_id is None and self.client_id_regex is None and self.username is None
        )

    def matches_source(self, ip: IPAddress) -> bool:
        return not self.sources or any(ip in net for net in self.sources)

    def matches_connect(self, client_id: str, username: str | None) -> bool:
        if self.client_id is not None and not fnmatchcase(client_id, self.client_id):
            return False
        if self.client_id_regex is not None and not self.client_id_regex.fullmatch(client_id):
            return False
        return self.username is None or (
            username is not None and fnmatchcase(username, self.username)
        )


@dataclass(frozen=True, slots=True)
class FrontendConfig:
    name: str
    bind_host: str
    bind_port: int
    protocol: str
    backend: str
    inspect_delay: float
    reject_invalid: bool = True
    max_connect_size: int = 65536
    maxconn: int = 10000
    timeout_client: ClientTimeout = _CLIENT_TIMEOUT
    allow_bridge: bool = True
    tls: FrontendTLSConfig | None = None
    ws_path: str = "/mqtt"
    ws_subprotocols: tuple[str, ...] = WS_SUBPROTOCOLS
    accept_proxy: bool = False
    trusted_proxies: tuple[Network, ...] = ()
    reject_with_connack: bool = False  # refusals of a readable CONNECT get a CONNACK first
    deny_empty_client_id: bool = False
    access_default: str = "allow"  # when no rule matches
    rules: tuple[Rule, ...] = ()  # [[frontend.NAME.rule]], first match wins (access.py)
    rate_limit: RateLimitConfig | None = None
    fast_path: bool = True  # false: keep it on the event loop (fastpath.fast_path_reason)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    name: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    maxconn: int = 0  # 0 = unlimited
    check: bool | Mapping[str, object] | None = None  # on/off, or keys overriding the backend's
    resolvers: str | None = None  # a [resolvers.NAME] for a host given by name; None: the libc's
    resolve_prefer: str | None = None  # "ipv4" / "ipv6" when a name has both
    init_addr: str | None = None  # an IP used until the name first resolves
    template: str | None = None  # the server_template prefix this slot comes from


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """``[backend.NAME.check]``: how servers are probed and what a failure does (health.py)."""

    type: str = "tcp"
    interval: float = 2.0
    fastinter: float | None = None  # while a server is changing state; default: interval
    downinter: float | None = None  # while it is down; default: interval
    timeout: float | None = None  # default: interval
    rise: int = 2
    fall: int = 3
    port: int | None = None  # probe another port than the server's (a broker's HTTP API)
    send_proxy: bool = False
    client_id: str = "fastmqtt-check"
    mqtt_version: int = 4
    username: str | None = None
    password_env: str | None = None
    path: str = "/"
    expect_status: int = 200
    observe: bool = False  # passive: failed connects of real clients count too
    error_limit: int = 10
    on_marked_down: str = "none"
    slowstart: float = 0.0


@dataclass(frozen=True, slots=True)
class StickConfig:
    on: str = "client_id"
    size: int = 100000
    expire: float = 1800.0


@dataclass(frozen=True, slots=True)
class RebalanceConfig:
    """``[backend.NAME.rebalance]``: how clients are moved between servers (rebalance.py)."""

    rate: int = 100  # clients asked to leave per second, spread evenly over the second
    tolerance: float = 0.1  # done when every usable server is within +-10% of its share
    only_clean_sessions: bool = False  # move no client whose session outlives its connection
    reason: int = USE_ANOTHER_SERVER  # the MQTT 5 DISCONNECT reason code (or 0x8B)
    automatic: bool = False  # rebalance once a server added by a reload or DNS takes clients


@dataclass(frozen=True, slots=True)
class ServerTemplateConfig:
    """``[[backend.NAME.server_template]]``: ``count`` servers named ``prefix`` + number, one
    per address (A/AAAA) or SRV record of ``host`` (discovery.py keeps each in its slot)."""

    prefix: str
    count: int
    host: str
    port: int  # 0: from the SRV records
    type: str = "any"
    first: int = 1  # the number of the first server: prefix1, prefix2, ...
    resolvers: str | None = None
    resolve_prefer: str | None = None  # with more addresses than servers, this family first
    weight: int = 1  # the keys below apply to every server of the template
    backup: bool = False
    maxconn: int = 0
    check: bool | Mapping[str, object] | None = None

    def servers(self) -> tuple[ServerConfig, ...]:
        """Its servers, each in its slot; which address a slot holds changes while running."""
        return tuple(
            ServerConfig(
                name=f"{self.prefix}{number}",
                host=self.host,
                port=self.port,
                weight=self.weight,
                backup=self.backup,
                maxconn=self.maxconn,
                check=self.check,
                resolvers=self.resolvers,
                resolve_prefer=self.resolve_prefer,
                template=self.prefix,
            )
            for number in range(self.first, self.first + self.count)
        )


@dataclass(frozen=True, slots=True)
class ResolversConfig:
    """``[resolvers.NAME]``: how names are resolved while running (discovery.py). Without
    nameservers (and without parse_resolv_conf) names go to the libc (getaddrinfo)."""

    name: str
    nameservers: tuple[tuple[str, int], ...] = ()
    parse_resolv_conf: bool = False
    interval: float = 10.0  # between two resolutions of a name while its answers are valid
    follow_ttl: bool = False  # the answer's TTL instead of interval, within ttl_min..ttl_max
    ttl_min: float = 1.0
    ttl_max: float = 300.0
    timeout: float = 1.0  # one query
    attempts: int = 3  # queries before a resolution fails
    retry: float = 1.0  # after a failed resolution, the next one
    hold_nx: float = 30.0  # a failed name keeps its last addresses this long after the last
    hold_refused: float = 30.0  # valid answer, by failure (as HAProxy's hold nx/refused/...)
    hold_timeout: float = 30.0
    hold_other: float = 30.0
    hold_obsolete: float = 0.0  # an address gone from the answer keeps its template slot

    @property
    def uses_dns(self) -> bool:
        """True: queries nameservers (TTLs, SRV records); False: the libc's getaddrinfo."""
        return bool(self.nameservers) or self.parse_resolv_conf


SYSTEM_RESOLVERS = ResolversConfig(name="")  # servers that name no [resolvers.NAME]


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    balance: str = "roundrobin"
    hash_key: str = "client_id"
    hash_balance_factor: float | None = None
    stick: StickConfig | None = None
    send_proxy: str | None = None
    retries: int = 3
    redispatch: bool = True
    all_backups: bool = False
    timeout_connect: float = 10.0
    timeout_server: float = 240.0
    servers: tuple[ServerConfig, ...] = ()  # templates' servers included, after the others
    server_templates: tuple[ServerTemplateConfig, ...] = ()
    check: CheckConfig | None = None
    tls: BackendTLSConfig | None = None
    ws_backend: str = "bridge"
    proxy_tlvs: tuple[str, ...] = ()
    proxy_client_id_tlv: int = PP2_TYPE_MIN_CUSTOM
    rebalance: RebalanceConfig = RebalanceConfig()


@dataclass(frozen=True, slots=True)
class StatsSocketConfig:
    """``[stats] socket``: the stats and admin API on a Unix socket, without basic auth: the
    file's mode and owner decide who may connect (HAProxy ``stats socket PATH mode 600``)."""

    path: str  # absolute after loading
    mode: int = 0o600
    user: str | int | None = None  # a name or a numeric id; None: the process's own
    group: str | int | None = None


@dataclass(frozen=True, slots=True)
class StatsConfig:
    bind_host: str | None = None  # None: no HTTP listener, only the Unix socket
    bind_port: int = 0
    uri: str = "/stats"
    refresh: float = 10.0
    auth_user: str | None = None
    auth_password_env: str | None = None
    metrics_auth: bool = True  # false: /metrics answers without auth (Prometheus scrapers)
    socket: StatsSocketConfig | None = None
    tls: FrontendTLSConfig | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    global_: GlobalConfig
    defaults: Defaults
    frontends: tuple[FrontendConfig, ...]
    backends: Mapping[str, BackendConfig]
    stats: StatsConfig | None
    warnings: tuple[str, ...] = ()
    resolvers: Mapping[str, ResolversConfig] = field(default_factory=lambda: MappingProxyType({}))

    def resolvers_for(self, name: str | None) -> ResolversConfig:
        return SYSTEM_RESOLVERS if name is None else self.resolvers[name]

    def backend_for(self, frontend: FrontendConfig) -> BackendConfig:
        return self.backends[frontend.backend]
