"""Build LoRA adapters for the demo model, offline, once per cache directory.

The adapters are standard PEFT checkpoints (`adapter_config.json` plus
`adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight`), so
the embedded engine, `peft` and vLLM all load them. Their `base_model_name_or_path`
is the demo model directory they sit next to.

Weights are random but non-zero: a fresh PEFT adapter has `lora_B = 0` and would
not change a single logit, so both factors are drawn from a generator seeded per
adapter. Two builds on the same machine are byte-identical, and greedy output
differs from the base model and between adapters.

`peft` lays out the module names and shapes (on a meta-device skeleton, so nothing
is allocated); the values and files are written here, so the bytes do not depend on
how a given peft version initialises or serialises an adapter.

Besides the good adapters, `write_*_adapter` helpers make deliberately broken
ones for tests: a rank above a server's limit, an adapter for a different base
(other hidden size, or layers the demo model lacks) and directories with a file
missing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from llmgw.engines.demo_model import (
    DEMO_MODEL_NAME,
    build_atomically,
    default_cache_dir,
    ensure_demo_model,
    file_lock,
)

DEMO_LORA_DIR = f"{DEMO_MODEL_NAME}-lora"  # under the cache root, beside the demo model
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Attention and MLP projections: all of them are LoRA targets in vLLM's Llama too.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
_SEED = 1000
# Base weights have std 0.02. With these draws and alpha = 2 * r, each delta B @ A * 2
# is about as large as the base weight it modifies: enough to move greedy argmaxes.
_STD_A = 0.05
_STD_B = 0.05

Mismatch = Literal["hidden-size", "layers"]
MissingFile = Literal["adapter_config.json", "adapter_model.safetensors"]


def adapter_name(index: int) -> str:
    return f"demo-lora-{index}"


def build_demo_adapters(
    count: int, rank: int = 8, cache_dir: Path | None = None
) -> dict[str, Path]:
    """`{"demo-lora-0": dir, ...}`: `count` distinct adapters of rank `rank`.

    Built on first use under `<cache>/demo-llama-v1-lora/r<rank>/`, next to the demo
    model (built too if missing). Process-safe like `ensure_demo_model`: builders
    take a file lock and each directory appears through one atomic rename.
    """
    if count < 0 or rank < 1:
        raise ValueError(f"need count >= 0 and rank >= 1, got count={count} rank={rank}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = ensure_demo_model(root)
    out = root / DEMO_LORA_DIR / f"r{rank}"
    adapters = {adapter_name(i): out / adapter_name(i) for i in range(count)}
    missing = [(i, name) for i, name in enumerate(adapters) if not _is_complete(adapters[name])]
    if missing:
        out.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f"{DEMO_LORA_DIR}.lock"):
            for i, name in missing:
                build = functools.partial(write_adapter, base_dir=base, rank=rank, seed=_SEED + i)
                _build_once(adapters[name], build)
    return adapters


def write_adapter(
    out_dir: Path,
    base_dir: Path,
    *,
    rank: int,
    seed: int,
    target_modules: Sequence[str] = TARGET_MODULES,
    base_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write one adapter for the model in `base_dir` into `out_dir` (created if needed).

    `base_overrides` changes the base config the module shapes are taken from (say
    `{"hidden_size": 256}`), while `base_model_name_or_path` still names `base_dir`:
    that is how an adapter trained for another base looks to a server.
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    config = _lora_config(rank, target_modules)
    shapes = _lora_shapes(config, base_dir, dict(base_overrides or {}))
    save_file(_draw(shapes, seed), str(out_dir / "adapter_model.safetensors"), {"format": "pt"})
    _write_json(out_dir / "adapter_config.json", _config_file(config, base_dir))
    return out_dir


def write_high_rank_adapter(out_dir: Path, rank: int, cache_dir: Path | None = None) -> Path:
    """A valid demo-model adapter of rank `rank`; pass one above the server's max."""
    base = ensure_demo_model(cache_dir)
    return write_adapter(out_dir, base, rank=rank, seed=_SEED - 1)


def write_wrong_base_adapter(
    out_dir: Path, mismatch: Mismatch = "hidden-size", cache_dir: Path | None = None
) -> Path:
    """An adapter whose shapes (`hidden-size`: 256 instead of 128) or modules
    (`layers`: four layers, the demo model has two) belong to another base."""
    base = ensure_demo_model(cache_dir)
    overrides: dict[str, Any] = (
        {"hidden_size": 256, "intermediate_size": 512}
        if mismatch == "hidden-size"
        else {"num_hidden_layers": 4}
    )
    return write_adapter(out_dir, base, rank=8, seed=_SEED - 2, base_overrides=overrides)


def write_incomplete_adapter(
    out_dir: Path, missing: MissingFile, cache_dir: Path | None = None
) -> Path:
    """A good adapter directory with the file `missing` deleted."""
    base = ensure_demo_model(cache_dir)
    write_adapter(out_dir, base, rank=8, seed=_SEED - 3)
    (out_dir / missing).unlink()
    return out_dir


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in ADAPTER_FILES)


def _build_once(target: Path, build: Callable[[Path], object]) -> None:
    """Call with the build lock held."""
    if not _is_complete(target):  # another process may have built it while we waited
        build_atomically(target, build)


def _lora_config(rank: int, target_modules: Sequence[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=sorted(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _lora_shapes(
    config: Any, base_dir: Path, overrides: dict[str, Any]
) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape, as `PeftModel.save_pretrained` would name them."""
    import torch
    from peft import get_peft_model_state_dict, inject_adapter_in_model
    from transformers import AutoConfig, AutoModelForCausalLM

    base_config = AutoConfig.from_pretrained(base_dir, **overrides)
    with torch.device("meta"):  # shapes and names only; values come from our generator
        skeleton = AutoModelForCausalLM.from_config(base_config)  # type: ignore[no-untyped-call]
        inject_adapter_in_model(config, skeleton)
    state = get_peft_model_state_dict(skeleton)
    return {f"base_model.model.{key}": tuple(t.shape) for key, t in sorted(state.items())}


def _draw(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {
        key: torch.normal(0.0, _STD_A if ".lora_A." in key else _STD_B, shape, generator=gen)
        for key, shape in shapes.items()
    }


def _config_file(config: Any, base_dir: Path) -> dict[str, Any]:
    """A fixed field set (not `LoraConfig.to_dict()`, which grows with peft versions);
    peft fills in defaults for the rest, vLLM ignores what it does not know."""
    return {
        "alpha_pattern": {},
        "base_model_name_or_path": str(base_dir),
        "bias": config.bias,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "target_modules": sorted(config.target_modules),
        "task_type": config.task_type,
        "use_dora": False,
        "use_rslora": False,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
