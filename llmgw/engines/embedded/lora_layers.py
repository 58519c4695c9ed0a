"""Many LoRA adapters on one base model, picked per batch row (vLLM's punica idea, in torch).

Every `nn.Linear` of the model except the LM head is wrapped in a `LoRALinear`.
Adapters live in numbered slots; per wrapped module there are two stacks

    a: [slots, max_rank, in_features]      b: [slots, out_features, max_rank]

with the adapter's scaling folded into `b` and smaller ranks zero-padded, which adds
exact zeros. Slot 0 stays all zeros: it is the base model. A forward names one slot
per batch row and every wrapped module computes

    y = base(x) + (x @ a[slot]ᵀ) @ b[slot]ᵀ        per row

so a decode step mixing several adapters and the base is still one forward. A batch
of base rows only skips the LoRA path entirely, so it runs exactly as without LoRA.
Stacks are allocated per module when the first adapter targeting it is installed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BASE_SLOT = 0


@dataclass(frozen=True, slots=True)
class AdapterWeights:
    """One adapter, validated against the base model and ready to install.

    `modules` maps a module path (`model.layers.0.self_attn.q_proj`) to
    `(a [rank, in_features], b [out_features, rank])`, the scaling already in `b`.
    """

    rank: int
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]


class LoRALinear(nn.Module):
    """A linear layer plus the per-row LoRA delta of the slots its bank selected."""

    def __init__(self, base: nn.Linear, bank: AdapterBank) -> None:
        super().__init__()
        self.base = base
        self._bank = bank
        self.a: torch.Tensor | None = None  # [slots, max_rank, in]; None: never targeted
        self.b: torch.Tensor | None = None  # [slots, out, max_rank]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x)
        rows = self._bank.rows
        if rows is None or self.a is None or self.b is None:
            return out
        # x: [batch, seq, in]; one slot per batch row.
        a = self.a.index_select(0, rows).transpose(1, 2)
        b = self.b.index_select(0, rows).transpose(1, 2)
        return out + torch.matmul(torch.matmul(x, a), b)

    def write(self, slot: int, capacity: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Put one adapter's factors into `slot`, allocating the stacks on first use."""
        if self.a is None or self.b is None:
            weight = self.base.weight
            rank = self._bank.max_rank
            self.a = weight.new_zeros(capacity, rank, self.base.in_features)
            self.b = weight.new_zeros(capacity, self.base.out_features, rank)
        rank = a.shape[0]
        self.a[slot, :rank, :] = a
        self.b[slot, :, :rank] = b

    def clear(self, slot: int) -> None:
        if self.a is not None and self.b is not None:
            self.a[slot].zero_()
            self.b[slot].zero_()

    def grow(self, capacity: int) -> None:
        if self.a is not None and self.b is not None:
            self.a = _grow(self.a, capacity)
            self.b = _grow(self.b, capacity)


class AdapterBank:
    """The adapter slots of one model.

    `targets` (module path -> (in_features, out_features)), `max_rank` and `dtype`
    are fixed at construction and safe to read from any thread. Everything else
    (`install`, `release`, `select`) belongs to the thread that runs forwards: the
    generator's scheduler thread.

    There are `max_loras` slots to start with. A released slot is reused only when
    no queued or running sequence still uses it (the caller passes those as `busy`),
    so unloading an adapter never changes the output of its requests in flight; when
    every slot is held that way, the stacks grow by one slot.
    """

    def __init__(self, model: nn.Module, *, max_rank: int, max_loras: int) -> None:
        self.max_rank = max_rank
        self._layers = _wrap_linears(model, self)
        self.targets: dict[str, tuple[int, int]] = {
            name: (layer.base.in_features, layer.base.out_features)
            for name, layer in self._layers.items()
        }
        weights = [layer.base.weight for layer in self._layers.values()]
        self.dtype = weights[0].dtype if weights else torch.float32
        self._capacity = max_loras + 1  # slot 0 is the base model
        self._installed: set[int] = set()
        self.rows: torch.Tensor | None = None  # the slot of each row in the current forward

    def install(self, weights: AdapterWeights, busy: Collection[int]) -> int:
        """Copy `weights` into a free slot and return its number."""
        unknown = set(weights.modules) - set(self._layers)
        if unknown or weights.rank > self.max_rank:  # read_adapter checks both first
            raise ValueError(
                f"adapter does not fit: modules {sorted(unknown)}, rank {weights.rank}"
            )
        slot = self._free_slot(busy)
        for name, layer in self._layers.items():
            layer.clear(slot)
            if name in weights.modules:
                layer.write(slot, self._capacity, *weights.modules[name])
        self._installed.add(slot)
        return slot

    def release(self, slot: int) -> None:
        """Forget the adapter in `slot`; its values stay until the slot is reused."""
        self._installed.discard(slot)

    @contextmanager
    def select(self, slots: Sequence[int] | None) -> Iterator[None]:
        """Use these slots, one per batch row, for the forwards inside the block."""
        if slots is None or not any(slots):
            yield  # base rows only: skip the LoRA path
            return
        self.rows = torch.tensor(slots, dtype=torch.long)
        try:
            yield
        finally:
            self.rows = None

    def _free_slot(self, busy: Collection[int]) -> int:
        for slot in range(1, self._capacity):
            if slot not in self._installed and slot not in busy:
                return slot
        self._capacity += 1
        for layer in self._layers.values():
            layer.grow(self._capacity)
        return self._capacity - 1


def _wrap_linears(model: nn.Module, bank: AdapterBank) -> dict[str, LoRALinear]:
    """Replace each `nn.Linear` but the LM head by a `LoRALinear`, in place."""
    head: Any = getattr(model, "get_output_embeddings", lambda: None)()
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    ]
    wrapped: dict[str, LoRALinear] = {}
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapped[name] = LoRALinear(module, bank)
        setattr(parent, child, wrapped[name])
    return wrapped


def _grow(stack: torch.Tensor, capacity: int) -> torch.Tensor:
    extra = stack.new_zeros(capacity - stack.shape[0], *stack.shape[1:])
    return torch.cat([stack, extra])
