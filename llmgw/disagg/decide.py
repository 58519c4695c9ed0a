"""Whether one request is split into a prefill and a decode leg, or served whole
(aggregated) on the decode replica. Pure: the inputs are snapshots and numbers.

Splitting pays when the prompt is long enough that its prefill would stall the decode
replica's other streams. It does not pay for short prompts, for prompts the decode
replica already holds in its prefix cache (the prefill there is nearly free), or while
every prefill replica is saturated (queueing there costs more than it saves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from llmgw.config import ConditionalPDConfig
from llmgw.types import ReplicaView, RequestContext

Path = Literal["disaggregated", "aggregated", "fallback"]
# Why a path was taken; a fixed set, so metric labels stay bounded.
Reason = Literal[
    "long_prompt", "always", "required",
    "short_prompt", "cached_prefix", "prefill_saturated", "no_prefill_replica",
    "unsupported_request",
    "prefill_timeout", "prefill_unreachable", "prefill_error",
]


def prompt_tokens(ctx: RequestContext, chars_per_token: float) -> float:
    """The prompt's length in engine tokens: exact when the gateway tokenized it, else
    estimated from the rendered prompt's characters."""
    if ctx.prompt_tokens is not None:
        return float(len(ctx.prompt_tokens))
    return len(ctx.prompt) / chars_per_token


def choose_path(
    cfg: ConditionalPDConfig, *, tokens: float, cached_share: float | None,
    prefill: Sequence[ReplicaView], splittable: bool, serves_aggregated: bool,
) -> tuple[Path, Reason]:
    """``prefill``: the healthy prefill replicas. ``cached_share``: the share of the
    prompt (0..1) the decode policy expects its pick to hold, None when it cannot tell.
    ``serves_aggregated``: whether a decode replica can serve a request alone (vLLM
    can; an SGLang decode server cannot, so there every request is split)."""
    if not prefill:
        return "aggregated", "no_prefill_replica"
    if not serves_aggregated:
        return "disaggregated", "required"
    if not splittable:
        return "aggregated", "unsupported_request"
    if not cfg.enabled:
        return "disaggregated", "always"
    if tokens < cfg.min_prompt_tokens:
        return "aggregated", "short_prompt"
    if cached_share is not None and cached_share >= cfg.max_cached_share:
        return "aggregated", "cached_prefix"
    if cfg.max_prefill_load is not None and \
            min(r.load for r in prefill) >= cfg.max_prefill_load:
        return "aggregated", "prefill_saturated"
    return "disaggregated", "long_prompt"
