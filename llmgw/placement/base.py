"""The placement seam: where a replica's engine runs and who keeps it alive.

A launcher starts one replica at a time and reports where it serves; the fleet
(llmgw/fleet) decides how many run and hands them to the pool. Backends: ``local``
(child processes of the gateway, llmgw/placement/local.py) and, later, ``ray``
(actors in placement groups). A backend that restarts an engine on another address (a
Ray actor placed again after its node died) reports it through ``on_moved``; the fleet
then replaces the member, so the pool takes add/remove events, never a fixed list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from llmgw.config import ModelConfig
from llmgw.types import ReplicaAddress


class LaunchError(Exception):
    """An engine did not become ready; the message carries the tail of its log."""


class Launcher(Protocol):
    # (model, replica id): the engine was restarted in place (same address).
    on_restart: Callable[[str, str], None]
    # (model, old replica id, new address): the engine came back elsewhere.
    on_moved: Callable[[str, str, ReplicaAddress], None]

    async def launch(self, replica_id: str, unit: ModelConfig) -> ReplicaAddress:
        """Start the engine ``unit`` describes (one replica's model config, see
        ``placement.commands.launch_unit``); return once it answers its health route.
        Raises LaunchError (with the engine's log tail) when it does not."""
        ...

    async def stop(self, replica_id: str) -> None:
        """Stop one replica's engine and everything it started; idempotent."""
        ...

    async def stop_all(self) -> None:
        ...
