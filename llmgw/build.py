"""The composition root: config + replica addresses -> the objects that serve requests.

The only module that reads both the config and the plugin registries.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Coroutine
from typing import Any

import aiohttp
import zmq.asyncio

from llmgw.admission import FairQueue
from llmgw.config import ConfigError, GatewayConfig, ModelConfig, PDPoolConfig, PDRole
from llmgw.config.autoscaling import AutoscalingConfig
from llmgw.disagg.assemble import make_disaggregation
from llmgw.dispatcher import Dispatcher
from llmgw.engines.embedded_client import EmbeddedEngine, FakeEngineClient
from llmgw.engines.http1.pool import HTTPClient
from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.engines.prompt_tokens import PromptTokenizer
from llmgw.engines.sglang import SGLangEngine
from llmgw.engines.vllm import VLLMEngine
from llmgw.kv_events import KVEventStream, KVEventSubscriber
from llmgw.lora.catalog import Adapter
from llmgw.lora.setup import lora_roots, make_catalog, make_lora_group
from llmgw.metrics import (
    AdmissionMetrics,
    KVEventMetrics,
    Metrics,
    ModelMetrics,
    PDMetrics,
    ReplicaMetrics,
    ShadowMetrics,
    TenantMetrics,
)
from llmgw.model_group import ModelGroup
from llmgw.pool import Replica, ReplicaPool, ReplicaWait
from llmgw.resilience.budget import RetryBudget
from llmgw.routing.base import RoutingPolicy
from llmgw.routing.kv_block_index import KVBlockIndex
from llmgw.routing.registry import make_policy, policy_names, policy_spec, uses_kv_index
from llmgw.routing.traffic_split import TrafficSplit
from llmgw.shadow import Shadow
from llmgw.telemetry import AccessLog, Tracing, make_tracing
from llmgw.tenancy.gate import Tenancy
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
    specs = (policy_spec(name, cfg.policies) for name in model.policy_names)
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


def make_splits(cfg: GatewayConfig, rng: random.Random) -> dict[str, TrafficSplit]:
    """``aliases:`` as traffic splits, by served name."""
    return {alias.name: TrafficSplit(alias.name, [(t.model, t.weight) for t in alias.targets],
                                     random.Random(rng.random()))
            for alias in cfg.aliases}


def load_tokenizer(model: ModelConfig) -> PromptTokenizer:
    source = model.tokenizer or model.model
    assert source is not None  # check_config
    if source == "demo":
        from llmgw.engines.demo_model import ensure_demo_model

        source = str(ensure_demo_model())
    return PromptTokenizer.load(source, trust_request_chat_template=_trusts_templates(model))


def _trusts_templates(model: ModelConfig) -> bool:
    """The operator let the engines run request-supplied chat templates (vLLM's
    --trust-request-chat-template): then the gateway's tokenizer may render them too. A
    disaggregated model's pools must all trust them."""
    flag = "trust_request_chat_template"
    args = [model.engine_args, *(pool.engine_args for _, pool in _pools(model))]
    return all(bool({**model.engine_args, **a}.get(flag, False)) for a in args)


def _scales_to_zero(model: ModelConfig) -> AutoscalingConfig | None:
    """The autoscaling of the pool that answers requests, when it may sit at zero."""
    pd = model.disaggregation
    scaling = pd.decode.autoscaling if pd is not None else model.autoscaling
    return scaling if scaling is not None and scaling.min_replicas == 0 else None


class KVFeeds:
    """Per model, the KV block index its engines' events feed (vLLM KV events), with one
    subscription per replica that publishes: opened as a replica joins, closed as it
    leaves. The index outlives routing changes (it mirrors the engines, not the config)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._zmq = zmq.asyncio.Context()
        self.indexes: dict[str, KVBlockIndex] = {}
        self._subscribers: dict[str, KVEventSubscriber] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def index(self, model: str) -> KVBlockIndex:
        return self.indexes.setdefault(model, KVBlockIndex())

    def added(self, replica: Replica) -> None:
        url = replica.address.kv_events
        if url is None or replica.model not in self.indexes:
            return
        stream = KVEventStream(replica.id, self.indexes[replica.model],
                               KVEventMetrics(self._metrics, replica.model, replica.id))
        subscriber = KVEventSubscriber(url, stream, self._zmq)
        self._subscribers[replica.id] = subscriber
        subscriber.start()

    def removed(self, replica: Replica) -> None:
        subscriber = self._subscribers.pop(replica.id, None)
        if subscriber is not None:
            task = asyncio.ensure_future(subscriber.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        index = self.indexes.get(replica.model)
        if index is not None:
            index.clear(replica.id)

    async def close(self) -> None:
        for subscriber in self._subscribers.values():
            await subscriber.stop()
        for task in list(self._stopping):
            await task
        self._zmq.term()


class SeriesCleanup:
    """A replica that left takes its metric series with it (gauges would otherwise show
    it forever, and label sets pile up with every scale-down and rollout)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def added(self, replica: Replica) -> None:
        return None

    def removed(self, replica: Replica) -> None:
        self._metrics.forget_replica(replica.model, replica.id)


