"""Build the tiny random-init Llama demo model, once per cache directory.

The demo model lets `llmgw demo`, the tests and a CPU vLLM serve a real
`LlamaForCausalLM` without downloading weights. It is built offline in seconds:

* tokenizer: byte-level BPE (vocab 2048) trained with `tokenizers` on the first
  ~2 MB of the sorted top-level Python stdlib sources, with llama-3 special tokens
  and a llama-3 style chat template;
* weights: float32 safetensors drawn from a fixed-seed generator, so two builds on
  the same machine are byte-identical.

Config, tokenizer and generation files are written by hand rather than through
`save_pretrained` so that the output does not depend on the installed transformers
version (a vLLM image may carry an older one than the gateway's venv).

`ensure_demo_model` is safe to call from several processes at once (replicas
starting together): a `flock` serialises builders and the finished directory
appears through one atomic `os.rename`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEMO_MODEL_NAME = "demo-llama-v1"
CACHE_DIR_ENV = "LLMGW_CACHE_DIR"

BOS, EOS, START_HEADER, END_HEADER, EOT = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
# Trainer order fixes the ids: BOS=0, EOS=1, START_HEADER=2, END_HEADER=3, EOT=4.
SPECIAL_TOKENS = (BOS, EOS, START_HEADER, END_HEADER, EOT)

VOCAB_SIZE = 2048
MAX_POSITIONS = 2048
_CORPUS_CHARS = 2 << 20  # ~0.3 s of BPE training on two cores
_SEED = 0
_INIT_STD = 0.02

# Llama-3 layout. Content is assumed to be a string (servers flatten OpenAI
# content parts first); `tools`, when given, are shown in a leading system block.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if tools %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nTools: ' + (tools | tojson)"
    " + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + (message['content'] or '') | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

_MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    # head_dim 64: vLLM's CPU attention kernels reject very small head sizes.
    "num_key_value_heads": 1,
    "head_dim": 64,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": MAX_POSITIONS,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "initializer_range": _INIT_STD,
    "bos_token_id": SPECIAL_TOKENS.index(BOS),
    "eos_token_id": SPECIAL_TOKENS.index(EOS),
    "torch_dtype": "float32",
    "use_cache": True,
}
_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def default_cache_dir() -> Path:
    """`$LLMGW_CACHE_DIR`, else `~/.cache/llmgw`."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "llmgw"


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """Return the demo model directory under `cache_dir`, building it on first use.

    Process-safe: concurrent callers block on a lock file and all get the same
    directory. A build takes a few seconds (mostly importing torch/transformers).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / DEMO_MODEL_NAME
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f"{DEMO_MODEL_NAME}.lock"):
        if not _is_complete(target):  # another process may have built it while we waited
            build_atomically(target, build_demo_model)
    return target


def build_atomically(target: Path, build: Callable[[Path], object]) -> None:
    """Build into a temporary sibling directory, then rename it to ``target``: readers
    see a whole build or none. Call with the build's file lock held."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        # mkdtemp and safetensors make owner-only files; engines may run as another user.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if target.exists():  # only a damaged, hand-edited leftover can get here
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_demo_model(out_dir: Path) -> None:
    """Write every file of the demo model into the existing directory `out_dir`."""
    _write_tokenizer(out_dir)
    _write_json(out_dir / "config.json", _MODEL_CONFIG)
    eos_ids = [SPECIAL_TOKENS.index(EOS), SPECIAL_TOKENS.index(EOT)]
    generation = {"bos_token_id": SPECIAL_TOKENS.index(BOS), "eos_token_id": eos_ids}
    _write_json(out_dir / "generation_config.json", generation)
    _write_weights(out_dir / "model.safetensors")


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _FILES)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _corpus() -> Iterator[str]:
    # Top-level stdlib modules only: rglob over the whole tree costs ~1 s.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    budget = _CORPUS_CHARS
    for path in sorted(stdlib.glob("*.py")):
        if budget <= 0:
            return
        text = path.read_bytes().decode("utf-8", "replace")[:budget]
        budget -= len(text)
        yield text


def _write_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    # Like llama-3: plain encodes get BOS; chat prompts carry it in the template.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_json(out_dir / "tokenizer_config.json", config)


def _write_weights(path: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{k: v for k, v in _MODEL_CONFIG.items() if k != "torch_dtype"})
    with torch.device("meta"):  # shapes and names only; values come from our generator
        skeleton = LlamaForCausalLM(config)
    # Our own draw, in parameter order, so the weights do not depend on how a given
    # transformers version initialises modules.
    gen = torch.Generator().manual_seed(_SEED)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in skeleton.named_parameters():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(param.shape, dtype=torch.float32)
        else:
            tensors[name] = torch.normal(0.0, _INIT_STD, param.shape, generator=gen)
    save_file(tensors, str(path), metadata={"format": "pt"})
