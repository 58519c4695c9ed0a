"""The composition root: config + replica addresses -> the objects that serve requests.

The only module that reads both the config and the plugin registries.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import aiohttp

from llmgw.config import ConfigError, GatewayConfig, ModelConfig
from llmgw.dispatcher import Dispatcher, ModelGroup
from llmgw.engines.embedded_client import EmbeddedEngine, FakeEngineClient
from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.engines.sglang import SGLangEngine
from llmgw.engines.vllm import VLLMEngine
from llmgw.metrics import Metrics, ModelMetrics, ReplicaMetrics, ShadowMetrics
from llmgw.pool import Replica, ReplicaPool
from llmgw.routing.registry import make_policy, policy_names
from llmgw.shadow import Shadow
from llmgw.types import ReplicaAddress

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
                          *((f"shadow[{i}]", n) for i, n in enumerate(model.shadow))]:
            if name not in known:
                raise ConfigError(f"models[{index}].{key}: unknown policy {name!r}; "
                                  f"known: {', '.join(known)}")
    for name in cfg.policies:  # plugin names and params, checked by the plugins
        make_policy(name, random.Random(0), cfg.policies)


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
        groups: dict[str, ModelGroup] = {}
        for model in config.models:
            replicas = [
                Replica(addr.id, model.name, self._engine(model, addr.url),
                        ReplicaMetrics(self.metrics, model.name, addr.id, model.routing))
                for addr in addresses[model.name]
            ]
            groups[model.name] = ModelGroup(
                name=model.name, upstream_model=model.upstream_model, replicas=replicas,
                policy=make_policy(model.routing, random.Random(rng.random()), config.policies),
                policy_name=model.routing, timeouts=model.timeouts,
                max_attempts=model.max_attempts, metrics=ModelMetrics(self.metrics, model.name),
                shadows=[Shadow(name, make_policy(name, random.Random(rng.random()),
                                                  config.policies),
                                ShadowMetrics(self.metrics, model.name, name))
                         for name in model.shadow],
            )
        self.pool = ReplicaPool(
            [r for g in groups.values() for r in g.replicas], interval_s=config.health.interval_s,
            stats_interval_s=config.health.stats_interval_s,
        )
        self.dispatcher = Dispatcher(groups, ModelMetrics(self.metrics, "unknown"))

    def _engine(self, model: ModelConfig, url: str) -> OpenAIHTTPEngine:
        return ENGINES[model.engine](
            url, self.session, connect_timeout_s=model.timeouts.connect_s,
            health_timeout_s=self.config.health.timeout_s,
        )

    def count_restart(self, model: str, replica_id: str) -> None:
        self.dispatcher.group(model).replica(replica_id).metrics.restarts.inc()

    async def start(self) -> None:
        await self.pool.check_all()
        self.pool.start()

    async def close(self) -> None:
        await self.pool.stop()
        await self.session.close()
