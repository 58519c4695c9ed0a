"""The placement seam: where a replica's engine runs and who keeps it alive.

A launcher starts one replica at a time and reports where it serves; the fleet
(llmgw/fleet) decides how many run and hands them to the pool. Backends: ``local``
(child processes of the gateway, llmgw/placement/local.py) and ``ray`` (actors in
placement groups, llmgw/placement/ray_launcher.py).

A local engine that exits is restarted in place (``on_restart``). A backend that cannot
bring a replica back where it was (a Ray node died) reports it lost (``on_lost``): the
fleet takes it out of the pool and its reconciler starts a replacement wherever the
backend finds room, so the pool only ever sees replicas added and removed.

Engines may outlive the gateway (Ray's detached actors): ``adoptable`` lists the
replicas a backend finds running when the gateway starts, and ``close`` lets go of them
without stopping them; the local backend's engines are children of the gateway and stop
with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from llmgw.config import ModelConfig
from llmgw.placement.spec import ProcessSpec
from llmgw.types import ReplicaAddress, Role


class LaunchError(Exception):
    """An engine did not become ready; the message carries the tail of its log."""


class Unplaced(LaunchError):
    """The cluster had no room for a replica within the placement timeout: not the
    engine's fault, and not a reason to stop the gateway; the fleet keeps trying."""


@dataclass(frozen=True, slots=True)
class RunningReplica:
    """A replica a backend found already running (started by an earlier gateway)."""

    model: str
    role: Role
    version: str
    address: ReplicaAddress

    @property
    def id(self) -> str:
        return self.address.id


class Launcher(Protocol):
    # (model, replica id): the engine was restarted in place (same address).
    on_restart: Callable[[str, str], None]
    # (model, replica id, why): the replica is gone for good; its resources are freed.
    on_lost: Callable[[str, str, str], None]
    # (replica id, phase): what a starting replica does now, as ``phase`` says it
    # (`llmgw up` shows each change).
    on_phase: Callable[[str, str], None]

    async def launch(self, replica_id: str, unit: ModelConfig, *, role: Role,
                     version: str) -> ReplicaAddress:
        """Start the engine ``unit`` describes (one replica's model config, see
        ``placement.commands.launch_unit``); return once it answers its health route.
        ``role`` and ``version`` label it, so a later gateway can adopt it. Raises
        LaunchError (with the engine's log tail) when it does not start."""
        ...

    async def stop(self, replica_id: str) -> None:
        """Stop one replica's engine and everything it started; idempotent."""
        ...

    async def adoptable(self) -> list[RunningReplica]:
        """Replicas running from an earlier gateway, healthy; the fleet adopts or stops
        each (``stop``). Broken leftovers are cleaned up here, not returned."""
        ...

    async def close(self) -> None:
        """The gateway exits: stop the engines that cannot outlive it, let go of the
        others (a later gateway adopts them)."""
        ...

    def phase(self, replica_id: str) -> str | None:
        """What a starting replica waits for (shown in the fleet's status)."""
        ...


class ProcessLauncher(Protocol):
    """What starts any process (``spec.ProcessSpec``): tool workers are launched through
    it as engines are, by a launcher of their own (its callbacks are the tool set's)."""

    on_restart: Callable[[str, str], None]
    on_lost: Callable[[str, str, str], None]

    async def launch_process(self, replica_id: str, spec: ProcessSpec, *,
                             role: Role = "mixed", version: str = "") -> ReplicaAddress:
        """As ``Launcher.launch``, for any process."""
        ...

    async def stop(self, replica_id: str) -> None: ...

    async def close(self) -> None: ...

    def local_address(self) -> str:
        """Where the processes it starts reach this gateway's host: loopback for local
        children, this node's address on a Ray cluster."""
        ...


class Directory(Protocol):
    """Where gateways sharing one fleet agree on its owner and its members (the Ray
    backend's ``ray_directory``). Members are plain dicts (``fleet.sharing.member``)."""

    async def claim(self, members: list[dict[str, object]] | None) -> bool:
        """Take or renew ownership, publishing ``members``; False: another owns it."""
        ...

    async def release(self) -> None:
        ...

    async def watch(self, since: int, wait_s: float) -> tuple[int, list[dict[str, object]]]:
        """(generation, members) once newer than ``since``, or after ``wait_s``."""
        ...
