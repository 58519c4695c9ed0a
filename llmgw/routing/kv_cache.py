"""Prefix affinity (precise): score replicas by the KV blocks their engines report holding
(vLLM KV cache events, see ``kv_block_index``), matched against the tokenized prompt.

Where the approximate scorer guesses from where prompts were sent, this one knows what
the engine still holds after its own evictions, so its prediction is the engine's
``cached_tokens`` (tested against vLLM). It needs the prompt's token ids (the gateway
tokenizes with the model's tokenizer) and replicas that publish KV events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from llmgw.routing.affinity import (
    CachedShares,
    CapacityWatch,
    PredictionLedger,
    beyond_common_prefix,
)
from llmgw.routing.base import Need
from llmgw.routing.kv_block_index import KVBlockIndex, prompt_block_hashes
from llmgw.types import ReplicaView, RequestContext


class KVCacheParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Longest prefix considered, in engine blocks: bounds the hashing per request.
    max_blocks: int = Field(default=1024, ge=1)


class KVCacheScorer:
    """Score = the share of the prompt's full blocks the engine holds as an unbroken
    prefix, beyond what every candidate holds (0..1)."""

    type_name: ClassVar[str] = "kv-cache"
    Params: ClassVar[type[KVCacheParams]] = KVCacheParams
    needs: ClassVar[frozenset[Need]] = frozenset({"tokens"})

    def __init__(self, params: KVCacheParams | None, index: KVBlockIndex) -> None:
        self.params = params or KVCacheParams()
        self.index = index
        self._predictions = PredictionLedger()
        self._capacity = CapacityWatch()

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        tokens, block_size = ctx.prompt_tokens, self.index.block_size
        if not tokens:
            return {}
        if block_size is None:  # no engine has reported a block yet: nothing is cached
            self._predictions.offer(ctx.request_id, dict.fromkeys((r.id for r in replicas), 0.0))
            return {}
        for rid, capacity in self._capacity.changed(replicas):
            self.index.set_capacity(rid, capacity // block_size)
        hashes = prompt_block_hashes(tokens, block_size, ctx.adapter, self.params.max_blocks)
        if not hashes:
            return {}
        depths = self.index.matched(hashes, (r.id for r in replicas))
        # vLLM computes at least the prompt's last token, so a fully cached prompt reports
        # one block less than it holds.
        reusable = (len(tokens) - 1) // block_size
        self._predictions.offer(ctx.request_id,
                                CachedShares(depths, reusable, block_size / len(tokens)))
        return beyond_common_prefix(depths, len(hashes))

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        # The index learns from the engine's events, not from routing.
        self._predictions.routed(ctx.request_id, replica_id)

    def forget(self, replica_id: str) -> None:
        """The shared block index is cleared by the replica's event feed; the capacity
        seen for it goes here, so a newcomer under that id is sized afresh."""
        self._capacity.forget(replica_id)

    def offered(self, request_id: str) -> Mapping[str, float] | None:
        return self._predictions.offered(request_id)

    def take_prediction(self, request_id: str) -> float | None:
        return self._predictions.take(request_id)
