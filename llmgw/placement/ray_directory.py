"""Several gateways, one fleet on Ray: which of them owns it, and who its members are.

One detached actor per namespace (``llmgw/directory``) holds a lease and the member list.
The gateway holding the lease owns the fleet (it launches, scales, replaces and adopts
replicas) and renews the lease with its members every second; the others follow: they
route to the members the owner published and take the lease over when the owner stops
renewing it (``LEASE_S``). The actor holds nothing it cannot get back: if it is lost
with its node, Ray restarts it empty and the owner's next renewal refills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import ray

from llmgw.placement.ray_calls import result

DIRECTORY_NAME = "llmgw/directory"
# An owner that has not renewed for this long is gone; a follower takes over.
LEASE_S = 10.0
RENEW_S = 1.0


class FleetDirectory:
    """Runs as an async Ray actor; every method is a coroutine on its event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.owner: str | None = None
        self.expires = 0.0
        self.generation = 0
        self.members: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def claim(self, instance: str, members: list[dict[str, Any]] | None = None) -> bool:
        """Take or renew the lease; the owner's members come with each renewal."""
        now = self._clock()
        if self.owner not in (None, instance) and now < self.expires:
            return False
        self.owner, self.expires = instance, now + LEASE_S
        if members is not None and members != self.members:
            self.members = members
            self.generation += 1
            self._changed.set()
            self._changed = asyncio.Event()
        return True

    async def release(self, instance: str) -> None:
        """The owner stops cleanly: a follower takes over at its next claim, not after
        the lease runs out."""
        if self.owner == instance:
            self.owner, self.expires = None, 0.0

    async def watch(self, since: int, wait_s: float) -> tuple[int, list[dict[str, Any]],
                                                                str | None]:
        """(generation, members, owner) once the generation is past ``since``, or after
        ``wait_s`` as it is."""
        if self.generation <= since:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait_s)
        return self.generation, self.members, self.owner


class RayDirectory:
    """This gateway's view of the namespace's ``FleetDirectory`` actor (created by the
    first gateway to ask; detached, restarted by Ray if its node dies)."""

    def __init__(self, namespace: str, instance: str) -> None:
        self.instance = instance
        self._actor: Any = ray.remote(FleetDirectory).options(
            name=DIRECTORY_NAME, namespace=namespace, lifetime="detached",
            get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=-1,
        ).remote()

    async def claim(self, members: list[dict[str, object]] | None) -> bool:
        return bool(await result(self._actor.claim.remote(self.instance, members), 30))

    async def release(self) -> None:
        await result(self._actor.release.remote(self.instance), 10)

    async def watch(self, since: int, wait_s: float) -> tuple[int, list[dict[str, object]]]:
        generation, members, _ = await result(self._actor.watch.remote(since, wait_s),
                                               wait_s + 30)
        return generation, members
