"""From ``tools:`` entries to tools: import each class, find its ``@llmgw.tool`` methods,
build their specs, check names (OpenAI's pattern, no collisions) and constructor
arguments. What ``llmgw check`` runs; errors name the YAML key.

Tool names: a deployment's ``__call__`` is named as the deployment, any other method
``<deployment>_<method>``, unless ``@llmgw.tool(name=...)`` names it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from llmgw.config import TOOL_NAME, ConfigError, GatewayConfig, ToolConfig
from llmgw.tools.batching import BatchedMethod
from llmgw.tools.decorators import tool_mark
from llmgw.tools.schema import SignatureError, ToolSpec, build_spec


def load_class(path: str) -> type:
    """``package.module:Class``; raises ImportError / AttributeError / TypeError."""
    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not isinstance(cls, type):
        raise TypeError(f"{path} is a {type(cls).__name__}, not a class")
    return cls


def deployment_specs(cfg: ToolConfig, where: str, cls: type | None = None) -> list[ToolSpec]:
    """The tools of one entry (``where``: its YAML key, e.g. ``tools[0]``)."""
    if cls is None:
        try:
            cls = load_class(cfg.import_path)
        except Exception as exc:  # whatever the user's module raises on import
            raise ConfigError(f"{where}.import_path: cannot import {cfg.import_path!r}: "
                              f"{type(exc).__name__}: {exc}") from None
    _check_init_args(cfg, cls, where)
    specs = [_spec(cfg, where, method, member) for method, member in _marked(cls)]
    if not specs:
        raise ConfigError(f"{where}.import_path: {cfg.import_path} has no method marked "
                          "@llmgw.tool")
    batched = {s.method for s in specs if s.batched is not None}
    for method in cfg.batch:
        if method not in batched:
            raise ConfigError(f"{where}.batch.{method}: {cfg.import_path} has no "
                              f"@llmgw.batch tool method {method!r}")
    return specs


def check_tools(cfg: GatewayConfig) -> list[ToolSpec]:
    """Every tool of the config, in config order; raises ConfigError."""
    specs: list[ToolSpec] = []
    owner: dict[str, str] = {}
    for index, entry in enumerate(cfg.tools):
        where = f"tools[{index}]"
        for spec in deployment_specs(entry, where):
            if spec.name in owner:
                raise ConfigError(f"{where}: tool name {spec.name!r} is also a tool of "
                                  f"{owner[spec.name]}")
            owner[spec.name] = where
            specs.append(spec)
    for index, key in enumerate(cfg.auth.keys if cfg.auth is not None else []):
        unknown = sorted(set(key.tools or ()) - set(owner))
        if unknown:
            raise ConfigError(f"auth.keys[{index}].tools: no tool named {unknown[0]!r}")
    return specs


def _marked(cls: type) -> list[tuple[str, Any]]:
    """(method name, the class attribute) of every marked method, in definition order."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            fn = member.fn if isinstance(member, BatchedMethod) else member
            if tool_mark(member) is not None or tool_mark(fn) is not None:
                found[name] = member
            elif name in found:  # a subclass overrode it without the mark
                del found[name]
    return list(found.items())


def _spec(cfg: ToolConfig, where: str, method: str, member: Any) -> ToolSpec:
    fn = member.fn if isinstance(member, BatchedMethod) else member
    mark = tool_mark(member) or tool_mark(fn)
    assert mark is not None
    key = f"{where}.import_path: {cfg.import_path}.{method}"
    if not callable(fn) or isinstance(fn, staticmethod | classmethod):
        raise ConfigError(f"{key}: @llmgw.tool marks instance methods only")
    name = mark.name or (cfg.name if method == "__call__" else f"{cfg.name}_{method}")
    if not TOOL_NAME.match(name):
        raise ConfigError(f"{key}: tool name {name!r} must be 1-64 letters, digits, '_' or "
                          "'-' (OpenAI's limit)")
    try:
        return build_spec(name, cfg.name, method, member, mark.description)
    except SignatureError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _check_init_args(cfg: ToolConfig, cls: type, where: str) -> None:
    try:
        inspect.signature(cls).bind(**cfg.init_args)
    except TypeError as exc:
        raise ConfigError(f"{where}.init_args: {cfg.import_path}() {exc}") from None
    except ValueError:  # no signature to read (a builtin's); the constructor decides
        return
