"""Read a PEFT LoRA checkpoint and check it against the served base model.

Accepts what `PeftModel.save_pretrained` writes for linear layers:
`adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight` ([r, in]) and `...lora_B.weight` ([out, r]).
Scaling follows peft (and vLLM): `lora_alpha / r`, or `/ sqrt(r)` with `use_rslora`,
per module through `rank_pattern` and `alpha_pattern`.

Every refusal names the adapter and the reason. Missing files are 404 with vLLM's
message ("Loading lora X failed: No adapter found for PATH"); anything else about
the adapter (rank above the limit, another base's shapes or modules, features we
do not run) is 400. Runs off the event loop: it reads files.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from llmgw.engines.embedded.lora_layers import AdapterWeights
from llmgw.errors import InvalidRequest, ModelNotFound

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": "a", ".lora_B.weight": "b"}
_DIFFERENT_BASE = "(an adapter for a different base model?)"

Refuse = Callable[[str], InvalidRequest]  # reason -> the error naming the adapter


class AdapterNotFound(ModelNotFound):
    """404: no adapter files at a path, or no loaded adapter of that name."""

    code = "lora_adapter_not_found"


def read_adapter(
    name: str,
    path: str,
    *,
    max_rank: int,
    targets: Mapping[str, tuple[int, int]],
    dtype: torch.dtype,
) -> AdapterWeights:
    """Load and validate one adapter. `targets` maps module paths of the base model
    to their (in_features, out_features)."""
    fail = _failure(name)
    config = _read_config(name, path)
    _check_features(config, fail)
    ranks = [config["r"], *config.get("rank_pattern", {}).values()]
    if not all(isinstance(r, int) and r > 0 for r in ranks):
        raise fail(f"`r` and `rank_pattern` must hold positive integers, got {ranks}")
    if max(ranks) > max_rank:
        raise fail(f"LoRA rank {max(ranks)} is greater than max_lora_rank {max_rank}.")
    pairs = _pairs(_read_tensors(name, path), fail)
    if not pairs:
        raise fail(f"{WEIGHTS_FILE} holds no lora_A/lora_B weights")
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, (a, b) in sorted(pairs.items()):
        rank, scale = _rank_and_scale(config, module)
        _check_shapes(module, a, b, rank, targets, fail)
        modules[module] = (a.to(dtype), (b.float() * scale).to(dtype))
    return AdapterWeights(rank=max(a.shape[0] for a, _ in modules.values()), modules=modules)


def _failure(name: str) -> Refuse:
    def fail(reason: str) -> InvalidRequest:
        return InvalidRequest(f"Loading lora {name} failed: {reason}", param="lora_path")

    return fail


def _not_found(name: str, path: str, why: str) -> AdapterNotFound:
    return AdapterNotFound(
        f"Loading lora {name} failed: No adapter found for {path} ({why})", param="lora_path"
    )


def _read_config(name: str, path: str) -> dict[str, Any]:
    directory = Path(path)
    if not directory.is_dir():
        raise _not_found(name, path, "no such directory")
    if not (directory / CONFIG_FILE).is_file():
        raise _not_found(name, path, f"{CONFIG_FILE} is missing")
    if not (directory / WEIGHTS_FILE).is_file():
        raise _not_found(name, path, f"{WEIGHTS_FILE} is missing")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _failure(name)(f"{CONFIG_FILE} is not readable JSON: {exc}") from None
    if not isinstance(config, dict) or "r" not in config:
        raise _failure(name)(f"{CONFIG_FILE} is not a LoRA config (no `r`)")
    return config


def _check_features(config: dict[str, Any], fail: Refuse) -> None:
    """Refuse, like vLLM, what would silently compute something else."""
    if config.get("peft_type", "LORA") != "LORA":
        raise fail(f"peft_type {config['peft_type']!r} is not supported, only LORA")
    if config.get("use_dora"):
        raise fail("DoRA adapters are not supported.")
    if config.get("bias", "none") != "none":
        raise fail("Adapter bias is not supported.")
    if config.get("modules_to_save"):
        raise fail(f"modules_to_save is not supported: {config['modules_to_save']}")


def _read_tensors(name: str, path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(path) / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise _failure(name)(f"{WEIGHTS_FILE} is not readable: {exc}") from None


def _pairs(
    tensors: dict[str, torch.Tensor], fail: Refuse
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (lora_A, lora_B)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        bare = key.removeprefix(_PREFIX)
        suffix = next((s for s in _SUFFIXES if bare.endswith(s)), None)
        if suffix is None:
            raise fail(f"tensor {key!r} is not a lora_A/lora_B weight of a linear layer")
        found.setdefault(bare.removesuffix(suffix), {})[_SUFFIXES[suffix]] = tensor
    incomplete = sorted(m for m, ab in found.items() if len(ab) != 2)
    if incomplete:
        raise fail(f"modules without both lora_A and lora_B: {incomplete}")
    return {module: (ab["a"], ab["b"]) for module, ab in found.items()}


def _rank_and_scale(config: dict[str, Any], module: str) -> tuple[int, float]:
    rank = _match(config.get("rank_pattern") or {}, module, config["r"])
    alpha = _match(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    return rank, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _match(pattern: dict[str, Any], module: str, default: Any) -> Any:
    # peft's get_pattern_key: a key matches a suffix of the name at a "." boundary.
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_shapes(
    module: str,
    a: torch.Tensor,
    b: torch.Tensor,
    rank: int,
    targets: Mapping[str, tuple[int, int]],
    fail: Refuse,
) -> None:
    if module not in targets:
        raise fail(f"module {module!r} is not a linear layer of the base model {_DIFFERENT_BASE}")
    fan_in, fan_out = targets[module]
    expected = {"lora_A": [rank, fan_in], "lora_B": [fan_out, rank]}
    got = {"lora_A": list(a.shape), "lora_B": list(b.shape)}
    if got != expected:
        raise fail(
            f"shape mismatch for {module!r}: got lora_A {got['lora_A']} and lora_B "
            f"{got['lora_B']}, the base layer needs {expected['lora_A']} and "
            f"{expected['lora_B']} {_DIFFERENT_BASE}"
        )
