"""Stub for the engine's server choice (src/fastmqtt/_choose.pyx); no plain-Python twin:
without extensions there is no fast path, and balance.py chooses."""

from collections.abc import Sequence

from fastmqtt._balance import MaglevTable
from fastmqtt._stick import Table

ALGORITHMS: dict[str, int]
HASH_KEYS: dict[str, int]
SEND_PROXY: dict[str | None, int]
STATES: tuple[str, ...]
MAX_SERVERS: int

class ServerRef:
    def __init__(
        self,
        server_id: int,
        family: int,
        host: str,
        port: int,
        scope: int = 0,
        stick_id: int = 0,
    ) -> None: ...
    @property
    def id(self) -> int: ...
    @property
    def live(self) -> int: ...
    @property
    def live_bytes(self) -> tuple[int, int]: ...
    def set_python_live(self, count: int) -> None: ...
    # (total, connect_errors, response_errors, retries, redispatches, {connack code: count})
    def counters(self) -> tuple[int, int, int, int, int, dict[int, int]]: ...

class PoolRef:
    def __init__(self, pool_id: int) -> None: ...
    @property
    def id(self) -> int: ...
    def configure(
        self,
        algorithm: str,
        servers: list[ServerRef],
        *,
        all_backups: bool = False,
        factor: float | None = None,
        hash_key: str = "client_id",
        retries: int = 3,
        redispatch: bool = True,
        timeout_connect: int = 100,
        timeout_server: int = 2400,
        send_proxy: str | None = None,
        client_id_tlv: int = -1,
    ) -> None: ...
    def update(
        self,
        states: list[int],
        weights: list[int],
        maxconns: list[int],
        backups: list[bool],
    ) -> None: ...
    def set_tables(
        self,
        home: MaglevTable,
        primaries: MaglevTable | None,
        backups: MaglevTable | None,
        order: Sequence[int],
    ) -> None: ...
    def set_address(
        self, index: int, family: int, host: str, port: int, scope: int = 0
    ) -> None: ...
    def set_stick(self, table: Table | None, on: str = "client_id") -> None: ...
    def pick(
        self,
        key: bytes | None = None,
        tried: Sequence[int] = (),
        stick_key: bytes | None = None,
    ) -> int | None: ...
    # (no_server, sticky_hits, sticky_misses, learned_ids, connect latency buckets, their
    #  seconds, CONNACK latency buckets, their seconds)
    def counters(self) -> tuple[int, int, int, int, list[int], float, list[int], float]: ...
