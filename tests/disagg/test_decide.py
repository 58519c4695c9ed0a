"""The per-request path decision, as a table."""

from __future__ import annotations

import pytest

from llmgw.config import ConditionalPDConfig
from llmgw.disagg.decide import choose_path, prompt_tokens
from llmgw.types import ReplicaView, RequestContext

CFG = ConditionalPDConfig(min_prompt_tokens=100, max_cached_share=0.5, max_prefill_load=2)
IDLE = [ReplicaView(id="p0", model="m", role="prefill"),
        ReplicaView(id="p1", model="m", role="prefill", in_flight=1)]
BUSY = [ReplicaView(id="p0", model="m", role="prefill", in_flight=2),
        ReplicaView(id="p1", model="m", role="prefill", in_flight=1, queue_depth=3)]


@pytest.mark.parametrize(("cfg", "tokens", "cached", "prefill", "splittable", "alone", "want"), [
    (CFG, 500, 0.0, IDLE, True, True, ("disaggregated", "long_prompt")),
    (CFG, 500, None, IDLE, True, True, ("disaggregated", "long_prompt")),
    (CFG, 99, 0.0, IDLE, True, True, ("aggregated", "short_prompt")),
    (CFG, 500, 0.5, IDLE, True, True, ("aggregated", "cached_prefix")),
    (CFG, 500, 0.49, IDLE, True, True, ("disaggregated", "long_prompt")),
    (CFG, 500, 0.0, BUSY, True, True, ("aggregated", "prefill_saturated")),
    (CFG.model_copy(update={"max_prefill_load": None}), 500, 0.0, BUSY, True, True,
     ("disaggregated", "long_prompt")),
    (CFG, 500, 0.0, [], True, True, ("aggregated", "no_prefill_replica")),
    (CFG, 500, 0.0, IDLE, False, True, ("aggregated", "unsupported_request")),
    (CFG.model_copy(update={"enabled": False}), 5, 0.9, BUSY, True, True,
     ("disaggregated", "always")),
    (CFG, 5, 0.9, BUSY, True, False, ("disaggregated", "required")),
    (CFG, 5, 0.9, [], True, False, ("aggregated", "no_prefill_replica")),
], ids=["long", "no-prediction", "short", "cached", "barely-uncached", "saturated",
        "no-saturation-limit", "no-prefill", "n>1", "disabled", "sglang-always",
        "sglang-no-prefill"])
def test_choose_path(cfg: ConditionalPDConfig, tokens: float, cached: float | None,
                     prefill: list[ReplicaView], splittable: bool, alone: bool,
                     want: tuple[str, str]) -> None:
    assert choose_path(cfg, tokens=tokens, cached_share=cached, prefill=prefill,
                       splittable=splittable, serves_aggregated=alone) == want


def test_prompt_length_is_exact_when_tokenized_else_estimated() -> None:
    ctx = RequestContext(request_id="r", model="m", endpoint="chat", stream=False,
                         prompt="x" * 400)
    assert prompt_tokens(ctx, 4.0) == 100.0
    tokenized = RequestContext(request_id="r", model="m", endpoint="chat", stream=False,
                               prompt="x" * 400, prompt_tokens=[1, 2, 3])
    assert prompt_tokens(tokenized, 4.0) == 3.0
