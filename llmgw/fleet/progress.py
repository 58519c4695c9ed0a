"""Replicas starting, as they go: each launch's phase (``starting``; a backend's own
steps: ``loading`` for a local engine, ``placing [...]`` and ``starting engine`` on Ray),
then ``ready`` or ``failed`` with how long it took and, for a failure, the engine's
message and log tail. ``llmgw up`` shows them while its engines come up
(llmgw/console.py); ``GET /admin/status`` shows the phase of each starting replica."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from llmgw.types import Role


@dataclass(slots=True)
class ReplicaStart:
    id: str
    model: str
    role: Role
    started: float  # the fleet's clock when the launch began
    phase: str = "starting"
    seconds: float | None = None  # from the launch to ready, or to the failure
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.phase in ("ready", "failed")


Listener = Callable[[ReplicaStart], None]


class StartupProgress:
    """Launches under way (``starting``), told to ``listeners`` at each change; a launch
    that ended is told once more (ready or failed) and forgotten. Event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.starting: dict[str, ReplicaStart] = {}
        self.listeners: list[Listener] = []
        self._clock = clock

    def launching(self, model: str, role: Role, replica_id: str) -> None:
        entry = self.starting[replica_id] = ReplicaStart(replica_id, model, role,
                                                         self._clock())
        self._tell(entry)

    def phase(self, replica_id: str, phase: str) -> None:
        """A backend's step (its launcher's ``on_phase``); ignored for a replica not
        starting (a local engine restarted in place)."""
        entry = self.starting.get(replica_id)
        if entry is not None and entry.phase != phase:
            entry.phase = phase
            self._tell(entry)

    def ready(self, replica_id: str) -> None:
        self._end(replica_id, "ready", None)

    def failed(self, replica_id: str, error: str) -> None:
        self._end(replica_id, "failed", error)

    def _end(self, replica_id: str, phase: str, error: str | None) -> None:
        entry = self.starting.pop(replica_id, None)
        if entry is None:
            return
        entry.phase, entry.error = phase, error
        entry.seconds = self._clock() - entry.started
        self._tell(entry)

    def _tell(self, entry: ReplicaStart) -> None:
        for listener in list(self.listeners):
            listener(entry)
