"""The composition root: config + replica addresses -> the objects that serve requests.

The only module that reads both the config and the plugin registries.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import aiohttp
import zmq.asyncio

from llmgw.config import ConfigError, GatewayConfig, ModelConfig, PDPoolConfig, PDRole
from llmgw.disagg.assemble import make_disaggregation
from llmgw.dispatcher import Dispatcher, ModelGroup
from llmgw.engines.embedded_client import EmbeddedEngine, FakeEngineClient
from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.engines.prompt_tokens import PromptTokenizer
from llmgw.engines.sglang import SGLangEngine
from llmgw.engines.vllm import VLLMEngine
from llmgw.kv_events import KVEventStream, KVEventSubscriber
from llmgw.lora.group import LoraGroup
from llmgw.lora.setup import make_catalog, make_lora_group
from llmgw.metrics import (
    KVEventMetrics,
    Metrics,
    ModelMetrics,
    PDMetrics,
    ReplicaMetrics,
    ShadowMetrics,
)
from llmgw.pool import Replica, ReplicaPool
from llmgw.routing.base import RoutingPolicy
from llmgw.routing.kv_block_index import KVBlockIndex
from llmgw.routing.registry import make_policy, policy_names, policy_spec, uses_kv_index
from llmgw.shadow import Shadow
from llmgw.types import ReplicaAddress, Role

# Engine type (config ``engine:``) -> the client class the gateway talks to it with.
ENGINES: dict[str, type[OpenAIHTTPEngine]] = {
    "transformers": EmbeddedEngine,
    "vllm": VLLMEngine,
    "sglang": SGLangEngine,
    "openai": OpenAIHTTPEngine,
    "fake": FakeEngineClient,
}


def check_config(cfg: GatewayConfig) -> None:
    """What pydantic cannot know: names that refer to registries. Runs before any launch."""
    known = policy_names(cfg.policies)
    for index, model in enumerate(cfg.models):
        for key, name in [("routing", model.routing),
                          *((f"shadow[{i}]", n) for i, n in enumerate(model.shadow)),
                          *((f"disaggregation.{role}.routing", pool.routing)
                            for role, pool in _pools(model))]:
            if name not in known:
                raise ConfigError(f"models[{index}].{key}: unknown policy {name!r}; "
                                  f"known: {', '.join(known)}")
    for name in cfg.policies:  # plugin names and params, checked by the plugins
        make_policy(name, random.Random(0), cfg.policies)
    for index, model in enumerate(cfg.models):
        _check_kv_routing(cfg, index, model)


def reads_kv_events(cfg: GatewayConfig, model: ModelConfig) -> bool:
    """Whether the model's live or shadow policy scores engine-reported KV blocks."""
    names = (model.routing, *model.shadow, *(pool.routing for _, pool in _pools(model)))
    specs = (policy_spec(name, cfg.policies) for name in names)
    return any(spec is not None and uses_kv_index(spec) for spec in specs)


def _pools(model: ModelConfig) -> list[tuple[PDRole, PDPoolConfig]]:
    return model.disaggregation.pools if model.disaggregation is not None else []


def _routing(model: ModelConfig, role: Role) -> str:
    """The policy that routes among the model's replicas of ``role``."""
    pool = next((pool for r, pool in _pools(model) if r == role), None)
    return pool.routing if pool is not None else model.routing


def _check_kv_routing(cfg: GatewayConfig, index: int, model: ModelConfig) -> None:
    if not reads_kv_events(cfg, model):
        return
    if not model.publishes_kv_events:
        raise ConfigError(
            f"models[{index}].routing: {model.name!r} routes on the KV blocks its engines "
            f"report (scorer 'kv-cache'): set launch.kv_events: true (vLLM) or give "
            f"kv_events_url for attached engines")
    if model.tokenizer is None and model.model is None:
        raise ConfigError(
            f"models[{index}].tokenizer: token-level routing (scorer 'kv-cache') needs the "
            f"model's tokenizer: give 'tokenizer' (a path or hub id) or 'model'")


def load_tokenizer(model: ModelConfig) -> PromptTokenizer:
    source = model.tokenizer or model.model
    assert source is not None  # check_config
    if source == "demo":
        from llmgw.engines.demo_model import ensure_demo_model

        source = str(ensure_demo_model())
    return PromptTokenizer.load(source)


