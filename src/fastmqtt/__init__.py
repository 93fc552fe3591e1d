"""fastmqtt: an MQTT-aware load balancer for broker clusters."""

__version__ = "0.1.0"

from typing import Any

from fastmqtt._accel import IMPLEMENTATION
from fastmqtt.errors import ConfigError, MalformedPacket

_FROM_PARSE = ("Connack", "Connect", "inspect_connack", "inspect_connect")

__all__ = ["IMPLEMENTATION", "ConfigError", "MalformedPacket", "__version__", *_FROM_PARSE]


def __getattr__(name: str) -> Any:
    # The inspector is imported on first use, so `import fastmqtt` stays cheap.
    if name in _FROM_PARSE:
        from fastmqtt import parse

        return getattr(parse, name)
    raise AttributeError(f"module 'fastmqtt' has no attribute {name!r}")
