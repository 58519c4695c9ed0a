"""From config to the LoRA objects of a gateway: one catalog shared by all base models
(adapter names are unique across them), one LoraGroup per model with ``lora:``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import aiohttp

from llmgw.config import AdapterConfig, GatewayConfig, ModelConfig
from llmgw.engines.adapters import SGLANG_ADAPTER_API, VLLM_ADAPTER_API, AdapterClient
from llmgw.lora.catalog import Adapter, AdapterCatalog
from llmgw.lora.group import LoraGroup
from llmgw.lora.rates import AdapterRates
from llmgw.lora.residency import AdapterResidency
from llmgw.metrics import LoraMetrics, Metrics
from llmgw.pool import Replica

DEMO_SOURCE = "demo"
_DEMO_NAME = re.compile(r"^demo-lora-(\d+)$")


def adapter_source(adapter: AdapterConfig) -> str:
    """``demo`` -> the built-in demo adapter of that name, built offline on first use."""
    if adapter.source != DEMO_SOURCE:
        return os.path.expanduser(adapter.source)
    match = _DEMO_NAME.match(adapter.name)
    if match is None:
        raise ValueError(f"adapter {adapter.name!r}: source 'demo' needs a name demo-lora-N")
    from llmgw.engines.demo_lora import build_demo_adapters  # torch + peft: only when used

    index = int(match.group(1))
    return str(build_demo_adapters(index + 1)[adapter.name])


def make_catalog(config: GatewayConfig) -> AdapterCatalog:
    configured = [Adapter(a.name, m.name, adapter_source(a))
                  for m in config.models if m.lora for a in m.lora.adapters]
    roots = {m.name: list(m.lora.roots) for m in config.models if m.lora}
    state = Path(os.path.expanduser(config.server.state_dir)) / "adapters.json"
    return AdapterCatalog(configured, roots, state if roots else None)


def make_lora_group(model: ModelConfig, replicas: list[Replica], catalog: AdapterCatalog,
                    session: aiohttp.ClientSession, metrics: Metrics) -> LoraGroup:
    assert model.lora is not None
    lora = model.lora
    api = SGLANG_ADAPTER_API if model.engine == "sglang" else VLLM_ADAPTER_API
    clients = {r.id: AdapterClient(r.engine.url, session, api, lora.load_timeout_s)
               for r in replicas}
    lora_metrics = LoraMetrics(metrics, model.name)
    residency = AdapterResidency(
        model.name, replicas, clients, lora.max_adapters_per_replica,
        AdapterRates(lora.hotness.window_s), lora_metrics,
        lambda: [a.name for a in catalog.for_base(model.name)],
        failure_cooldown_s=lora.failure_cooldown_s, load_timeout_s=lora.load_timeout_s)
    return LoraGroup(model.name, catalog, residency, replicas, lora.hotness, lora_metrics)
