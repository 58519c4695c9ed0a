"""Load a model directory or hub id (or `demo`) into a ready `Generator`.

With LoRA options the model's linear layers are wrapped for adapters first
(see `lora_layers`); adapters themselves are loaded later, by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from llmgw.engines.demo_model import ensure_demo_model
from llmgw.engines.embedded.adapters import LoRAOptions
from llmgw.engines.embedded.generator import Generator
from llmgw.engines.embedded.lora_layers import AdapterBank
from llmgw.engines.embedded.model_runner import ModelRunner

log = logging.getLogger(__name__)

DEMO = "demo"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """Everything the HTTP layer needs about the served model."""

    generator: Generator
    tokenizer: Any
    root: str  # what `--model` resolved to: a directory or a hub id
    max_model_len: int
    vocab_size: int  # width of the logits: token ids are in [0, vocab_size)
    adapters: AdapterBank | None = None  # None: LoRA not enabled


def resolve_model(model: str) -> str:
    return str(ensure_demo_model()) if model == DEMO else model


def load_model(
    model: str,
    *,
    dtype: str = "float32",
    max_model_len: int | None = None,
    max_batch_size: int = 16,
    batched: bool | None = None,
    lora: LoRAOptions | None = None,
) -> LoadedModel:
    """Load weights and tokenizer on CPU, warm the model up; the thread is not started."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # (untyped upstream)
    root = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(root)
    hf_model = AutoModelForCausalLM.from_pretrained(root, dtype=_DTYPES[dtype])
    limit = _context_limit(hf_model.config, tokenizer)
    if max_model_len is not None:
        if max_model_len > limit:
            raise ValueError(f"--max-model-len {max_model_len} exceeds the model's {limit}")
        limit = max_model_len
    bank = None
    if lora is not None:
        bank = AdapterBank(hf_model, max_rank=lora.max_rank, max_loras=lora.max_loras)
    runner = ModelRunner(hf_model, bank)
    runner.prefill([_any_token(tokenizer)])  # first forward allocates; keep it off requests
    generator = Generator(
        runner,
        tokenizer,
        eos_token_ids=_eos_ids(hf_model, tokenizer),
        max_model_len=limit,
        max_batch_size=max_batch_size,
        batched=batched,
    )
    log.info("loaded %s (max_model_len=%d, dtype=%s)", root, limit, dtype)
    vocab_size = int(hf_model.config.get_text_config().vocab_size)  # the logits' width
    return LoadedModel(generator, tokenizer, root, limit, vocab_size, bank)


def _context_limit(config: Any, tokenizer: Any) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        return limit
    # Tokenizers without a real limit report a huge sentinel; 2048 is then a safe guess.
    tok_limit = getattr(tokenizer, "model_max_length", 0)
    return tok_limit if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000 else 2048


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids from the generation config (llama-3 lists eot there) and the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _any_token(tokenizer: Any) -> int:
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
