"""Forward passes of a Hugging Face causal LM with an explicit KV cache.

Kept apart from scheduling so that the decoders only deal with tensors. With LoRA
enabled each forward also names one adapter slot per batch row (0: the base). The two
transformers differences we meet are bridged here: the cache keyword (`cache` in
transformers 5, `past_key_values` before) and where a cache layer keeps its tensors.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from llmgw.engines.embedded.lora_layers import BASE_SLOT, AdapterBank


class ModelRunner:
    """Wraps one model in eval mode; call only from the scheduler thread.

    `adapters` is the model's LoRA bank when LoRA is enabled (its layers are already
    wrapped into `model`); without one, every row must use the base slot.
    """

    def __init__(self, model: Any, adapters: AdapterBank | None = None) -> None:
        self.model = model.eval()
        self.adapters = adapters
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def supports_padded_batches(self) -> bool:
        """True when every cache layer is a plain growing layer (no sliding window,
        no recurrent state), which is what left-padded batching relies on."""
        layers = getattr(self.new_cache(), "layers", None)
        if layers is None:  # transformers < 4.56: keep to the layout-agnostic path
            return False
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in layers)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        adapters: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Run `input_ids` [batch, seq] through the model, growing `cache` in place.

        `adapters` holds one LoRA slot per row (None: all base). Returns float32
        logits of the last position only: [batch, vocab].
        """
        with self._select(adapters):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            )
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits

    def prefill(
        self, prompt_ids: list[int], adapter: int = BASE_SLOT
    ) -> tuple[torch.Tensor, DynamicCache]:
        """Process a whole prompt; returns (logits [vocab], its new cache)."""
        cache = self.new_cache()
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        logits = self.forward(ids, cache, adapters=[adapter])
        return logits[0], cache

    @torch.inference_mode()
    def embed(self, prompt_ids: list[int], adapter: int = BASE_SLOT) -> list[float]:
        """The prompt's embedding: the last hidden state (after the final norm) averaged
        over its positions, scaled to unit length, as vLLM's mean pooling does."""
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        with self._select([adapter]):
            hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        pooled = hidden[0].float().mean(dim=0)
        vector: list[float] = torch.nn.functional.normalize(pooled, dim=0).tolist()
        return vector

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    def _select(self, adapters: Sequence[int] | None) -> contextlib.AbstractContextManager[None]:
        if self.adapters is not None:
            return self.adapters.select(adapters)
        if adapters is not None and any(a != BASE_SLOT for a in adapters):
            raise ValueError("a LoRA slot was asked for but LoRA is not enabled")
        return contextlib.nullcontext()


def layer_tensors(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer (keys, values) lists of a dynamic cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [layer.keys for layer in layers], [layer.values for layer in layers]
    legacy: Any = cache  # transformers < 4.56 kept per-layer lists on the cache
    return list(legacy.key_cache), list(legacy.value_cache)


def set_layer_tensors(
    cache: DynamicCache, keys: list[torch.Tensor], values: list[torch.Tensor]
) -> None:
    """Replace the per-layer tensors of an initialised dynamic cache, without copying."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer, k, v in zip(layers, keys, values, strict=True):
            layer.keys, layer.values = k, v
    else:
        legacy: Any = cache
        legacy.key_cache[:] = keys
        legacy.value_cache[:] = values
