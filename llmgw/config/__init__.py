"""The YAML config as typed, frozen data, and the loader that merges several files.

One module per section (``server``, ``launch``, ``lora``, ``disagg``, ``routing``,
``auth``, ``bounds``, ``telemetry``, ``tools``), the
model that ties them together (``model``, whose ``cross_section_rules`` lists every rule
across sections), the whole file (``gateway``) and loading (``load``). Data only: no I/O
besides reading the files.
"""

from llmgw.config.admission import AdmissionConfig
from llmgw.config.aliases import AliasConfig, AliasTarget
from llmgw.config.auth import AuthConfig, KeyConfig, Limits, Priority
from llmgw.config.autoscaling import AutoscalingConfig, RolloutConfig
from llmgw.config.base import ConfigError, EngineType, EngineURLs
from llmgw.config.bounds import RequestBounds
from llmgw.config.disagg import (
    SGLANG_BOOTSTRAP_PORT,
    ConditionalPDConfig,
    DisaggConfig,
    PDPoolConfig,
    PDProtocol,
    PDRole,
)
from llmgw.config.gateway import GatewayConfig
from llmgw.config.launch import LaunchConfig, TimeoutConfig
from llmgw.config.load import load_config
from llmgw.config.lora import (
    DEMO_ADAPTERS,
    DEMO_SOURCE,
    AdapterConfig,
    HotnessConfig,
    LoraConfig,
    demo_adapter_index,
)
from llmgw.config.model import ModelConfig, cross_section_rules
from llmgw.config.placement import (
    PlacementConfig,
    ProcessResources,
    ReplicaPlacementConfig,
    Strategy,
)
from llmgw.config.resilience import OutlierConfig, RetryBudgetConfig
from llmgw.config.routing import LoadGuardConfig, PluginSpec, PolicyConfig
from llmgw.config.server import AccessLogConfig, HealthConfig, ServerConfig, TLSConfig
from llmgw.config.telemetry import TelemetryConfig, TracingConfig
from llmgw.config.tools import TOOL_NAME, BatchConfig, ToolConfig

__all__ = [
    "AccessLogConfig",
    "AdmissionConfig",
    "AliasConfig",
    "AliasTarget",
    "AuthConfig",
    "BatchConfig",
    "AutoscalingConfig",
    "ProcessResources",
    "ReplicaPlacementConfig",
    "RetryBudgetConfig",
    "RolloutConfig",
    "DEMO_ADAPTERS",
    "DEMO_SOURCE",
    "SGLANG_BOOTSTRAP_PORT",
    "AdapterConfig",
    "ConditionalPDConfig",
    "ConfigError",
    "DisaggConfig",
    "EngineType",
    "EngineURLs",
    "GatewayConfig",
    "HealthConfig",
    "HotnessConfig",
    "KeyConfig",
    "LaunchConfig",
    "Limits",
    "LoadGuardConfig",
    "LoraConfig",
    "ModelConfig",
    "OutlierConfig",
    "PDPoolConfig",
    "PDProtocol",
    "PDRole",
    "PlacementConfig",
    "PluginSpec",
    "Priority",
    "RequestBounds",
    "PolicyConfig",
    "ServerConfig",
    "Strategy",
    "TelemetryConfig",
    "TimeoutConfig",
    "TracingConfig",
    "TOOL_NAME",
    "ToolConfig",
    "TLSConfig",
    "cross_section_rules",
    "demo_adapter_index",
    "load_config",
]
