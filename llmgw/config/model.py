"""One entry of ``models:``: a served name and the engine replicas behind it.

Each section validates its own keys in its own module; the rules that tie two sections
together (an engine and its LoRA API, disaggregation and shadow policies, ...) are all
listed in :func:`cross_section_rules`, so a new section adds its rules there, in one place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llmgw.config.admission import AdmissionConfig
from llmgw.config.autoscaling import AutoscalingConfig, RolloutConfig
from llmgw.config.base import EngineType, EngineURLs, _Strict
from llmgw.config.disagg import DisaggConfig, PDProtocol
from llmgw.config.launch import LaunchConfig, TimeoutConfig
from llmgw.config.lora import LoraConfig
from llmgw.config.placement import ReplicaPlacementConfig
from llmgw.config.resilience import RetryBudgetConfig

_LORA_ENGINES = ("vllm", "sglang", "transformers")


class ModelConfig(_Strict):
    """One served model name and the engine replicas behind it.

    Either the gateway launches ``replicas`` engines serving ``model`` (a local path,
    a hub id, or ``demo`` for the built-in tiny model), or it attaches to engines that
    someone else runs, given by ``url``.
    """

    name: str = Field(min_length=1)
    engine: EngineType = "transformers"
    model: str | None = None
    replicas: int | None = Field(default=None, ge=1, le=256)
    url: EngineURLs | None = None
    # Attached vLLM replicas' KV event publishers (`tcp://host:port`), one per `url`, in
    # the same order: the engine's --kv-events-config endpoint as seen from the gateway.
    kv_events_url: list[str] | None = None
    # Where the gateway loads the tokenizer from for token-level routing (the precise
    # prefix scorer): a path or hub id. Defaults to ``model``.
    tokenizer: str | None = None
    # The model name the upstream engine knows; defaults to ``name``.
    served_model_name: str | None = None
    # Cache-aware by default: on traffic nobody tuned for (shared system prompts, multi-turn
    # sessions) least-load found the hit rate of round robin (bench/fleet_sim/README.md).
    routing: str = "prefix-aware"
    # Policies that rank every request beside ``routing`` without deciding (metrics only).
    shadow: list[str] = Field(default_factory=list)
    launch: LaunchConfig = LaunchConfig()
    # Extra flags for a launched engine: {"max_batch_size": 8} -> --max-batch-size 8.
    engine_args: dict[str, Any] = Field(default_factory=dict)
    timeouts: TimeoutConfig = TimeoutConfig()
    startup_timeout_s: float = Field(default=600.0, gt=0)
    # Tries on other replicas when one cannot be reached before any byte was sent.
    max_attempts: int = Field(default=2, ge=1, le=8)
    # Past replicas x max_in_flight_per_replica, requests wait at the gateway: interactive
    # before batch, keys sharing by weight; null: every request goes to the engines.
    admission: AdmissionConfig | None = None
    # How many of those tries the model may spend: retries at most a share of requests.
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    # LoRA adapters multiplexed over this model's replicas (engines vllm, sglang,
    # transformers); launched engines get LoRA enabled with these limits.
    lora: LoraConfig | None = None
    # Prefill-decode disaggregation: separate prefill and decode pools instead of
    # `replicas` / `url` (see configs/disagg.yaml).
    disaggregation: DisaggConfig | None = None
    # Launched models: scale on load between min_replicas and max_replicas instead of a
    # fixed `replicas` (Ray Serve's knobs; see configs/autoscale.yaml).
    autoscaling: AutoscalingConfig | None = None
    # How replicas are replaced on reload and removed on scale-down.
    rollout: RolloutConfig = RolloutConfig()
    # What each launched replica asks a Ray cluster for (top-level placement.backend: ray);
    # the local backend ignores it, so one file serves both.
    placement: ReplicaPlacementConfig = ReplicaPlacementConfig()

    @field_validator("kv_events_url", mode="before")
    @classmethod
    def _one_events_url_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("kv_events_url")
    @classmethod
    def _events_urls_are_zmq_tcp(cls, value: list[str] | None) -> list[str] | None:
        for url in value or []:
            if not url.startswith("tcp://") or "*" in url:
                raise ValueError(f"must be a ZMQ address to connect to, tcp://HOST:PORT, "
                                 f"got {url!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        self._kv_events_match_replicas()
        cross_section_rules(self)
        if self.disaggregation is not None:
            self._pools_replace_replicas()
        else:
            self._launch_or_attach()
        return self

    def _kv_events_match_replicas(self) -> None:
        if self.kv_events_url is None:
            return
        if self.url is None:
            raise ValueError("'kv_events_url' is for attached engines ('url'); launched "
                             "vLLM replicas publish with launch.kv_events: true")
        if len(self.kv_events_url) != len(self.url):
            raise ValueError(f"'kv_events_url' needs one address per 'url' "
                             f"({len(self.url)}), got {len(self.kv_events_url)}")

    def _launch_or_attach(self) -> None:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("give either 'replicas' (a fixed count) or 'autoscaling', "
                             "not both")
        if self.url is not None:
            if self.replicas is not None or self.autoscaling is not None:
                raise ValueError("give either 'url' (attach) or 'replicas' / 'autoscaling' "
                                 "(launch), not both")
            if self.launch != LaunchConfig() or self.engine_args \
                    or self.placement != ReplicaPlacementConfig():
                raise ValueError("'launch', 'engine_args' and 'placement' apply to launched "
                                 "engines only, not to 'url' (attach)")
        elif self.engine == "openai":
            raise ValueError("engine 'openai' is attach-only: give 'url'")
        elif self.model is None:
            raise ValueError("a launched engine needs 'model' (a path, hub id or 'demo')")

    def _pools_replace_replicas(self) -> None:
        pd = self.disaggregation
        assert pd is not None
        if self.url is not None or self.replicas is not None or self.kv_events_url \
                or self.autoscaling is not None:
            raise ValueError("a disaggregated model gives its replicas under "
                             "disaggregation.prefill and .decode, not 'replicas', "
                             "'autoscaling' or 'url' (each pool has its own)")
        if not pd.launched:
            if self.launch != LaunchConfig() or self.engine_args \
                    or self.placement != ReplicaPlacementConfig():
                raise ValueError("'launch', 'engine_args' and 'placement' apply to launched "
                                 "engines only, not to attached prefill / decode pools")
        elif self.engine == "openai":
            raise ValueError("engine 'openai' is attach-only: give disaggregation.prefill.url "
                             "and .decode.url")
        elif self.model is None:
            raise ValueError("a launched engine needs 'model' (a path, hub id or 'demo')")

    @property
    def policy_names(self) -> set[str]:
        """Every routing policy the model refers to: live, shadows, PD pools'."""
        pools = self.disaggregation.pools if self.disaggregation is not None else []
        return {self.routing, *self.shadow, *(pool.routing for _, pool in pools)}

    @property
    def publishes_kv_events(self) -> bool:
        return self.launch.kv_events or self.kv_events_url is not None

    @property
    def pd_protocol(self) -> PDProtocol | None:
        """The prefill-decode protocol of a disaggregated model (None otherwise)."""
        if self.disaggregation is None:
            return None
        if self.disaggregation.protocol is not None:
            return self.disaggregation.protocol
        if self.engine == "vllm":
            return "vllm"
        return "sglang" if self.engine == "sglang" else None

    @property
    def launched(self) -> bool:
        if self.disaggregation is not None:
            return self.disaggregation.launched
        return self.url is None

    @property
    def replica_count(self) -> int:
        if self.disaggregation is not None:
            return self.disaggregation.prefill.count + self.disaggregation.decode.count
        if self.url is not None:
            return len(self.url)
        if self.autoscaling is not None:
            return self.autoscaling.start_replicas
        return self.replicas or 1

    @property
    def replica_roles(self) -> list[Literal["mixed", "prefill", "decode"]]:
        """The role of each replica, in the order launchers and ``url`` lists give them:
        prefill replicas first, then decode ones."""
        pd = self.disaggregation
        if pd is None:
            return ["mixed"] * self.replica_count
        return [role for role, pool in pd.pools for _ in range(pool.count)]

    @property
    def upstream_model(self) -> str:
        return self.served_model_name or self.name


