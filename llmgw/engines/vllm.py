"""vLLM's OpenAI server: health at /health, Prometheus metrics at /metrics.

Abort needs nothing special: vLLM's server aborts a request when its HTTP connection
closes, streaming or not, which is what the gateway does when its client leaves.
"""

from __future__ import annotations

from typing import ClassVar

from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.engines.stats import VLLM_STATS, StatsNames


class VLLMEngine(OpenAIHTTPEngine):
    """Serves every endpoint; /v1/embeddings only for pooling models (a generative model
    answers with its own error, passed through)."""

    engine_type: ClassVar[str] = "vllm"
    metrics_path: ClassVar[str | None] = "/metrics"
    stats_names: ClassVar[StatsNames] = VLLM_STATS
