"""Config -> ``Disaggregation``: the protocol's flow and the two pools' policies."""

from __future__ import annotations

import random

from llmgw.config import ModelConfig
from llmgw.disagg.legs import Legs
from llmgw.disagg.orchestrator import Disaggregation, Flow
from llmgw.disagg.sglang_flow import SGLangFlow
from llmgw.disagg.vllm_flow import VLLMFlow
from llmgw.metrics import PDMetrics
from llmgw.resilience.budget import RetryBudget
from llmgw.routing.base import RoutingPolicy


def make_disaggregation(model: ModelConfig, prefill_policy: RoutingPolicy,
                        decode_policy: RoutingPolicy, metrics: PDMetrics,
                        rng: random.Random, budget: RetryBudget) -> Disaggregation:
    """A disaggregated model with empty pools; replicas join by role as they start."""
    pd = model.disaggregation
    assert pd is not None
    flow: Flow
    if model.pd_protocol == "sglang":
        flow = SGLangFlow(pd.prefill_timeout_s, rng)
    else:
        flow = VLLMFlow(pd.prefill_timeout_s)
    legs = Legs(prefill_policy, decode_policy, metrics, model.max_attempts,
                decode_timeout_s=pd.decode_timeout_s, budget=budget)
    return Disaggregation(model.name, legs, flow, pd.conditional)
