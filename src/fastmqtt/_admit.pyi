"""Stub for the engine's access rules and admission limits (src/fastmqtt/_admit.pyx); no
plain-Python twin: access.py and ratelimit.py decide on the event-loop path."""

ACTIONS: dict[str, int]
VERDICT_WORDS: tuple[str | None, ...]

Net = tuple[bool, int, bytes]  # (is IPv6, prefix length, 16 address bytes)
Rate = tuple[float, float]  # (per second, burst)

class AdmissionRef:
    def __init__(
        self,
        default: str,
        rules: list[tuple[str, list[Net], bytes | None, bool]],
        *,
        deny_empty_client_id: bool = False,
        per_source: Rate | None = None,
        max_per_source: int = 0,
        connect_rate: Rate | None = None,
        per_client_id: Rate | None = None,
        max_delay: float = 5.0,
        tracked: int = 100000,
        ipv6_prefix: int = 64,
        live_capacity: int = 10000,
    ) -> None: ...
    # (verdict word or None, rule index or None)
    def admit_source(self, ip: str, now: float) -> tuple[str | None, int | None]: ...
    # (verdict word or None, rule index or None, route rule index or None, hold seconds)
    def admit_connect(
        self, ip: str, client_id: bytes | None, now: float
    ) -> tuple[str | None, int | None, int | None, float]: ...
    def release(self, ip: str) -> None: ...
    def set_rules(
        self,
        default: str,
        rules: list[tuple[str, list[Net], bytes | None, bool]],
        *,
        deny_empty_client_id: bool = False,
    ) -> None: ...
