"""The gateway's side of the embedded engine (llmgw.engines.embedded runs as its own
server): it publishes vLLM's metric names, so it reads like vLLM."""

from __future__ import annotations

from typing import ClassVar

from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.engines.stats import VLLM_STATS, StatsNames
from llmgw.protocol import Endpoint


class EmbeddedEngine(OpenAIHTTPEngine):
    """Serves chat, completions, embeddings (the model's mean-pooled hidden states) and
    vLLM's /tokenize and /detokenize; not the Responses API."""

    metrics_path: ClassVar[str | None] = "/metrics"
    stats_names: ClassVar[StatsNames] = VLLM_STATS
    engine_type: ClassVar[str] = "transformers"
    endpoints: ClassVar[frozenset[Endpoint]] = frozenset(
        {"chat", "completions", "embeddings", "tokenize", "detokenize"})


class FakeEngineClient(OpenAIHTTPEngine):
    """For llmgw.engines.fake, the deterministic test stand-in."""

    metrics_path: ClassVar[str | None] = "/metrics"
    stats_names: ClassVar[StatsNames] = StatsNames(
        running="llmgw_engine_requests_running", waiting="llmgw_engine_requests_waiting")
    engine_type: ClassVar[str] = "fake"
