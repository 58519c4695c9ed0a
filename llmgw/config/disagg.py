"""A model's ``disaggregation:`` section: separate prefill and decode pools."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmgw.config.autoscaling import AutoscalingConfig
from llmgw.config.base import EngineURLs, _Strict

PDRole = Literal["prefill", "decode"]
PDProtocol = Literal["vllm", "sglang"]
# SGLang's default --disaggregation-bootstrap-port.
SGLANG_BOOTSTRAP_PORT = 8998


class PDPoolConfig(_Strict):
    """One side of a disaggregated model: its replicas, launched (``replicas``) or attached
    (``url``), how its engines are started and how the gateway picks among them."""

    replicas: int | None = Field(default=None, ge=1, le=256)
    url: EngineURLs | None = None
    # Launched pools: scale this pool on its own load instead of a fixed `replicas`.
    autoscaling: AutoscalingConfig | None = None
    # The routing policy over this pool alone (llm-d's prefill / decode profiles).
    routing: str = "least-load"
    # Launched only: flags over the model's ``engine_args`` and variables over its
    # ``launch.env``, for this pool's engines.
    engine_args: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    # vLLM, launched: this pool's --kv-transfer-config (kv_connector, kv_role, ...).
    kv_transfer: dict[str, Any] | None = None
    # SGLang prefill pool: the bootstrap port the decode side fetches KV from; launched
    # replica i listens on bootstrap_port + i; attached servers all on this one, or one
    # port per `url`.
    bootstrap_port: int | list[int] | None = None

    @model_validator(mode="after")
    def _launch_or_attach(self) -> PDPoolConfig:
        if sum(x is not None for x in (self.url, self.replicas, self.autoscaling)) != 1:
            raise ValueError("give one of 'replicas' or 'autoscaling' (launch) or 'url' "
                             "(attach)")
        ports = self.bootstrap_port if isinstance(self.bootstrap_port, list) else \
            [self.bootstrap_port or SGLANG_BOOTSTRAP_PORT]
        if not all(1 <= port <= 65535 for port in ports):
            raise ValueError(f"bootstrap_port must be a port number, got {self.bootstrap_port}")
        if isinstance(self.bootstrap_port, list) and len(ports) != len(self.url or []):
            raise ValueError("a list of bootstrap ports needs one per 'url'")
        if self.url is not None and (self.engine_args or self.env or self.kv_transfer):
            raise ValueError("'engine_args', 'env' and 'kv_transfer' apply to launched "
                             "engines only, not to 'url' (attach)")
        return self

    @property
    def count(self) -> int:
        """Replicas at start: attached URLs, the fixed count, or autoscaling's initial."""
        if self.url is not None:
            return len(self.url)
        if self.autoscaling is not None:
            return self.autoscaling.start_replicas
        return self.replicas or 1

    def bootstrap_port_of(self, index: int) -> int:
        """Where prefill replica ``index`` serves SGLang's KV bootstrap: launched replicas
        count up from the pool's port, attached ones use theirs or the shared one."""
        if isinstance(self.bootstrap_port, list):
            return self.bootstrap_port[index]
        base = self.bootstrap_port or SGLANG_BOOTSTRAP_PORT
        return base + index if self.url is None else base


class ConditionalPDConfig(_Strict):
    """When a request is worth splitting. Aggregated serving on a decode replica wins
    for short prompts, for prompts the chosen decode replica already holds in its prefix
    cache, and while the prefill pool is saturated (queueing there would cost more time
    than it saves)."""

    # False: every request is disaggregated while a prefill replica is healthy.
    enabled: bool = True
    # Prompts shorter than this (engine tokens; estimated from characters when the
    # gateway does not tokenize) are served aggregated.
    min_prompt_tokens: int = Field(default=256, ge=0)
    chars_per_token: float = Field(default=4.0, gt=0)
    # Served aggregated when the decode policy predicts this share (0..1) of the prompt
    # is cached on the chosen decode replica (prefix-aware policies predict it).
    max_cached_share: float = Field(default=0.5, gt=0, le=1)
    # Served aggregated when every healthy prefill replica holds this many requests
    # (gateway in-flight + engine queue); null: never.
    max_prefill_load: int | None = Field(default=8, ge=1)


class DisaggConfig(_Strict):
    """Prefill-decode disaggregation: two pools, two routing pipelines, one served name."""

    # How the two legs talk: "vllm" (prefill leg first, its kv_transfer_params to the
    # decode leg) or "sglang" (bootstrap host/port/room sent to both legs at once).
    # Defaults to the model's engine; required for engine "openai".
    protocol: PDProtocol | None = None
    prefill: PDPoolConfig
    decode: PDPoolConfig
    conditional: ConditionalPDConfig = ConditionalPDConfig()
    # Limit on the prefill leg (vLLM: until the prefill answered; SGLang: until the prefill
    # answered or the decode leg's first token came). On expiry the request is served
    # aggregated (vLLM), or both legs are aborted and the client gets 504 (SGLang).
    prefill_timeout_s: float = Field(default=30.0, gt=0)
    # Limit on a streamed decode leg until its engine answers (response headers); past it
    # the next decode replica is tried, or the client gets 504. The stream itself, and a
    # request that is not streamed, are bounded by the model's timeouts.request_s only.
    decode_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _same_mode(self) -> DisaggConfig:
        if (self.prefill.url is None) != (self.decode.url is None):
            raise ValueError("prefill and decode are both launched ('replicas') or both "
                             "attached ('url')")
        if self.decode.bootstrap_port is not None:
            raise ValueError("decode.bootstrap_port: only the prefill side has one")
        return self

    @property
    def pools(self) -> list[tuple[PDRole, PDPoolConfig]]:
        """Both pools, prefill first: the order of their replicas everywhere."""
        return [("prefill", self.prefill), ("decode", self.decode)]

    @property
    def launched(self) -> bool:
        return self.prefill.url is None

    def check_protocol(self, protocol: PDProtocol) -> None:
        """Engine-specific pool keys must match the protocol the model resolved (from
        ``protocol:`` or its engine), which only the model knows."""
        for role, pool in self.pools:
            if pool.kv_transfer is not None and protocol != "vllm":
                raise ValueError(f"disaggregation.{role}.kv_transfer is vLLM's "
                                 f"--kv-transfer-config; protocol is {protocol!r}")
        if self.prefill.bootstrap_port is not None and protocol != "sglang":
            raise ValueError("disaggregation.prefill.bootstrap_port is SGLang's; protocol "
                             f"is {protocol!r}")