class Gateway:
    """Everything a running gateway owns. Build it inside the event loop that serves it."""

    def __init__(
        self, config: GatewayConfig, addresses: Mapping[str, Sequence[ReplicaAddress]],
        *, rng: random.Random | None = None, metrics: Metrics | None = None,
    ) -> None:
        check_config(config)
        self.config = config
        self.metrics = metrics or Metrics()
        rng = rng or random.Random(0)
        # One connection pool for all engines; keep-alive connections are the main saving
        # of a proxy's per-request cost. No limit: admission is the engines' business.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            auto_decompress=False, raise_for_status=False,
        )
        self._zmq = zmq.asyncio.Context()
        self.kv_subscribers: list[KVEventSubscriber] = []
        self.catalog = make_catalog(config)
        groups: dict[str, ModelGroup] = {}
        for model in config.models:
            replicas = [
                Replica(addr.id, model.name, self._engine(model, addr.url),
                        ReplicaMetrics(self.metrics, model.name, addr.id, _routing(model, role)),
                        role=role)
                for addr, role in zip(addresses[model.name], model.replica_roles, strict=True)
            ]
            kv_index = self._subscribe(model, addresses[model.name]) \
                if reads_kv_events(config, model) else None

            def policy(name: str, kv_index: KVBlockIndex | None = kv_index,
                       lora: bool = model.lora is not None) -> RoutingPolicy:
                return make_policy(name, random.Random(rng.random()), config.policies, kv_index,
                                   lora=lora)

            # A disaggregated model's own policy routes among its decode replicas.
            live_name = _routing(model, "decode" if model.disaggregation else "mixed")
            live = policy(live_name)
            groups[model.name] = ModelGroup(
                name=model.name, upstream_model=model.upstream_model, replicas=replicas,
                policy=live,
                policy_name=live_name, timeouts=model.timeouts,
                max_attempts=model.max_attempts, metrics=ModelMetrics(self.metrics, model.name),
                shadows=[Shadow(name, policy(name), ShadowMetrics(self.metrics, model.name, name))
                         for name in model.shadow],
                tokenizer=load_tokenizer(model) if kv_index is not None else None,
                lora=make_lora_group(model, replicas, self.catalog, self.session, self.metrics)
                if model.lora is not None else None,
                disagg=make_disaggregation(
                    model, replicas, policy(_routing(model, "prefill")), live,
                    PDMetrics(self.metrics, model.name), random.Random(rng.random()))
                if model.disaggregation is not None else None,
            )
        self.pool = ReplicaPool(
            [r for g in groups.values() for r in g.replicas], interval_s=config.health.interval_s,
            stats_interval_s=config.health.stats_interval_s,
        )
        self.dispatcher = Dispatcher(groups, ModelMetrics(self.metrics, "unknown"))

    def _subscribe(self, model: ModelConfig, addresses: Sequence[ReplicaAddress]) -> KVBlockIndex:
        """One index per model, fed by every replica's KV event publisher."""
        index = KVBlockIndex()
        for addr in addresses:
            if addr.kv_events is not None:
                stream = KVEventStream(addr.id, index,
                                       KVEventMetrics(self.metrics, model.name, addr.id))
                self.kv_subscribers.append(KVEventSubscriber(addr.kv_events, stream, self._zmq))
        return index

    def _engine(self, model: ModelConfig, url: str) -> OpenAIHTTPEngine:
        return ENGINES[model.engine](
            url, self.session, connect_timeout_s=model.timeouts.connect_s,
            health_timeout_s=self.config.health.timeout_s,
        )

    def count_restart(self, model: str, replica_id: str) -> None:
        self.dispatcher.group(model).replica(replica_id).metrics.restarts.inc()

    async def start(self) -> None:
        for subscriber in self.kv_subscribers:
            subscriber.start()
        await self.pool.check_all()
        self.pool.start()
        for group in self.lora_groups():
            group.start()

    def lora_groups(self) -> list[LoraGroup]:
        return [g.lora for g in self.dispatcher.groups.values() if g.lora is not None]

    async def close(self) -> None:
        for lora in self.lora_groups():
            await lora.stop()
        await self.pool.stop()
        for subscriber in self.kv_subscribers:
            await subscriber.stop()
        self._zmq.term()
        for group in self.dispatcher.groups.values():
            if group.tokenizer is not None:
                group.tokenizer.close()
        await self.session.close()