class Gateway:
    """Everything a running gateway owns. Build it inside the event loop that serves it.

    Models come and go at run time (llmgw/fleet): ``add_model`` builds a model's group
    (policies, LoRA, PD) with no replica, ``serve`` exposes it, ``wire`` / ``unwire`` add
    and remove replicas through the pool, ``replace_group`` rebuilds a model's group
    around the same replicas (routing or limits changed), ``retire_model`` hides it.
    """

    def __init__(self, config: GatewayConfig, *, rng: random.Random | None = None,
                 metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        """``tracing``: instead of what ``telemetry.tracing`` asks for (tests)."""
        check_config(config)
        self.config = config
        self.metrics = metrics or Metrics()
        # Both set up at start: a reload that changes them is refused (fleet/plan.py).
        self.tracing = tracing or make_tracing(config.telemetry.tracing)
        access = config.server.access_log
        self.access_log = AccessLog(
            os.path.expanduser(access.path) if access.path else None) if access.enabled else None
        self._rng = rng or random.Random(0)
        # Requests to the engines go over the gateway's own keep-alive HTTP/1.1 client
        # (llmgw/engines/http1); the aiohttp session serves health checks, metrics
        # scrapes and control calls (abort, LoRA adapters). Neither bounds the
        # connections in use: admission is the engines' business and ``admission:``'s.
        self.client = HTTPClient()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            auto_decompress=False, raise_for_status=False,
        )
        self.catalog = make_catalog(config)
        self.tenancy = Tenancy(config, TenantMetrics(self.metrics))
        self.pool = ReplicaPool(interval_s=config.health.interval_s,
                                stats_interval_s=config.health.stats_interval_s,
                                failure_threshold=config.health.failure_threshold,
                                outlier=config.health.outlier)
        self.dispatcher = Dispatcher(
            {}, ModelMetrics(self.metrics, "unknown"), splits=make_splits(config, self._rng),
            split_counter=lambda alias, target:
                self.metrics.fleet.split_requests.labels(alias, target).inc(),
            tracing=self.tracing)
        self.kv = KVFeeds(self.metrics)
        self._series = SeriesCleanup(self.metrics)
        self._groups: dict[str, ModelGroup] = {}
        # Model -> (what it was loaded from, tokenizer), kept across group rebuilds.
        self._tokenizers: dict[str, tuple[tuple[str | None, bool], PromptTokenizer]] = {}
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def models(self) -> set[str]:
        return set(self._groups)

    def model_config(self, name: str) -> ModelConfig:
        return next(m for m in self.config.models if m.name == name)

    # --- models ---------------------------------------------------------------------

    def add_model(self, model: ModelConfig) -> ModelGroup:
        """Build ``model``'s group, listening for its replicas; not served yet."""
        old = self._groups.get(model.name)
        if old is not None:  # re-added while its old self still drains: cut it loose
            self.pool.unwatch(model.name, old)
        else:
            self.pool.watch(model.name, self.kv)
            self.pool.watch(model.name, self._series)
        group = self._groups[model.name] = self._group(model)
        self.pool.watch(model.name, group)
        return group

    def serve(self, group: ModelGroup) -> None:
        self.dispatcher.groups[group.name] = group

    def retire_model(self, name: str) -> None:
        """New requests for ``name`` get 404; requests in flight finish."""
        self.dispatcher.groups.pop(name, None)

    def forget_model(self, name: str) -> None:
        """After a retired model's replicas all left: drop what it kept."""
        if name in self.dispatcher.groups:  # added again meanwhile
            return
        group = self._groups.pop(name, None)
        if group is not None:
            self.pool.unwatch(name, group)
            self._close_group(group)
        self.pool.unwatch(name, self.kv)
        self.pool.unwatch(name, self._series)
        self.kv.indexes.pop(name, None)
        cached = self._tokenizers.pop(name, None)
        if cached is not None:
            cached[1].close()

    def replace_group(self, model: ModelConfig) -> ModelGroup:
        """The same replicas under a group built from ``model`` (routing, policies,
        limits, LoRA or PD settings changed). Requests in flight finish with the old
        group; routing memory (prefix index, sessions) starts fresh with the new policy,
        the KV block index and adapter residency carry over from the engines."""
        old = self._groups[model.name]
        group = self._groups[model.name] = self._group(model)
        for replica in self.pool.replicas(model.name):
            replica.metrics.set_policy(_routing(model, replica.role))
            group.added(replica)
        self.pool.unwatch(model.name, old)
        self.pool.watch(model.name, group)
        if model.name in self.dispatcher.groups:
            self.dispatcher.groups[model.name] = group
        self._close_group(old)
        return group

    def reconfigure(self, config: GatewayConfig, adapters: list[Adapter]) -> None:
        """Settings outside the models that apply at once (health, aliases, keys and
        limits, the configured LoRA adapters: ``configured_adapters(config)``, which may build demo
        adapters, so the caller runs it off the event loop)."""
        self.config = config
        self.pool.configure(interval_s=config.health.interval_s,
                            stats_interval_s=config.health.stats_interval_s,
                            failure_threshold=config.health.failure_threshold,
                            outlier=config.health.outlier)
        self.dispatcher.splits = make_splits(config, self._rng)
        self.tenancy.reconfigure(config)
        gone = self.catalog.reconfigure(adapters, lora_roots(config),
                                        [m.name for m in config.models])
        for adapter in gone:  # off their replicas as their last requests end
            group = self._groups.get(adapter.base)
            if group is not None and group.lora is not None:
                self._spawn(group.lora.remove(adapter))

    # --- replicas -------------------------------------------------------------------

    def wire(self, model: str, address: ReplicaAddress, role: Role, version: str,
             healthy: bool) -> Replica:
        """Put a started replica in rotation; ``healthy`` when its launcher just saw it
        answer (an attached engine waits for the first health check)."""
        cfg = self.model_config(model)
        replica = Replica(
            address.id, model, self._engine(cfg, address.url),
            ReplicaMetrics(self.metrics, model, address.id, _routing(cfg, role)),
            role=role, version=version, address=address)
        if healthy:
            replica.set_health(True)
        self.pool.add(replica)
        return replica

    def unwire(self, replica_id: str) -> None:
        if self.pool.get(replica_id) is not None:
            self.pool.remove(replica_id)

    def count_restart(self, model: str, replica_id: str) -> None:
        replica = self.pool.get(replica_id)
        if replica is not None:
            replica.metrics.restarts.inc()

    # --- building -------------------------------------------------------------------

    def _group(self, model: ModelConfig) -> ModelGroup:
        kv_index = self.kv.index(model.name) if reads_kv_events(self.config, model) else None
        rng, policies = self._rng, self.config.policies

        def policy(name: str) -> RoutingPolicy:
            return make_policy(name, random.Random(rng.random()), policies, kv_index,
                               lora=model.lora is not None)

        # A disaggregated model's own policy routes among its decode replicas.
        live_name = _routing(model, "decode" if model.disaggregation else "mixed")
        live = policy(live_name)
        scaling = _scales_to_zero(model)
        metrics = ModelMetrics(self.metrics, model.name)
        # One budget for the model: the dispatcher's failover and the PD legs' share it.
        budget = RetryBudget(model.retry_budget, on_denied=metrics.retries_denied.inc)
        group = ModelGroup(
            name=model.name, upstream_model=model.upstream_model, engine=ENGINES[model.engine],
            policy=live, policy_name=live_name, timeouts=model.timeouts,
            max_attempts=model.max_attempts, metrics=metrics, retry_budget=budget,
            shadows=[Shadow(name, policy(name), ShadowMetrics(self.metrics, model.name, name))
                     for name in model.shadow],
            tokenizer=self._tokenizer(model) if kv_index is not None else None,
            lora=make_lora_group(model, self.catalog, self.session, self.metrics)
            if model.lora is not None else None,
            disagg=make_disaggregation(
                model, policy(_routing(model, "prefill")), live,
                PDMetrics(self.metrics, model.name), random.Random(rng.random()), budget,
                self.tracing)
            if model.disaggregation is not None else None,
            waiter=ReplicaWait(model.name, scaling.max_queued_requests,
                               scaling.queue_timeout_s) if scaling is not None else None,
        )
        if model.admission is not None:
            limit = model.admission.max_in_flight_per_replica
            group.admission = FairQueue(
                model.name, lambda: group.serving_replicas() * limit,
                model.admission.max_queued, model.admission.queue_timeout_s,
                AdmissionMetrics(self.metrics))
        if self._started and group.lora is not None:
            group.lora.start()
        return group

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _tokenizer(self, model: ModelConfig) -> PromptTokenizer:
        """The model's tokenizer, loaded once: a group rebuilt by a reload keeps it unless
        its source or template trust changed (loading one takes the loop a while)."""
        key = (model.tokenizer or model.model, _trusts_templates(model))
        cached = self._tokenizers.get(model.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            cached[1].close()
        tokenizer = load_tokenizer(model)
        self._tokenizers[model.name] = (key, tokenizer)
        return tokenizer

    def _close_group(self, group: ModelGroup) -> None:
        if group.lora is not None:
            group.lora.stop_soon()

    def _engine(self, model: ModelConfig, url: str) -> OpenAIHTTPEngine:
        return ENGINES[model.engine](
            url, self.session, self.client, connect_timeout_s=model.timeouts.connect_s,
            health_timeout_s=self.config.health.timeout_s, tracing=self.tracing,
        )

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        await self.pool.check_all()
        self.pool.start()
        for group in self._groups.values():
            if group.lora is not None:
                group.lora.start()

    async def close(self) -> None:
        if self.session.closed:  # closed already (the app's lifespan, then the CLI)
            return
        for group in self._groups.values():
            if group.lora is not None:
                await group.lora.stop()
        await self.pool.stop()
        await self.kv.close()
        for _, tokenizer in self._tokenizers.values():
            tokenizer.close()
        self.client.close()
        await self.session.close()
        await self.tracing.close()
        if self.access_log is not None:
            await self.access_log.close()
