"""Exceptions shared by the compiled modules and their plain-Python twins."""

from __future__ import annotations


class FastMQTTError(Exception):
    """Base class of every error fastmqtt raises on purpose."""


# MalformedPacket.field of a CONNECT whose error lies inside its client identifier
CLIENT_ID_FIELD = "client_id"


class MalformedPacket(FastMQTTError):
    """Bytes that are not the expected MQTT packet.

    ``reason`` is a stable machine-readable word (metrics and logs use it);
    ``offset`` is the index of the byte where the packet went wrong. For a CONNECT, what
    answering it needs (access.malformed_connack): ``level``, the protocol level byte as far
    as the bytes show it (bridge bit included; None when they do not), and ``field``,
    ``"client_id"`` when the error lies inside the client identifier (else None).
    """

    def __init__(
        self,
        reason: str,
        offset: int,
        detail: str = "",
        level: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.offset = offset
        self.detail = detail
        self.level = level
        self.field = field
        text = f"{reason} at byte {offset}"
        super().__init__(f"{text}: {detail}" if detail else text)

    def __reduce__(self):  # keep every field across pickling (worker processes)
        return (type(self), (self.reason, self.offset, self.detail, self.level, self.field))


class ConfigError(FastMQTTError):
    """One or more problems in a config file; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class Refused(FastMQTTError):
    """A connection turned away by policy (access rules, rate limits); ``reason`` counts it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Rejected(FastMQTTError):
    """The connection is closed before (or instead of) reaching a server; ``reason`` counts it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
