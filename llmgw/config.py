"""The YAML config as typed, frozen data, and the loader that merges several files.

``load_config(paths)`` reads every file, merges them (later files override earlier
keys; ``models`` are merged by ``name``, so models from all files are served), and
validates the result. A bad config raises :class:`ConfigError` whose message names
the file, the key path and what was expected, e.g.
``configs/x.yaml: models[1].replicas: Input should be greater than or equal to 1, got 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# "fake" launches the deterministic stand-in of llmgw.engines.fake (tests, benchmarks).
EngineType = Literal["transformers", "vllm", "sglang", "openai", "fake"]
Origins = dict[tuple[str | int, ...], str]


def _one_is_a_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _http_only(urls: list[str]) -> list[str]:
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {url!r}")
    return [u.rstrip("/") for u in urls]


# Attached engines' base URLs: one string or a list, http(s), no trailing slash.
EngineURLs = Annotated[list[str], Field(min_length=1), BeforeValidator(_one_is_a_list),
                       AfterValidator(_http_only)]


class ConfigError(Exception):
    """A config that cannot be served. The message is meant for an operator's eyes."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Bodies above this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # On SIGTERM / Ctrl-C: stop accepting, let open requests finish for this long.
    drain_timeout_s: float = Field(default=30.0, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Key for the admin API (/admin/...), sent as `Authorization: Bearer KEY`; the
    # environment variable LLMGW_ADMIN_KEY overrides it. Unset: the admin API refuses all.
    admin_key: str | None = None
    # Where runtime changes (adapters registered through the admin API) are kept, so a
    # restart or config reload keeps them.
    state_dir: str = "~/.local/state/llmgw"


class HealthConfig(_Strict):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    # How often engines' own metrics (queue, KV usage, prefix cache) are scraped.
    stats_interval_s: float = Field(default=1.0, gt=0)


class TimeoutConfig(_Strict):
    """Explicit limits on one request. None means no limit: a long stream is never cut
    by an idle timeout unless the operator asks for one."""

    connect_s: float = Field(default=5.0, gt=0)
    request_s: float | None = Field(default=None, gt=0)


class LaunchConfig(_Strict):
    """How a launched engine process is started. Typed knobs become the engine's own flags
    (each engine type names them differently); ``engine_args`` on the model passes any
    other flag through unchanged."""

    # The Python that runs the engine, e.g. a venv holding vLLM; default: the gateway's.
    python: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    pipeline_parallel_size: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    dtype: str | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    enable_prefix_caching: bool | None = None
    enable_lora: bool | None = None
    max_loras: int | None = Field(default=None, ge=1)
    max_lora_rank: int | None = Field(default=None, ge=1)
    # Adapters loaded at engine start: name -> path.
    lora_modules: dict[str, str] = Field(default_factory=dict)
    # vLLM only: publish KV cache events (ZMQ) on a free port per replica, for the precise
    # prefix scorer (`kv-cache`, policy `precise-prefix-aware`).
    kv_events: bool = False


class AdapterConfig(_Strict):
    """One LoRA adapter of a base model. ``source``: a local directory in PEFT format, a
    hub id (for users with hub access; the engine fetches it), or ``demo`` for the
    built-in demo adapter of that name (``demo-lora-N``, built offline)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(min_length=1)


class HotnessConfig(_Strict):
    """Pre-loading hot adapters on more replicas before requests queue behind a load."""

    enabled: bool = True
    interval_s: float = Field(default=2.0, gt=0)
    # An adapter is hot above this many requests/s (moving average over `window_s`);
    # it should then be resident on 1 + rate // hot_rate replicas.
    hot_rate: float = Field(default=2.0, gt=0)
    window_s: float = Field(default=30.0, gt=0)


class LoraConfig(_Strict):
    """LoRA multiplexing over this model's replicas."""

    adapters: list[AdapterConfig] = Field(default_factory=list)
    # Adapters each replica holds at once (the engine's --max-loras); the gateway evicts
    # the coldest idle one to load another.
    max_adapters_per_replica: int = Field(default=4, ge=1, le=256)
    max_rank: int = Field(default=16, ge=1)
    # Directories that adapters registered at runtime (admin API) must lie under.
    roots: list[str] = Field(default_factory=list)
    # A failed load is not retried for this long (the request gets the error at once).
    failure_cooldown_s: float = Field(default=30.0, ge=0)
    load_timeout_s: float = Field(default=120.0, gt=0)
    hotness: HotnessConfig = HotnessConfig()

    @field_validator("adapters")
    @classmethod
    def _unique_names(cls, value: list[AdapterConfig]) -> list[AdapterConfig]:
        names = [a.name for a in value]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"adapter {duplicate!r} is declared twice")
        return value


