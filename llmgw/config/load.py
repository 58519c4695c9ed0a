"""Reading and merging config files, and error messages that name the file and key.

``load_config(paths)`` reads every file, merges them (later files override earlier
keys; ``models`` are merged by ``name``, so models from all files are served), and
validates the result. A bad config raises :class:`ConfigError` whose message names
the file, the key path and what was expected, e.g.
``configs/x.yaml: models[1].replicas: Input should be greater than or equal to 1, got 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmgw.config.base import ConfigError
from llmgw.config.gateway import GatewayConfig
from llmgw.config.model import ModelConfig

# Key path (as pydantic reports it) -> the file that last set it.
Origins = dict[tuple[str | int, ...], str]

def load_config(paths: Sequence[str | Path]) -> GatewayConfig:
    if not paths:
        raise ConfigError("no config file given")
    merged: dict[str, Any] = {}
    origins: Origins = {}
    for path in paths:
        _merge_file(merged, origins, _read_yaml(Path(path)), str(path))
    try:
        return traced_engines(GatewayConfig.model_validate(merged))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None


def traced_engines(cfg: GatewayConfig) -> GatewayConfig:
    """With ``telemetry.tracing``, launched vLLM engines export their own spans to the same
    collector (``--otlp-traces-endpoint``, over OTLP/HTTP like the gateway), so they join
    each request's trace from the traceparent the gateway sends them. A flag or variable
    the config sets itself wins."""
    tracing = cfg.telemetry.tracing
    if tracing is None:
        return cfg
    models = [_traced(m, tracing.endpoint) if m.engine == "vllm" and m.launched else m
              for m in cfg.models]
    return cfg.model_copy(update={"models": models})


def _traced(model: ModelConfig, endpoint: str) -> ModelConfig:
    args = {"otlp_traces_endpoint": endpoint, **model.engine_args}
    # vLLM's exporter speaks gRPC unless told otherwise.
    env = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "vllm",
           **model.launch.env}
    return model.model_copy(update={"engine_args": args,
                                    "launch": model.launch.model_copy(update={"env": env})})


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _merge_file(merged: dict[str, Any], origins: Origins, data: dict[str, Any], src: str) -> None:
    for key, value in data.items():
        if key == "models" and isinstance(value, list):
            origins[("models",)] = src
            _merge_models(merged.setdefault("models", []), origins, value, src)
        else:
            _merge_value(merged, origins, (key,), key, value, src)


def _merge_models(models: list[Any], origins: Origins, new: list[Any], src: str) -> None:
    """Models are keyed by name: a later file's model with a known name overrides its
    keys, any other model is appended."""
    by_name = {m.get("name"): i for i, m in enumerate(models) if isinstance(m, dict)}
    in_this_file: set[str] = set()
    for position, model in enumerate(new):
        name = model.get("name") if isinstance(model, dict) else None
        if name is not None and name in in_this_file:
            raise ConfigError(f"{src}: models[{position}].name: model name {name!r} is "
                              "declared twice in this file")
        if name is not None:
            in_this_file.add(name)
        if name is not None and name in by_name:
            index = by_name[name]
            for key, value in model.items():
                _merge_value(models[index], origins, ("models", index, key), key, value, src)
        else:
            by_name[name] = len(models)
            origins[("models", len(models))] = src
            models.append(model)


def _merge_value(
    target: dict[str, Any], origins: Origins, path: tuple[str | int, ...], key: str,
    value: Any, src: str,
) -> None:
    origins[path] = src
    if isinstance(value, dict) and isinstance(target.get(key), dict):
        for sub_key, sub_value in value.items():
            _merge_value(target[key], origins, (*path, sub_key), sub_key, sub_value, src)
    else:
        target[key] = value


def _describe(exc: ValidationError, origins: Origins) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        got = f", got {error['input']!r}" if error["type"] != "missing" else ""
        msg = error["msg"].removeprefix("Value error, ")
        lines.append(f"{_origin(loc, origins)}: {_dotted(loc) or '<top>'}: {msg}{got}")
    return "\n".join(lines)


def _origin(loc: tuple[str | int, ...], origins: Origins) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in origins:
            return origins[loc[:end]]
    return ", ".join(_unique(origins.values())) or "<config>"


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
