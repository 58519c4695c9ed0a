"""What a launcher runs: a process spec. Engines and tool workers are both processes
that serve HTTP on a port picked where they run, answer a health route, and ask a Ray
cluster for resources; both launchers (local, Ray) start any ``ProcessSpec`` the same
way, so a tool worker is placed, supervised and stopped as an engine replica is.

A spec is plain, picklable data: the Ray launcher ships it to the actor on the node the
process runs on, where ``command`` and ``env`` are evaluated (the node's Python, its
environment, its address and ports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmgw.config import ModelConfig, Strategy
from llmgw.placement.bundles import rank_command, replica_bundles
from llmgw.placement.commands import engine_command, engine_env, resolve_model

HEALTH_PATH = "/health"


class ProcessSpec(Protocol):
    """One replica's process(es): one per bundle, rank 0 serving HTTP."""

    @property
    def name(self) -> str:
        """What the replica serves (a model, a tool deployment): its launcher's label."""
        ...

    @property
    def startup_timeout_s(self) -> float: ...

    @property
    def health_path(self) -> str:
        """Answers 200 once the process serves."""
        ...

    @property
    def bundles(self) -> list[dict[str, float]]:
        """What each process asks a Ray cluster for, by rank (the local launcher runs
        rank 0 only)."""
        ...

    @property
    def strategy(self) -> Strategy: ...

    @property
    def kv_events(self) -> bool:
        """Rank 0 publishes KV cache events on a port of its own."""
        ...

    @property
    def bootstrap_port(self) -> int | None:
        """SGLang's disaggregation bootstrap port, as the config sets it."""
        ...

    def command(
        self,
        host: str,
        port: int,
        kv_events_port: int | None = None,
        rank: int = 0,
        master: tuple[str, int] | None = None,
    ) -> list[str]:
        """The argv serving on ``host:port``; ``master``: rank 0's address when the replica
        spans nodes (None: one process). May do disk work (the demo model)."""
        ...

    def env(self) -> dict[str, str]:
        """The process's environment, made where it runs."""
        ...


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """An engine replica launched from its model config (``commands.launch_unit``)."""

    unit: ModelConfig
    health_path: str = HEALTH_PATH

    @property
    def name(self) -> str:
        return self.unit.name

    @property
    def startup_timeout_s(self) -> float:
        return self.unit.startup_timeout_s

    @property
    def bundles(self) -> list[dict[str, float]]:
        return replica_bundles(self.unit)

    @property
    def strategy(self) -> Strategy:
        return self.unit.placement.bundle_strategy

    @property
    def kv_events(self) -> bool:
        return self.unit.launch.kv_events

    @property
    def bootstrap_port(self) -> int | None:
        port = self.unit.engine_args.get("disaggregation_bootstrap_port")
        return port if isinstance(port, int) else None

    def command(
        self,
        host: str,
        port: int,
        kv_events_port: int | None = None,
        rank: int = 0,
        master: tuple[str, int] | None = None,
    ) -> list[str]:
        argv = engine_command(self.unit, host, port, resolve_model(self.unit), kv_events_port)
        if master is None:
            return argv
        return rank_command(argv, self.unit.engine, rank, self.unit.placement.nodes, *master)

    def env(self) -> dict[str, str]:
        return engine_env(self.unit)