PDRole = Literal["prefill", "decode"]
# SGLang's default --disaggregation-bootstrap-port.
SGLANG_BOOTSTRAP_PORT = 8998


class PDPoolConfig(_Strict):
    """One side of a disaggregated model: its replicas, launched (``replicas``) or attached
    (``url``), how its engines are started and how the gateway picks among them."""

    replicas: int | None = Field(default=None, ge=1, le=256)
    url: EngineURLs | None = None
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
        if (self.url is None) == (self.replicas is None):
            raise ValueError("give either 'replicas' (launch) or 'url' (attach)")
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
        return len(self.url) if self.url is not None else (self.replicas or 1)

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
    protocol: Literal["vllm", "sglang"] | None = None
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
    routing: str = "least-load"
    # Policies that rank every request beside ``routing`` without deciding (metrics only).
    shadow: list[str] = Field(default_factory=list)
    launch: LaunchConfig = LaunchConfig()
    # Extra flags for a launched engine: {"max_batch_size": 8} -> --max-batch-size 8.
    engine_args: dict[str, Any] = Field(default_factory=dict)
    timeouts: TimeoutConfig = TimeoutConfig()
    startup_timeout_s: float = Field(default=600.0, gt=0)
    # Tries on other replicas when one cannot be reached before any byte was sent.
    max_attempts: int = Field(default=2, ge=1, le=8)
    # LoRA adapters multiplexed over this model's replicas (engines vllm, sglang,
    # transformers); launched engines get LoRA enabled with these limits.
    lora: LoraConfig | None = None
    # Prefill-decode disaggregation: separate prefill and decode pools instead of
    # `replicas` / `url` (see configs/disagg.yaml).
    disaggregation: DisaggConfig | None = None

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
    def _kv_events_match_replicas(self) -> ModelConfig:
        if self.kv_events_url is not None:
            if self.url is None:
                raise ValueError("'kv_events_url' is for attached engines ('url'); launched "
                                 "vLLM replicas publish with launch.kv_events: true")
            if len(self.kv_events_url) != len(self.url):
                raise ValueError(f"'kv_events_url' needs one address per 'url' "
                                 f"({len(self.url)}), got {len(self.kv_events_url)}")
        if self.lora is not None and self.engine not in ("vllm", "sglang", "transformers"):
            raise ValueError(f"lora: engine {self.engine!r} has no adapter API; use vllm, "
                             "sglang or transformers")
        if self.launch.kv_events and self.engine != "vllm":
            raise ValueError(f"launch.kv_events is supported by engine 'vllm' only, "
                             f"not {self.engine!r}")
        return self

    @property
    def publishes_kv_events(self) -> bool:
        return self.launch.kv_events or self.kv_events_url is not None

    @model_validator(mode="after")
    def _launch_or_attach(self) -> ModelConfig:
        if self.disaggregation is not None:
            return self._disaggregation_fits()
        if self.url is not None:
            if self.replicas is not None:
                raise ValueError("give either 'url' (attach) or 'replicas' (launch), not both")
            if self.launch != LaunchConfig() or self.engine_args:
                raise ValueError("'launch' and 'engine_args' apply to launched engines only, "
                                 "not to 'url' (attach)")
        elif self.engine == "openai":
            raise ValueError("engine 'openai' is attach-only: give 'url'")
        elif self.model is None:
            raise ValueError("a launched engine needs 'model' (a path, hub id or 'demo')")
        return self

    def _disaggregation_fits(self) -> ModelConfig:
        pd = self.disaggregation
        assert pd is not None
        if self.url is not None or self.replicas is not None or self.kv_events_url:
            raise ValueError("a disaggregated model gives its replicas under "
                             "disaggregation.prefill and .decode, not 'replicas' or 'url'")
        if self.shadow or self.lora is not None:
            raise ValueError("'shadow' policies and 'lora' are not supported on a "
                             "disaggregated model")
        protocol = self.pd_protocol
        if protocol is None:
            raise ValueError(f"disaggregation: engine {self.engine!r} has no prefill-decode "
                             f"protocol; use vllm or sglang (or openai with 'protocol')")
        for role, pool in pd.pools:
            if pool.kv_transfer is not None and protocol != "vllm":
                raise ValueError(f"disaggregation.{role}.kv_transfer is vLLM's "
                                 f"--kv-transfer-config; protocol is {protocol!r}")
        if pd.prefill.bootstrap_port is not None and protocol != "sglang":
            raise ValueError("disaggregation.prefill.bootstrap_port is SGLang's; protocol "
                             f"is {protocol!r}")
        if pd.prefill.url is not None:
            if self.launch != LaunchConfig() or self.engine_args:
                raise ValueError("'launch' and 'engine_args' apply to launched engines only, "
                                 "not to attached prefill / decode pools")
        elif self.engine == "openai":
            raise ValueError("engine 'openai' is attach-only: give disaggregation.prefill.url "
                             "and .decode.url")
        elif self.model is None:
            raise ValueError("a launched engine needs 'model' (a path, hub id or 'demo')")
        return self

    @property
    def pd_protocol(self) -> Literal["vllm", "sglang"] | None:
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
            return self.disaggregation.prefill.url is None
        return self.url is None

    @property
    def replica_count(self) -> int:
        if self.disaggregation is not None:
            return self.disaggregation.prefill.count + self.disaggregation.decode.count
        return len(self.url) if self.url is not None else (self.replicas or 1)

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


