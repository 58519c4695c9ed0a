"""Config -> ``Disaggregation``: the pools split by role, the protocol's flow, and for
SGLang each prefill replica's bootstrap address."""

from __future__ import annotations

import random
from collections.abc import Sequence
from urllib.parse import urlsplit

from llmgw.config import ModelConfig
from llmgw.disagg.legs import Legs
from llmgw.disagg.orchestrator import Disaggregation, Flow
from llmgw.disagg.sglang_flow import SGLangFlow
from llmgw.disagg.vllm_flow import VLLMFlow
from llmgw.metrics import PDMetrics
from llmgw.pool import Replica
from llmgw.routing.base import RoutingPolicy


def make_disaggregation(model: ModelConfig, replicas: Sequence[Replica],
                        prefill_policy: RoutingPolicy, decode_policy: RoutingPolicy,
                        metrics: PDMetrics, rng: random.Random) -> Disaggregation:
    """``replicas`` carry their roles (``model.replica_roles``)."""
    pd = model.disaggregation
    assert pd is not None
    prefill = [r for r in replicas if r.role == "prefill"]
    decode = [r for r in replicas if r.role == "decode"]
    flow: Flow
    if model.pd_protocol == "sglang":
        # The decode server fetches KV from the prefill server's host, at its bootstrap port.
        bootstrap = {r.id: (urlsplit(r.engine.url).hostname or "127.0.0.1",
                            pd.prefill.bootstrap_port_of(i)) for i, r in enumerate(prefill)}
        flow = SGLangFlow(pd.prefill_timeout_s, bootstrap, rng)
    else:
        flow = VLLMFlow(pd.prefill_timeout_s)
    legs = Legs(prefill_policy, decode_policy, metrics, model.max_attempts,
                decode_timeout_s=pd.decode_timeout_s)
    return Disaggregation(model.name, prefill, decode, legs, flow, pd.conditional)
