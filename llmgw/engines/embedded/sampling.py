"""Per-request sampling parameters and next-token selection over one logits row."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

# vLLM treats temperatures this small as greedy: dividing by them overflows.
_GREEDY_EPS = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What one request asks of the decoder; validated by the protocol layer.

    `max_tokens` is already resolved (>= 1) and never exceeds the context left after
    the prompt. `top_k <= 0` and `top_p == 1` disable those filters. `stop` strings
    are searched in the decoded text; `stop_token_ids` end generation like EOS but
    are not affected by `ignore_eos`. `min_tokens` suppresses every stop token and
    stop string until that many tokens were generated.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS


def make_rng(params: SamplingParams) -> torch.Generator | None:
    """A private generator per request, so a seeded request reproduces no matter
    what runs beside it; None for greedy requests, which draw nothing."""
    if params.greedy:
        return None
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(seed)


def select_token(
    logits: torch.Tensor,
    params: SamplingParams,
    rng: torch.Generator | None,
    banned: torch.Tensor | None = None,
) -> int:
    """Pick the next token id from a 1-D float logits row of vocabulary size;
    `banned` holds token ids (int64, within the row) that must not be picked."""
    logits = logits.float()
    if banned is not None and banned.numel():
        logits = logits.clone()
        logits[banned] = float("-inf")
    if params.greedy or rng is None:
        return int(torch.argmax(logits).item())
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        logits = _top_p_filter(logits, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng).item())


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # Drop a token when the mass before it already reaches top_p; the best token stays.
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
