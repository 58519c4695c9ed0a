"""The tool class bench/tools.py serves: a vectorized tool with a GPU-like cost model."""

from __future__ import annotations

import asyncio

import llmgw

# One call of the batched method costs a fixed part (a kernel launch, a forward pass's
# setup) plus a small part per item: what makes batching pay on an accelerator.
FIXED_S = 0.005
PER_ITEM_S = 0.0001


class Vectorized:
    """Scores texts a batch at a time; the cost is slept, not computed, so that the
    measurement shows the serving (queueing, batching, HTTP), not this box's CPU load."""

    @llmgw.tool  # named <deployment>_score: one class, two deployments
    @llmgw.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def score(self, text: list[str]) -> list[int]:
        """A made-up score of a text."""
        await asyncio.sleep(FIXED_S + PER_ITEM_S * len(text))
        return [len(t) for t in text]
