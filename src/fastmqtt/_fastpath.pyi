"""Stub for the engine's fast path (src/fastmqtt/_fastpath.pyx): connection setup on the
relay engine's threads; no plain-Python twin (without extensions every frontend takes the
event-loop path)."""

from collections.abc import Iterable

from fastmqtt._admit import AdmissionRef
from fastmqtt._choose import PoolRef
from fastmqtt._splice import Engine

WHY_WORDS: tuple[str | None, ...]
FAST_IDS: int
MAX_FIND_KEYS: int  # client ids one find() asks for at most ...
MAX_FIND_KEY_BYTES: int  # ... and their bytes
DENIED: frozenset[int]

# (frontend id, backend id, server id (0: none), client ip, client port, client id, username,
#  MQTT version (0: none), keepalive, CONNACK code or None, start (epoch seconds),
#  wait ms, connect ms, total ms (-1: not reached), bytes in, bytes out, end reason,
#  denied (counts as a refusal), errno, connection id)
Record = tuple[
    int, int, int, str, int, str | None, str | None, int, int, int | None, float,
    int, int, int, int, int, str, bool, int, int,
]  # fmt: skip

# (connection id, frontend id, backend id, server id, client ip, client port, client id,
#  MQTT version, start (epoch seconds), bytes in, bytes out, clean start,
#  session expiry or None, tracked, username or None)
View = tuple[
    int, int, int, int, str, int, str, int, float, int, int, bool, int | None, bool, str | None
]

def proxy_header(
    version: int,
    src: tuple[str, int],
    dst: tuple[str, int],
    client_id: bytes = b"",
    tlv: int = -1,
) -> bytes: ...

class FastPath:
    def __init__(self, engine: Engine, maxconn: int) -> None: ...
    def frontend(
        self,
        frontend_id: int,
        fd: int,
        pool: PoolRef,
        routes: list[PoolRef | None],
        *,
        inspect_delay: float,
        max_connect_size: int,
        maxconn: int,
        reject_invalid: bool = True,
        allow_bridge: bool = True,
        track: int = 0,
        client_timeout: tuple[bool, float, float, float] = (False, 240.0, 30.0, 3600.0),
        refusals: bytes | None = None,
        admission: AdmissionRef | None = None,
    ) -> None: ...
    def listen(self, frontend_id: int, on: bool) -> None: ...
    def remove(self, frontend_id: int) -> None: ...
    def set_limits(self, maxconn: int, python_live: int) -> None: ...
    @property
    def live(self) -> int: ...
    def close_server(self, server_id: int) -> bool: ...
    def goodbye(self, packet: bytes, count: int) -> None: ...
    def find(
        self,
        keys: Iterable[bytes] | None = None,
        prefix: bool = False,
        pool_id: int = 0,
        server_id: int = 0,
        limit: int = 1000,
    ) -> None: ...
    def leave(self, ids: list[int], packet: bytes) -> None: ...
    def answered(self) -> bool: ...
    def found(self) -> tuple[bool, list[View]]: ...
    def left(self) -> tuple[bool, list[int]]: ...
    # (accepted, accept errors, live, {version: CONNECTs}, {reason: forwarded invalid}, errno)
    def counters(
        self, frontend_id: int
    ) -> tuple[int, int, int, dict[int, int], dict[str, int], int]: ...
    def live_bytes(self, frontend_id: int) -> tuple[int, int]: ...
    def facts(self, handle: int) -> tuple: ...
    def drain(self) -> list[Record]: ...
