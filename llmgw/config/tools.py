"""The ``tools:`` section: Python classes served as tools (Ray Serve deployments' knobs).

Each entry names a class by import path; its methods marked ``@llmgw.tool`` become tools
(llmgw/tools). This module checks the shape only: whether the class imports and its
signatures make tools is ``llmgw check``'s business (llmgw.tools.registry), which names
the entry's YAML key in its errors.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from llmgw.config.base import _Strict
from llmgw.config.placement import ProcessResources

# OpenAI's limit on function names (a tool a model calls must pass it).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# `package.module:Class`, as uvicorn and Ray Serve spell import paths.
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class BatchConfig(_Strict):
    """Dynamic batching of one ``@llmgw.batch`` method (Ray Serve's ``@serve.batch``):
    calls wait up to ``batch_wait_timeout_s`` after the first, or until
    ``max_batch_size`` arrived, and run as one list."""

    max_batch_size: int = Field(default=8, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0, le=60)


class ToolConfig(_Strict):
    # The deployment's name: its ``__call__`` tool is named this, and its other tool
    # methods ``<name>_<method>`` unless the decorator names them.
    name: str
    import_path: str
    # Keyword arguments of the class's constructor (JSON-able values).
    init_args: dict[str, Any] = Field(default_factory=dict)
    # Worker processes, each with its own instance; 0 runs one instance inside the
    # gateway (sync methods in a thread, never on the event loop).
    replicas: int = Field(default=1, ge=0, le=64)
    # Calls one replica runs at once; more wait in the gateway for a free replica.
    max_ongoing_requests: int = Field(default=16, ge=1, le=4096)
    # A call that takes longer fails with 504 (the tool keeps running to its end).
    timeout_s: float = Field(default=60.0, gt=0)
    startup_timeout_s: float = Field(default=60.0, gt=0)
    # Method name -> batching bounds, overriding those its decorator gives.
    batch: dict[str, BatchConfig] = Field(default_factory=dict)
    # What each worker asks a Ray cluster for (``placement.backend: ray``; the local
    # backend ignores it): one placement group per worker, 1 CPU and no GPU unless given.
    placement: ProcessResources = Field(default_factory=ProcessResources)

    @field_validator("name")
    @classmethod
    def _openai_name(cls, value: str) -> str:
        if not TOOL_NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '_' or '-' (OpenAI's limit on "
                             "tool names)")
        return value

    @field_validator("import_path")
    @classmethod
    def _module_and_class(cls, value: str) -> str:
        if not _IMPORT_PATH.match(value):
            raise ValueError("must be 'package.module:Class'")
        return value
