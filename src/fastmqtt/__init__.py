"""fastmqtt: an MQTT-aware load balancer for broker clusters."""

__version__ = "0.1.0"

from fastmqtt._accel import IMPLEMENTATION
from fastmqtt.errors import ConfigError, MalformedPacket

__all__ = ["IMPLEMENTATION", "ConfigError", "MalformedPacket", "__version__"]