def cross_section_rules(model: ModelConfig) -> None:
    """Every rule that ties one section of a model to another; raises ValueError.

    - ``lora`` needs an engine with an adapter API.
    - ``launch.kv_events`` is a vLLM flag.
    - ``disaggregation`` supports neither ``shadow`` policies nor ``lora``.
    - ``disaggregation`` needs a prefill-decode protocol, from its engine or ``protocol``,
      and its pools' engine-specific keys must match that protocol.
    - ``placement.nodes`` above 1 needs an engine that runs across nodes (vLLM, SGLang),
      and a GPU count that parallelism can fill.
    """
    if model.lora is not None and model.engine not in _LORA_ENGINES:
        raise ValueError(f"lora: engine {model.engine!r} has no adapter API; use vllm, "
                         "sglang or transformers")
    if model.launch.kv_events and model.engine != "vllm":
        raise ValueError(f"launch.kv_events is supported by engine 'vllm' only, "
                         f"not {model.engine!r}")
    _multi_node_rules(model)
    if model.disaggregation is None:
        return
    if model.shadow or model.lora is not None:
        raise ValueError("'shadow' policies and 'lora' are not supported on a "
                         "disaggregated model")
    protocol = model.pd_protocol
    if protocol is None:
        raise ValueError(f"disaggregation: engine {model.engine!r} has no prefill-decode "
                         f"protocol; use vllm or sglang (or openai with 'protocol')")
    model.disaggregation.check_protocol(protocol)


_MULTI_NODE_ENGINES = ("vllm", "sglang", "fake")


def _multi_node_rules(model: ModelConfig) -> None:
    placement = model.placement
    if placement.nodes == 1:
        return
    if model.engine not in _MULTI_NODE_ENGINES:
        raise ValueError(f"placement.nodes: engine {model.engine!r} runs on one node; "
                         "engines across nodes are vllm and sglang")
    if placement.gpus is not None and placement.gpus < placement.nodes:
        raise ValueError(f"placement.nodes ({placement.nodes}) needs at least one GPU per "
                         f"node, got gpus: {placement.gpus:g}")
