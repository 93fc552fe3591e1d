"""The config: TOML in, a frozen, validated `Config` out. Data and validation only: nothing here
imports the runtime (the `check` command, which also loads TLS material and looks up names,
calls the runtime's own validators lazily)."""

from fastmqtt.config.load import load_config, load_config_text, validate
from fastmqtt.config.model import (
    BackendConfig,
    BackendTLSConfig,
    CheckConfig,
    ClientTimeout,
    Config,
    Defaults,
    FrontendConfig,
    FrontendTLSConfig,
    GlobalConfig,
    Network,
    RebalanceConfig,
    ResolversConfig,
    ServerConfig,
    ServerTemplateConfig,
    SNICert,
    StatsConfig,
    StatsSocketConfig,
    StickConfig,
)
from fastmqtt.config.values import parse_duration

__all__ = [
    "BackendConfig",
    "BackendTLSConfig",
    "CheckConfig",
    "ClientTimeout",
    "Config",
    "Defaults",
    "FrontendConfig",
    "FrontendTLSConfig",
    "GlobalConfig",
    "Network",
    "RebalanceConfig",
    "ResolversConfig",
    "SNICert",
    "ServerConfig",
    "ServerTemplateConfig",
    "StatsConfig",
    "StatsSocketConfig",
    "StickConfig",
    "load_config",
    "load_config_text",
    "parse_duration",
    "validate",
]
