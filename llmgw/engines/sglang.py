"""SGLang's OpenAI-compatible server (``python -m sglang.launch_server``) as an engine.

Checked against sgl-project/sglang v0.5 (``srt/entrypoints/http_server.py``,
``srt/managers/tokenizer_manager.py``, ``srt/metrics/collector.py``) and the SGLang
router's worker health checks (lightseekorg/smg).

Health is ``GET /health``, the path SGLang's own router probes. On SGLang 0.5 it runs
the same one-token generation as ``/health_generate`` (unless the operator set
``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=0``, on releases that read it) and answers 503
while the server warms up or shuts down; 0.4 answered a bare 200. ``/health_generate``
would force the generation even where an operator turned it off (prefill servers of a
disaggregated pair, for instance). The generating handler polls once a second, so a
healthy answer takes about 1 s: ``health.timeout_s`` must stay above that (the router
uses 5 s).

Metrics are served at ``GET /metrics`` only when SGLang runs with ``--enable-metrics``;
without it the route is a 404 and ``stats()`` reports None, so routing falls back to
the gateway's own in-flight counts.

Abort: SGLang aborts a request whose HTTP connection closes, but not always:

- non-streaming: the tokenizer manager polls ``request.is_disconnected()`` after 4 s
  without output and at each output, which the scheduler forces every 50 tokens, then
  aborts. Closing is enough, with that much delay.
- streaming: the response's background task aborts the request id 2 s after the stream
  ends. On SGLang 0.5.18 and 0.5.19 the cancelled stream first drops the tokenizer's
  state, so that abort finds nothing and the request decodes to ``max_tokens``
  (sgl-project/sglang#36333, fixed by #35255 after 0.5.19). An explicit
  ``POST /abort_request`` sent *before* the connection closes works on every version;
  see :meth:`SGLangEngine.abort`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import aiohttp
import orjson

from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.engines.stats import StatsNames
from llmgw.protocol import Endpoint
from llmgw.types import EngineStats

# Scheduler gauges carry (engine_type, model_name, pp_rank, tp_rank[, dp_rank]) labels and
# only attention-TP rank 0 of each data-parallel group reports them, so the sum over
# label sets is the sum over DP groups. Token counters carry model_name only.
SGLANG_STATS = StatsNames(
    running="sglang:num_running_reqs",
    waiting="sglang:num_queue_reqs",
    # used / max_total_num_tokens of the KV pool, already 0..1; evictable cached
    # prefixes count as free, as in vLLM's kv_cache_usage_perc.
    kv_usage="sglang:token_usage",
    # Counted per finished request, in tokens: cached prompt tokens (summed over
    # cache_source on 0.5.10+) out of all prompt tokens. sglang:cache_hit_rate is a
    # gauge for the last prefill batch only, not a total, so it is not used.
    prefix_cache_hits="sglang:cached_tokens_total",
    prefix_cache_queries="sglang:prompt_tokens_total",
)
_JSON = {"content-type": "application/json"}


class SGLangEngine(OpenAIHTTPEngine):
    """An SGLang server at ``url``. Safe to share across tasks of one event loop."""

    health_path: ClassVar[str] = "/health"
    metrics_path: ClassVar[str | None] = "/metrics"
    stats_names: ClassVar[StatsNames] = SGLANG_STATS
    engine_type: ClassVar[str] = "sglang"
    # Not relayed: SGLang's Responses API serves only some models, and its tokenizer
    # routes are not vLLM's.
    endpoints: ClassVar[frozenset[Endpoint]] = frozenset({"chat", "completions",
                                                          "embeddings"})

    async def stats(self) -> EngineStats | None:
        return zero_missing_hits(await super().stats())

    @staticmethod
    def body_fields(request_id: str) -> dict[str, str]:
        """Fields to merge into the request body so that :meth:`abort` can name the
        request: SGLang's OpenAI endpoints take the engine's request id from ``rid``.
        The id must be unique among the requests the engine is running."""
        return {"rid": request_id}

    async def abort(self, request_id: str) -> bool:
        """Ask SGLang to stop the request sent with ``rid=request_id``. Call it before
        closing the request's connection: once the stream is cancelled, SGLang 0.5.18-19
        forget the rid and ignore the abort. Never raises; True when SGLang answered 200
        (it also answers 200 for a rid it does not know, e.g. one that just finished)."""
        body = orjson.dumps({"rid": request_id})
        try:
            async with self._session.post(
                self.url + "/abort_request",
                data=body,
                headers=_JSON,
                timeout=self._health_timeout,
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def zero_missing_hits(stats: EngineStats | None) -> EngineStats | None:
    """SGLang creates ``sglang:cached_tokens_total`` at the first prefix-cache hit, so a
    scrape that counts prompt tokens but no cached ones means no hits yet, not unknown."""
    if stats is None or stats.prefix_cache_hits is not None:
        return stats
    if stats.prefix_cache_queries is None:
        return stats
    return dataclasses.replace(stats, prefix_cache_hits=0.0)
