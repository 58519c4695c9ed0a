"""One pool of launched replicas (a model, or one prefill / decode pool of it), kept at a
target count of the config's version by a reconciler, as a Kubernetes Deployment is.

``reconcile()`` compares what runs with what is wanted and starts or drains the
difference; it is called on every control tick and after every change, and is cheap and
idempotent: starts and drains run as tasks, and a tick finds them in the census.

- Fewer current-version replicas than the target (ready + starting): start more; while
  old-version replicas still run, at most ``max_surge`` above the target at once.
- More replicas than the target: drain the surplus, old versions first, then the least
  busy. A rollout is the two together: a new replica starts, becomes ready, and one old
  replica drains; so the pool never serves with fewer than ``target`` replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from llmgw.config import ModelConfig
from llmgw.config.autoscaling import RolloutConfig
from llmgw.placement.base import Unplaced
from llmgw.pool import Replica, ReplicaPool
from llmgw.types import Role

log = logging.getLogger("llmgw.fleet")
_RETRY_FIRST_S, _RETRY_MAX_S = 1.0, 30.0


class Hands(Protocol):
    """What a deployment cannot do itself: launching and stopping engines."""

    async def launch(self, deployment: Deployment, replica_id: str, ordinal: int) -> None:
        """Launch a replica and hand it to the pool ready; raise when it cannot start."""
        ...

    async def retire(self, replica: Replica) -> None:
        """Remove a drained replica from the pool and stop its engine."""
        ...


@dataclass(frozen=True, slots=True)
class Census:
    current: list[Replica]  # ready members of the wanted version
    old: list[Replica]  # ready members of another version
    starting: int
    draining: int

    @property
    def serving(self) -> int:
        return len(self.current) + len(self.old)


class Deployment:
    """Used from the event loop only."""

    def __init__(self, spec: ModelConfig, role: Role, version: str, target: int,
                 rollout: RolloutConfig, pool: ReplicaPool, hands: Hands,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # The model config the pool's replicas are launched from; the fleet keeps it
        # current across reloads, and ``version`` says what a new replica runs.
        self.spec = spec
        self.model, self.role, self.version = spec.name, role, version
        self.target = target
        self.rollout = rollout
        self._pool, self._hands, self._clock = pool, hands, clock
        self._ordinal = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining: set[str] = set()
        self._failures = 0
        self._retry_at = 0.0
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.model if self.role == "mixed" else f"{self.model}/{self.role}"

    def census(self) -> Census:
        members = [r for r in self._pool.replicas(self.model)
                   if r.role == self.role and r.state == "ready"]
        pending = [p for p in self._pool.pending(self.model) if p.role == self.role]
        return Census([r for r in members if r.version == self.version],
                      [r for r in members if r.version != self.version],
                      len(pending), len(self._draining))

    def settled(self) -> bool:
        c = self.census()
        return not c.old and not c.starting and not c.draining \
            and len(c.current) == self.target

    def reconcile(self) -> None:
        census = self.census()
        surge = self.rollout.max_surge if census.old else 0
        room = self.target + surge - census.serving - census.starting
        missing = self.target - len(census.current) - census.starting
        if min(room, missing) > 0 and self._clock() >= self._retry_at:
            for _ in range(min(room, missing)):
                self._spawn(self._start_one(*self._reserve()))
        surplus = census.serving - self.target
        if surplus > 0:
            for replica in self._victims(census)[:surplus]:
                self._draining.add(replica.id)
                replica.state = "draining"  # out of rotation now, not at the next tick
                self._spawn(self._retire(replica))

    def _victims(self, census: Census) -> list[Replica]:
        """Old versions first; then the least busy (drains soonest), newest first."""
        old = sorted(census.old, key=lambda r: r.in_flight)
        current = sorted(census.current, key=lambda r: (r.in_flight, -_ordinal_of(r.id)))
        return old + current

    def adopt(self, replica_ids: list[str]) -> None:
        """Replicas an earlier gateway started (now members of the pool): new ones are
        numbered after them."""
        for replica_id in replica_ids:
            self._ordinal = max(self._ordinal, _ordinal_of(replica_id) + 1)

    async def launch_initial(self) -> None:
        """The pool's first replicas (``target``, less those adopted), all at once; raises
        the first failure (the others are stopped), so a gateway never starts serving part
        of a pool. A replica the cluster has no room for yet (``Unplaced``) is not a
        failure: the pool starts without it and keeps trying."""
        missing = self.target - len(self.census().current)
        results = await asyncio.gather(
            *(self._launch(*self._reserve()) for _ in range(max(0, missing))),
            return_exceptions=True)
        unplaced = [r for r in results if isinstance(r, Unplaced)]
        if unplaced:
            self._backoff(unplaced[0])
        failure = next((r for r in results if isinstance(r, BaseException)
                        and not isinstance(r, Unplaced)), None)
        if failure is not None:
            for replica in self._pool.replicas(self.model):
                if replica.role == self.role:
                    await self._hands.retire(replica)
            raise failure

    def _reserve(self) -> tuple[str, int]:
        """The next replica's id, counted as starting at once (before its task runs), so
        a reconcile right after this one does not start another in its place."""
        ordinal = self._ordinal
        self._ordinal += 1
        replica_id = replica_id_of(self.model, self.role, ordinal)
        self._pool.starting(self.model, replica_id, self.role, self.version)
        return replica_id, ordinal

    async def _launch(self, replica_id: str, ordinal: int) -> None:
        try:
            await self._hands.launch(self, replica_id, ordinal)
        except BaseException:
            self._pool.start_failed(replica_id)
            raise

    async def _start_one(self, replica_id: str, ordinal: int) -> None:
        try:
            await self._launch(replica_id, ordinal)
        except Exception as exc:  # a failed launch is retried with backoff, never fatal
            self._backoff(exc)
            return
        self._failures = 0
        self.last_error = None

    def _backoff(self, exc: Exception) -> None:
        self._failures += 1
        delay = min(_RETRY_FIRST_S * 2 ** (self._failures - 1), _RETRY_MAX_S)
        self._retry_at = self._clock() + delay
        self.last_error = str(exc)
        log.error("%s: a replica did not start (retry in %.0fs): %s", self.name, delay, exc)

    async def _retire(self, replica: Replica) -> None:
        try:
            await self._pool.drain(replica.id, self.rollout.drain_timeout_s)
            await self._hands.retire(replica)
        except Exception:  # the replica is out of rotation either way; say what failed
            log.exception("stopping replica %s failed", replica.id)
        finally:
            self._draining.discard(replica.id)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def replica_id_of(model: str, role: Role, ordinal: int) -> str:
    """``demo-0``; a disaggregated model's ``demo-prefill-0``."""
    return f"{model}-{ordinal}" if role == "mixed" else f"{model}-{role}-{ordinal}"


def _ordinal_of(replica_id: str) -> int:
    tail = replica_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
