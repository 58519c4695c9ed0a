"""From config to the LoRA objects of a gateway: one catalog shared by all base models
(adapter names are unique across them), one LoraGroup per model with ``lora:``; and
``check_lora``, what `llmgw check` (and `up`, before launching anything) refuses."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from llmgw.config import (
    DEMO_ADAPTERS,
    DEMO_SOURCE,
    AdapterConfig,
    ConfigError,
    GatewayConfig,
    ModelConfig,
    demo_adapter_index,
)
from llmgw.engines.adapters import SGLANG_ADAPTER_API, VLLM_ADAPTER_API, AdapterClient
from llmgw.lora.catalog import Adapter, AdapterCatalog
from llmgw.lora.group import LoraGroup
from llmgw.lora.rates import AdapterRates
from llmgw.lora.residency import AdapterResidency
from llmgw.lora.state import read_state
from llmgw.metrics import LoraMetrics, Metrics
from llmgw.pool import Replica
from llmgw.state_file import unusable

STATE_FILE = "adapters.json"  # under server.state_dir


def check_lora(cfg: GatewayConfig) -> None:
    """Raises ConfigError, naming the YAML path: a ``demo`` adapter that cannot be built,
    or (when any model has ``lora:``) a state directory that cannot be written or a state
    file that cannot be read. Reads the file system; creates nothing."""
    for where, _, adapter in _adapters(cfg):
        if adapter.source == DEMO_SOURCE:
            _demo_index(adapter, where)
    if any(m.lora is not None for m in cfg.models):
        _check_state(state_path(cfg))


def state_path(cfg: GatewayConfig) -> Path:
    return Path(os.path.expanduser(cfg.server.state_dir)) / STATE_FILE


def _adapters(cfg: GatewayConfig) -> list[tuple[str, ModelConfig, AdapterConfig]]:
    """Each configured adapter with its YAML path and its model."""
    return [(f"models[{i}].lora.adapters[{j}]", model, adapter)
            for i, model in enumerate(cfg.models) if model.lora is not None
            for j, adapter in enumerate(model.lora.adapters)]


def _demo_index(adapter: AdapterConfig, where: str) -> int:
    index = demo_adapter_index(adapter.name)
    if index is None:
        raise ConfigError(f"{where}: source 'demo' needs a name demo-lora-N with N in "
                          f"0..{DEMO_ADAPTERS - 1} (the demo adapters up to N are built at "
                          f"start), got {adapter.name!r}")
    return index


def _check_state(file: Path) -> None:
    problem = unusable(file, read_state, "adapter")
    if problem is not None:
        raise ConfigError(f"server.state_dir: {problem}")


def adapter_source(adapter: AdapterConfig, where: str) -> str:
    """``demo`` -> the built-in demo adapter of that name, built offline on first use.
    Raises ConfigError for a demo name that cannot be built."""
    if adapter.source != DEMO_SOURCE:
        return os.path.expanduser(adapter.source)
    index = _demo_index(adapter, where)
    from llmgw.engines.demo_lora import build_demo_adapters  # torch + peft: only when used

    return str(build_demo_adapters(index + 1)[adapter.name])


def configured_adapters(config: GatewayConfig) -> list[Adapter]:
    """Raises ConfigError (never a bare ValueError) for what check_lora refuses."""
    return [Adapter(adapter.name, model.name, adapter_source(adapter, where))
            for where, model, adapter in _adapters(config)]


def lora_roots(config: GatewayConfig) -> dict[str, list[str]]:
    return {m.name: list(m.lora.roots) for m in config.models if m.lora}


def make_catalog(config: GatewayConfig) -> AdapterCatalog:
    """Raises ConfigError (never a bare ValueError) for what check_lora refuses."""
    roots = lora_roots(config)
    return AdapterCatalog(configured_adapters(config), roots,
                          state_path(config) if roots else None,
                          reserved=[m.name for m in config.models])


def make_lora_group(model: ModelConfig, catalog: AdapterCatalog,
                    session: aiohttp.ClientSession, metrics: Metrics) -> LoraGroup:
    """A model's LoRA multiplexing, with no replica yet: they join as they start."""
    assert model.lora is not None
    lora = model.lora
    api = SGLANG_ADAPTER_API if model.engine == "sglang" else VLLM_ADAPTER_API

    def client(replica: Replica) -> AdapterClient:
        return AdapterClient(replica.engine.url, session, api, lora.load_timeout_s)

    lora_metrics = LoraMetrics(metrics, model.name)
    residency = AdapterResidency(
        model.name, client, lora.max_adapters_per_replica,
        AdapterRates(lora.hotness.window_s), lora_metrics, catalog,
        failure_cooldown_s=lora.failure_cooldown_s, load_timeout_s=lora.load_timeout_s,
        request_field=api.request_field)
    return LoraGroup(model.name, catalog, residency, lora.hotness, lora_metrics)
