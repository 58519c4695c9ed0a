"""The whole file: ``server``, ``health``, ``placement``, ``policies``, ``models``,
``aliases``, ``auth``, ``telemetry`` and ``tools``, and the rules across them."""

from __future__ import annotations

from pydantic import Field, model_validator

from llmgw.config.aliases import AliasConfig
from llmgw.config.auth import AuthConfig
from llmgw.config.base import _Strict
from llmgw.config.model import ModelConfig
from llmgw.config.placement import PlacementConfig
from llmgw.config.routing import PolicyConfig
from llmgw.config.server import HealthConfig, ServerConfig
from llmgw.config.telemetry import TelemetryConfig
from llmgw.config.tools import ToolConfig


class GatewayConfig(_Strict):
    server: ServerConfig = ServerConfig()
    health: HealthConfig = HealthConfig()
    # Where launched engines run: child processes (local) or a Ray cluster (ray).
    placement: PlacementConfig = PlacementConfig()
    # Named routing policies; models refer to them (or to a built-in) by ``routing:``.
    policies: dict[str, PolicyConfig] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(min_length=1)
    # Served names over several models with weights (canaries, traffic splits).
    aliases: list[AliasConfig] = Field(default_factory=list)
    # API keys and limits; absent: no key is asked for (as before keys existed).
    auth: AuthConfig | None = None
    # Tracing (OpenTelemetry); off unless ``telemetry.tracing`` is given.
    telemetry: TelemetryConfig = TelemetryConfig()
    # Python classes served as tools (/v1/tools, /mcp, the server-side tool loop).
    tools: list[ToolConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} is declared twice")
            seen.add(model.name)
        # `model: <adapter>` must name one thing: adapters are unique across all models.
        for model in self.models:
            for adapter in model.lora.adapters if model.lora else []:
                if adapter.name in seen:
                    raise ValueError(f"models[{model.name}].lora: adapter name "
                                     f"{adapter.name!r} is already a model or adapter name")
                seen.add(adapter.name)
        models = {m.name for m in self.models}
        for index, alias in enumerate(self.aliases):
            if alias.name in seen:
                raise ValueError(f"aliases[{index}].name: {alias.name!r} is already a model, "
                                 f"adapter or alias name")
            seen.add(alias.name)
            for position, target in enumerate(alias.targets):
                if target.model not in models:
                    raise ValueError(f"aliases[{index}].targets[{position}].model: no model "
                                     f"named {target.model!r}")
        tools = [t.name for t in self.tools]
        for index, name in enumerate(tools):
            if name in tools[:index]:
                raise ValueError(f"tools[{index}].name: tool {name!r} is declared twice")
        for name in self.auth.model_limits if self.auth is not None else []:
            if name not in models:
                raise ValueError(f"auth.model_limits.{name}: no model named {name!r}")
        return self
