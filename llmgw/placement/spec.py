"""What a launcher runs: a process spec. Engines and tool workers are both processes
that serve HTTP on a port picked where they run, answer a health route, and ask a Ray
cluster for resources; both launchers (local, Ray) start any ``ProcessSpec`` the same
way, so a tool worker is placed, supervised and stopped as an engine replica is.

A spec is plain, picklable data: the Ray launcher ships it to the actor on the node the
process runs on, where its ``command`` is evaluated (the node's Python, its environment,
its address and ports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmgw.config import ModelConfig, Strategy
from llmgw.placement.bundles import rank_command, replica_bundles
from llmgw.placement.commands import engine_command, engine_env, resolve_model


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a process serves, picked where it runs: ``host:port``, the port it publishes
    KV cache events on (if any), and for a replica over several nodes its rank and rank
    0's (address, port) (``master``; None: one process)."""

    host: str
    port: int
    kv_events_port: int | None = None
    rank: int = 0
    master: tuple[str, int] | None = None


class ProcessCommand(Protocol):
    """How a process is started; evaluated where it runs (may do disk work there)."""

    def argv(self, at: Endpoint) -> list[str]: ...

    def env(self) -> dict[str, str]: ...


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One replica's process(es): one per bundle (by rank; the local launcher runs rank 0
    only), rank 0 serving HTTP."""

    # What the replica serves (a model, a tool deployment): its launcher's label.
    name: str
    # What each process asks a Ray cluster for, by rank.
    bundles: list[dict[str, float]]
    startup_timeout_s: float
    command: ProcessCommand
    strategy: Strategy = "STRICT_PACK"
    # Rank 0 publishes KV cache events on a port of its own.
    kv_events: bool = False
    # SGLang's disaggregation bootstrap port, as the config sets it.
    bootstrap_port: int | None = None
    # Answers 200 once the process serves.
    health_path: str = "/health"


@dataclass(frozen=True, slots=True)
class EngineCommand:
    """An engine's command line, from one replica's model config."""

    unit: ModelConfig

    def argv(self, at: Endpoint) -> list[str]:
        unit = self.unit
        argv = engine_command(unit, at.host, at.port, resolve_model(unit), at.kv_events_port)
        if at.master is None:
            return argv
        return rank_command(argv, unit.engine, at.rank, unit.placement.nodes, *at.master)

    def env(self) -> dict[str, str]:
        return engine_env(self.unit)


def engine_spec(unit: ModelConfig) -> ProcessSpec:
    """An engine replica launched from its model config (``commands.launch_unit``)."""
    bootstrap = unit.engine_args.get("disaggregation_bootstrap_port")
    return ProcessSpec(
        unit.name,
        replica_bundles(unit),
        unit.startup_timeout_s,
        EngineCommand(unit),
        unit.placement.bundle_strategy,
        unit.launch.kv_events,
        bootstrap if isinstance(bootstrap, int) else None,
    )
