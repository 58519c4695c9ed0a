"""A replica's version: a digest of everything its engine process is started with.

Two replicas with the same version run the same engine the same way; a reload whose
config gives a pool another version replaces that pool's replicas one by one. Computed
from the argv and environment the launcher would use (ports left out: every replica has
its own), so any setting that reaches the engine, typed knob or pass-through flag,
changes it, and nothing else does.
"""

from __future__ import annotations

import hashlib
import json

from llmgw.config import ModelConfig
from llmgw.placement.commands import engine_command, launch_unit
from llmgw.types import Role


def replica_version(model: ModelConfig, role: Role = "mixed") -> str:
    """The version of ``model``'s replicas of ``role`` (``mixed`` unless disaggregated).
    Pure: the demo model is named, not built."""
    unit = launch_unit(model, role, 0)
    kv_events_port = 0 if unit.launch.kv_events else None
    argv = engine_command(unit, "-", 0, unit.model or "", kv_events_port)
    # The SGLang bootstrap port counts up per replica: not part of what a replica is.
    argv = [a for i, a in enumerate(argv) if argv[i - 1] != "--disaggregation-bootstrap-port"]
    # What a replica asks a Ray cluster for is part of it too (the local backend
    # ignores it, where a change rolls replicas for nothing: rare, and harmless).
    spec = {"argv": argv, "env": unit.launch.env, "python": unit.launch.python,
            "placement": unit.placement.model_dump(exclude_defaults=True)}
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(),
                           digest_size=6).hexdigest()
