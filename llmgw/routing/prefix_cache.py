"""Prefix affinity (approximate): prefer the replica that was sent the longest prefix of
this prompt, because its engine likely still holds those KV blocks."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from llmgw.routing.affinity import (
    PENDING_LIMIT,
    CachedShares,
    CapacityWatch,
    PredictionLedger,
    beyond_common_prefix,
)
from llmgw.routing.base import Need
from llmgw.routing.prefix_index import HistoryHashes, PrefixIndex, block_hashes
from llmgw.types import ReplicaView, RequestContext

# Block hashes held for requests between scoring and routing, all requests together:
# ~40 bytes each (a list slot and an int), so ~10 MB. PENDING_LIMIT entries of the
# longest prompts (256 blocks by default) would be 40 MB, pinned by requests that are
# scored and never routed (an engine's 4xx, a client that left).
PENDING_HASHES = 1 << 18


class PendingHashes:
    """Request id -> its prompt's block hashes, oldest first out, bounded in entries and
    in hashes held. Losing an entry costs only time: routing hashes the prompt again."""

    def __init__(self, max_entries: int = PENDING_LIMIT,
                 max_hashes: int = PENDING_HASHES) -> None:
        self.max_entries, self.max_hashes = max_entries, max_hashes
        self._entries: OrderedDict[str, list[int]] = OrderedDict()
        self._hashes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, request_id: str) -> list[int] | None:
        return self._entries.get(request_id)

    def put(self, request_id: str, hashes: list[int]) -> None:
        self._entries[request_id] = hashes
        self._hashes += len(hashes)
        while self._entries and (self._hashes > self.max_hashes
                                 or len(self._entries) > self.max_entries):
            self._hashes -= len(self._entries.popitem(last=False)[1])

    def pop(self, request_id: str) -> list[int] | None:
        hashes = self._entries.pop(request_id, None)
        if hashes is not None:
            self._hashes -= len(hashes)
        return hashes


class PrefixParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Characters per hashed block: 128 is ~32 tokens of English, two vLLM KV blocks.
    # Hashing and remembering cost per block, so the decision's CPU is about
    # proportional to prompt size / block_chars (bench/routing_stages.py); 256 halves it
    # but lost 1-2 points of hits on bench/fleet_sim's tenants matrix (its README,
    # "Routing cost"): short turns beyond a shared system prompt fill no 256-char block.
    block_chars: int = Field(default=128, ge=8, le=4096)
    # Longest prefix considered, in blocks (256 x 128 = 32k chars): bounds the work per
    # request. Agents' system prompts and tool schemas alone run to 10k+ characters; a
    # shorter horizon sees only them and cannot tell which replica holds the loop's
    # history (bench/fleet_sim agent workload: 78% -> 81% hits going from 8k to 32k).
    max_blocks: int = Field(default=256, ge=1)
    # Remembered blocks per replica when the engine does not report its KV cache size.
    # When it does (vLLM), the bound follows it: the index should forget about when the
    # engine evicts, or it promises cache hits the engine no longer has.
    capacity_per_replica: int = Field(default=100_000, ge=1)
    # Converts the engine's KV size in tokens to characters of prompt text: the starting
    # value, then learned from the engines' prompt token counts (usage.prompt_tokens).
    chars_per_token: float = Field(default=4.0, gt=0)
    learn_chars_per_token: bool = True
    ttl_s: float = Field(default=600.0, gt=0)


class PrefixCacheScorer:
    """Score = the share of the prompt's blocks the replica was sent before, counted
    beyond the prefix that every candidate holds (0..1)."""

    type_name: ClassVar[str] = "prefix-cache"
    Params: ClassVar[type[PrefixParams]] = PrefixParams
    needs: ClassVar[frozenset[Need]] = frozenset({"prompt"})

    def __init__(self, params: PrefixParams | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.params = p = params or PrefixParams()
        self.index = PrefixIndex(p.capacity_per_replica, p.ttl_s, clock)
        # Hashes computed in score() are reused by on_routed(); the chosen replica's score
        # is kept until the engine reports what it really had cached (take_prediction).
        # Both bounded: requests that fail or are never routed leave entries behind.
        # Keyed by the gateway's request id: unique, never the client's.
        self._pending = PendingHashes()
        self._predictions = PredictionLedger()
        self._capacity = CapacityWatch()
        self._history = HistoryHashes()
        self.chars_per_token = self._applied_chars_per_token = p.chars_per_token
        self._samples = 0

    def _hashes(self, ctx: RequestContext) -> list[int]:
        hashes = self._pending.get(ctx.request_id)
        if hashes is None:
            hashes = self._hash(ctx)
            self._pending.put(ctx.request_id, hashes)
        return hashes

    def _hash(self, ctx: RequestContext) -> list[int]:
        """A session (when the policy keys sessions) rehashes only what its history
        added since its last turn. A LoRA adapter salts the chain, as engines key their
        KV blocks by adapter (vLLM): a prefix cached under one adapter, or under the base
        model, is no hit for another."""
        p = self.params
        adapter = ctx.adapter
        salt = hash(adapter) if adapter else 0
        if ctx.session_id:
            key = f"{ctx.session_id}\0{adapter}" if adapter else ctx.session_id
            return self._history.hashes(key, ctx.prompt, p.block_chars, p.max_blocks, salt)
        return block_hashes(ctx.prompt, p.block_chars, p.max_blocks, salt=salt)

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        if len(ctx.prompt) < self.params.block_chars:
            # No whole block: nothing to match, predict or remember (and none of the work
            # that would find that out; a short chat turn is the commonest request).
            return {}
        for rid, tokens in self._capacity.changed(replicas):
            self._size_for(rid, tokens)
        hashes = self._hashes(ctx)
        if not hashes:
            return {}
        depths = self.index.matched(hashes, (r.id for r in replicas))
        self._predictions.offer(ctx.request_id,
                                CachedShares(depths, len(hashes), 1 / len(hashes)))
        return beyond_common_prefix(depths, len(hashes))

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        if len(ctx.prompt) < self.params.block_chars:
            return  # no whole block (``score``)
        hashes = self._pending.pop(ctx.request_id)
        if hashes is None:
            hashes = self._hash(ctx)
        self._predictions.routed(ctx.request_id, replica_id)
        self.index.insert(replica_id, hashes)

    def _size_for(self, replica_id: str, kv_tokens: int) -> None:
        """The engine's KV size in prompt characters, in blocks of this index."""
        self.index.set_capacity(
            replica_id, int(kv_tokens * self.chars_per_token / self.params.block_chars))

    def on_prompt_tokens(self, ctx: RequestContext, prompt_tokens: int) -> None:
        """Learn how many characters of rendered prompt make one engine token (a moving
        average), and resize the index when it drifts: the closed calibration loop that
        keeps the index forgetting when the engine evicts, whatever the language or
        tokenizer. Prompts shorter than a block teach nothing: the chat template's own
        tokens outweigh their text, and the index holds none of them anyway."""
        if not self.params.learn_chars_per_token or len(ctx.prompt) < self.params.block_chars:
            return
        self._samples += 1
        weight = max(1 / self._samples, 0.02)
        self.chars_per_token += weight * (len(ctx.prompt) / prompt_tokens - self.chars_per_token)
        drift = abs(self.chars_per_token / self._applied_chars_per_token - 1)
        if self._samples >= 16 and drift > 0.1:
            self._applied_chars_per_token = self.chars_per_token
            for rid, tokens in self._capacity.known().items():
                self._size_for(rid, tokens)

    def forget(self, replica_id: str) -> None:
        """A replica left: its blocks leave the index (a replica that comes back under
        the same id starts with an empty cache)."""
        self.index.drop(replica_id)
        self._capacity.forget(replica_id)

    def offered(self, request_id: str) -> Mapping[str, float] | None:
        return self._predictions.offered(request_id)

    def take_prediction(self, request_id: str) -> float | None:
        """The share of the prompt this scorer expected the chosen replica to have cached,
        once; None when it made no prediction for the request."""
        return self._predictions.take(request_id)
