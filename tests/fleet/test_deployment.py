"""The deployment reconciler, in process, with launches that take effect when the test
says so: targets move up and down, a rollout never serves with fewer than the target, old
versions drain first, a failed start is retried with backoff."""

from __future__ import annotations

import asyncio

from llmgw.config import ModelConfig, RolloutConfig
from llmgw.fleet.deployment import Deployment
from llmgw.metrics import Metrics, ReplicaMetrics
from llmgw.pool import Replica, ReplicaPool
from tests.fleet.test_membership import unreachable

MODEL = ModelConfig(name="m", engine="fake", model="fake", replicas=1)


class ScriptedHands:
    """Launches finish when ``finish()`` lets them (one engine start each); retiring
    removes the replica from the pool, as the fleet's own hands do."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool, self.metrics = pool, Metrics()
        self.pending: list[tuple[asyncio.Future[None], Deployment, str]] = []
        self.fail_next = 0
        self.retired: list[str] = []

    async def launch(self, deployment: Deployment, replica_id: str, ordinal: int) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("engine exited with code 1")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((done, deployment, replica_id))
        await done
        engine = unreachable(f"http://127.0.0.1:9/{replica_id}")
        replica = Replica(replica_id, deployment.model, engine,
                          ReplicaMetrics(self.metrics, deployment.model, replica_id, "p"),
                          version=deployment.version)
        replica.set_health(True)
        self.pool.add(replica)

    async def retire(self, replica: Replica) -> None:
        self.retired.append(replica.id)
        self.pool.remove(replica.id)

    async def finish(self) -> None:
        """Let every launch under way complete, then the tasks that follow run."""
        await settle()  # launches just asked for reach their engine start
        for done, _, _ in self.pending:
            done.set_result(None)
        self.pending.clear()
        await settle()


async def settle() -> None:
    """A few turns of the loop: tasks started by ``reconcile`` run until they block."""
    for _ in range(5):
        await asyncio.sleep(0)


def setup(target: int = 1, surge: int = 1) -> tuple[Deployment, ReplicaPool, ScriptedHands,
                                                      list[float]]:
    pool = ReplicaPool(interval_s=1, stats_interval_s=1)
    hands = ScriptedHands(pool)
    now = [0.0]
    deployment = Deployment(MODEL, "mixed", "v1", target,
                            RolloutConfig(max_surge=surge, drain_timeout_s=5), pool, hands,
                            clock=lambda: now[0])
    return deployment, pool, hands, now


def ready(pool: ReplicaPool) -> list[str]:
    return sorted(r.id for r in pool.replicas("m") if r.state == "ready")


def test_scales_up_and_down_to_the_target() -> None:
    async def run() -> None:
        deployment, pool, hands, _ = setup(target=1)
        deployment.reconcile()
        await hands.finish()
        assert ready(pool) == ["m-0"] and deployment.settled()
        deployment.target = 3
        deployment.reconcile()
        deployment.reconcile()  # idempotent: starting ones count
        await settle()
        assert len(hands.pending) == 2
        await hands.finish()
        assert ready(pool) == ["m-0", "m-1", "m-2"]
        pool.get("m-0").acquire()  # busy: the idle, newest ones leave first
        deployment.target = 1
        deployment.reconcile()
        await settle()
        assert hands.retired == ["m-2", "m-1"] and ready(pool) == ["m-0"]

    asyncio.run(run())


def test_a_rollout_keeps_the_target_serving_and_drains_old_versions() -> None:
    async def run() -> None:
        deployment, pool, hands, _ = setup(target=2, surge=1)
        deployment.reconcile()
        await hands.finish()
        assert ready(pool) == ["m-0", "m-1"]
        deployment.version = "v2"
        serving: list[int] = []
        for _ in range(6):
            deployment.reconcile()
            await settle()
            serving.append(len(ready(pool)))
            assert len(hands.pending) <= 1  # max_surge
            await hands.finish()
            serving.append(len(ready(pool)))
        assert min(serving) >= 2
        assert {r.version for r in pool.replicas("m")} == {"v2"}
        assert sorted(hands.retired) == ["m-0", "m-1"] and deployment.settled()

    asyncio.run(run())


def test_a_failed_start_is_retried_after_a_backoff() -> None:
    async def run() -> None:
        deployment, pool, hands, now = setup(target=1)
        hands.fail_next = 1
        deployment.reconcile()
        await settle()
        assert deployment.last_error == "engine exited with code 1" and ready(pool) == []
        deployment.reconcile()  # within the backoff: nothing new
        await settle()
        assert hands.pending == []
        now[0] += 1.5
        deployment.reconcile()
        await hands.finish()
        assert ready(pool) == ["m-1"] and deployment.last_error is None

    asyncio.run(run())