class PluginSpec(_Strict):
    """A filter or scorer by registry name; ``params`` are checked by the plugin itself."""

    type: str
    weight: float = Field(default=1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class LoadGuardConfig(_Strict):
    """Affinity yields to load when the busiest replica holds more than ``abs_threshold``
    requests above the idlest and more than ``rel_threshold`` times its load."""

    abs_threshold: int = Field(default=8, ge=0)
    rel_threshold: float = Field(default=1.5, ge=1.0)


class PolicyConfig(_Strict):
    filters: list[PluginSpec] = Field(default_factory=list)
    scorers: list[PluginSpec] = Field(min_length=1)
    load_guard: LoadGuardConfig | None = LoadGuardConfig()


class GatewayConfig(_Strict):
    server: ServerConfig = ServerConfig()
    health: HealthConfig = HealthConfig()
    # Named routing policies; models refer to them (or to a built-in) by ``routing:``.
    policies: dict[str, PolicyConfig] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(min_length=1)

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
        return self


# --- loading and merging -------------------------------------------------------------


def load_config(paths: Sequence[str | Path]) -> GatewayConfig:
    if not paths:
        raise ConfigError("no config file given")
    merged: dict[str, Any] = {}
    origins: Origins = {}
    for path in paths:
        _merge_file(merged, origins, _read_yaml(Path(path)), str(path))
    try:
        return GatewayConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _merge_file(merged: dict[str, Any], origins: Origins, data: dict[str, Any], src: str) -> None:
    for key, value in data.items():
        if key == "models" and isinstance(value, list):
            origins[("models",)] = src
            _merge_models(merged.setdefault("models", []), origins, value, src)
        else:
            _merge_value(merged, origins, (key,), key, value, src)


def _merge_models(models: list[Any], origins: Origins, new: list[Any], src: str) -> None:
    """Models are keyed by name: a later file's model with a known name overrides its
    keys, any other model is appended."""
    by_name = {m.get("name"): i for i, m in enumerate(models) if isinstance(m, dict)}
    in_this_file: set[str] = set()
    for position, model in enumerate(new):
        name = model.get("name") if isinstance(model, dict) else None
        if name is not None and name in in_this_file:
            raise ConfigError(f"{src}: models[{position}].name: model name {name!r} is "
                              "declared twice in this file")
        if name is not None:
            in_this_file.add(name)
        if name is not None and name in by_name:
            index = by_name[name]
            for key, value in model.items():
                _merge_value(models[index], origins, ("models", index, key), key, value, src)
        else:
            by_name[name] = len(models)
            origins[("models", len(models))] = src
            models.append(model)


def _merge_value(
    target: dict[str, Any], origins: Origins, path: tuple[str | int, ...], key: str,
    value: Any, src: str,
) -> None:
    origins[path] = src
    if isinstance(value, dict) and isinstance(target.get(key), dict):
        for sub_key, sub_value in value.items():
            _merge_value(target[key], origins, (*path, sub_key), sub_key, sub_value, src)
    else:
        target[key] = value


def _describe(exc: ValidationError, origins: Origins) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        got = f", got {error['input']!r}" if error["type"] != "missing" else ""
        msg = error["msg"].removeprefix("Value error, ")
        lines.append(f"{_origin(loc, origins)}: {_dotted(loc) or '<top>'}: {msg}{got}")
    return "\n".join(lines)


def _origin(loc: tuple[str | int, ...], origins: Origins) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in origins:
            return origins[loc[:end]]
    return ", ".join(_unique(origins.values())) or "<config>"


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
