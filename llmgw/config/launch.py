"""How launched engines are started (``launch:``) and how long one request may take
(``timeouts:``)."""

from __future__ import annotations

from pydantic import Field

from llmgw.config.base import _Strict


class TimeoutConfig(_Strict):
    """Explicit limits on one request. None means no limit: a long stream is never cut
    by an idle timeout unless the operator asks for one."""

    connect_s: float = Field(default=5.0, gt=0)
    request_s: float | None = Field(default=None, gt=0)
    # Streaming requests: how long the engine may take to answer with its headers. Engines
    # (vLLM, SGLang, ours) send a stream's headers before they schedule it, so this stays
    # short even under load; a hung engine is then noticed per request, counted towards
    # its ejection, and the request retried elsewhere. A non-streaming answer's headers
    # come only when generation is done: ``request_s`` bounds those.
    first_byte_s: float | None = Field(default=None, gt=0)
    # Streaming requests: the longest silence between two of the engine's events once its
    # headers came (the first token's prefill included, so allow for the longest prompt,
    # and for preemption under load). A stream that goes quiet longer ends with an SSE
    # error event and counts as a timeout against the replica (outlier ejection).
    stream_idle_s: float | None = Field(default=None, gt=0)


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
