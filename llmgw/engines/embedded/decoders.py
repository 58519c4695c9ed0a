"""Decode one token for every running sequence: batched or one forward each.

Both decoders keep rows in the order of `add` calls (minus removed rows), and the
scheduler keeps its running list in that same order. They are owned by the
scheduler thread.

`BatchedDecoder` holds one left-padded KV tensor per layer for the whole batch:

    row 0:  . . k k k k      (pad 2)      attention_mask 0 0 1 1 1 1 | 1
    row 1:  k k k k k k      (pad 0)                     1 1 1 1 1 1 | 1

A joining sequence is padded to the batch width (or the batch to its width), a
leaving row is dropped and common left padding trimmed. Re-packing happens only
when membership changes; a plain step just appends one column.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import DynamicCache

from llmgw.engines.embedded.model_runner import ModelRunner, layer_tensors, set_layer_tensors


class Decoder(Protocol):
    """Holds the KV state of the running sequences, one row each."""

    def add(self, cache: DynamicCache) -> None:
        """Append a freshly prefilled sequence as the last row."""

    def keep(self, rows: list[int]) -> None:
        """Keep only these row indices (ascending); the others are forgotten."""

    def step(self, tokens: list[int], positions: list[int], adapters: list[int]) -> torch.Tensor:
        """Feed one token per row at the given positions, each row through its own
        LoRA slot (0: the base); returns logits [rows, vocab]."""


class SequentialDecoder:
    """One forward per sequence: works for every cache layout."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner
        self._caches: list[DynamicCache] = []

    def add(self, cache: DynamicCache) -> None:
        self._caches.append(cache)

    def keep(self, rows: list[int]) -> None:
        self._caches = [self._caches[i] for i in rows]

    def step(self, tokens: list[int], positions: list[int], adapters: list[int]) -> torch.Tensor:
        rows = [
            self._runner.forward(
                torch.tensor([[token]], dtype=torch.long),
                cache,
                position_ids=torch.tensor([[position]], dtype=torch.long),
                adapters=[adapter],
            )
            for token, cache, position, adapter in zip(
                tokens, self._caches, positions, adapters, strict=True
            )
        ]
        return torch.cat(rows, dim=0)


class BatchedDecoder:
    """One forward for all rows over a left-padded KV batch (full attention only)."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner
        self._cache: DynamicCache | None = None  # per layer: [rows, kv_heads, width, dim]
        self._pads: list[int] = []  # left padding per row

    def add(self, cache: DynamicCache) -> None:
        if self._cache is None:
            self._cache, self._pads = cache, [0]
            return
        keys, values = layer_tensors(self._cache)
        new_keys, new_values = layer_tensors(cache)
        grow = new_keys[0].shape[2] - keys[0].shape[2]
        if grow > 0:  # the newcomer is longer: pad everyone already here
            keys = [_left_pad(t, grow) for t in keys]
            values = [_left_pad(t, grow) for t in values]
            self._pads = [p + grow for p in self._pads]
        pad = max(0, -grow)
        keys = [torch.cat([a, _left_pad(b, pad)]) for a, b in zip(keys, new_keys, strict=True)]
        values = [
            torch.cat([a, _left_pad(b, pad)]) for a, b in zip(values, new_values, strict=True)
        ]
        set_layer_tensors(self._cache, keys, values)
        self._pads.append(pad)

    def keep(self, rows: list[int]) -> None:
        if self._cache is None or not rows:
            self._cache, self._pads = None, []
            return
        index = torch.tensor(rows, dtype=torch.long)
        trim = min(self._pads[i] for i in rows)  # columns that are padding in every row
        keys, values = layer_tensors(self._cache)
        keys = [t.index_select(0, index)[:, :, trim:] for t in keys]
        values = [t.index_select(0, index)[:, :, trim:] for t in values]
        set_layer_tensors(self._cache, keys, values)
        self._pads = [self._pads[i] - trim for i in rows]

    def step(self, tokens: list[int], positions: list[int], adapters: list[int]) -> torch.Tensor:
        assert self._cache is not None, "step() without rows"
        mask = None
        if any(self._pads):  # an all-ones mask would only slow attention down
            width = layer_tensors(self._cache)[0][0].shape[2]
            mask = torch.ones(len(self._pads), width + 1, dtype=torch.long)
            for row, pad in enumerate(self._pads):
                mask[row, :pad] = 0
        # The model appends this step's keys and values to self._cache in place.
        return self._runner.forward(
            torch.tensor(tokens, dtype=torch.long).unsqueeze(1),
            self._cache,
            attention_mask=mask,
            position_ids=torch.tensor(positions, dtype=torch.long).unsqueeze(1),
            adapters=adapters,
        )


def _left_pad(t: torch.Tensor, count: int) -> torch.Tensor:
    """Pad a [rows, heads, seq, dim] tensor with `count` zero columns on the left."""
    if count == 0:
        return t
    zeros = t.new_zeros(t.shape[0], t.shape[1], count, t.shape[3])
    return torch.cat([zeros, t], dim=2)
