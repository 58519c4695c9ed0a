"""The Ray launcher: every replica a placement group on a Ray cluster, one engine process
per bundle, each held by a detached, named actor (``ray_host.EngineHost``).

Control plane on Ray, data plane on HTTP: Ray places and supervises; the gateway talks
to the engines directly at ``http://<node ip>:<port>``. The gateway joins a running
cluster as a driver (``placement.address``), never starts one: engines outlive it, and
a gateway started later on the same namespace adopts them (``adoptable``).

- Placement: one group per replica, one bundle per engine process
  (``bundles.replica_bundles``), Ray's strategy for the bundles; replicas of one pool
  are spread over nodes with a soft target (the node that holds fewest of them). A group
  that does not fit waits ``placement_timeout_s`` (it is the demand a cluster
  autoscaler sees), then the start fails and the fleet retries with backoff; the
  resources it needed stay requested (``request_resources``) meanwhile.
- Failure: the gateway's HTTP health loop takes a dead engine out of rotation within a
  health interval; this launcher learns it from the actor (the engine exited, or the
  actor died with its node), frees the group and reports the replica lost: the fleet
  starts a replacement wherever the cluster has room.
- Stop: SIGTERM through the actor (the fleet drained the replica first), then the actor
  is killed (Ray kills its process group: the engine's children too) and the group
  removed. Detached actors and groups are never left behind by a stop.
- Tool workers: a second launcher, under its own name prefix (``TOOL_PREFIX``) and not
  detached, places them the same way (``launch_process``); they belong to the gateway's
  Ray job, so they go with the gateway, even when it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from llmgw.config import ModelConfig, PlacementConfig
from llmgw.placement.base import LaunchError, RunningReplica, Unplaced
from llmgw.placement.ray_calls import reason, result
from llmgw.placement.ray_directory import DIRECTORY_NAME, RayDirectory
from llmgw.placement.ray_host import EngineHost
from llmgw.placement.spec import ProcessSpec, engine_spec
from llmgw.types import ReplicaAddress, Role

log = logging.getLogger("llmgw.launcher")
ENGINE_PREFIX = "llmgw/"
# Tool workers' actors and groups: ``llmgw-tool/<gateway>/<worker>``; never adopted.
TOOL_PREFIX = "llmgw-tool/"
# An actor answers info() at once unless its node is gone; adoption waits this long.
_ADOPT_TIMEOUT_S = 30.0
_STOP_GRACE_S = 10.0
# Threads per actor: ready() or wait_exit() block one each; stop() and info() need others.
_ACTOR_THREADS = 8


def group_name(replica_id: str, prefix: str = ENGINE_PREFIX) -> str:
    return f"{prefix}{replica_id}"


def actor_name(replica_id: str, rank: int, prefix: str = ENGINE_PREFIX) -> str:
    return f"{prefix}{replica_id}/rank{rank}"


def parse_actor_name(name: str, prefix: str = ENGINE_PREFIX) -> tuple[str, int] | None:
    """(replica id, rank) of one of our actors; None for anything else in the namespace."""
    if not name.startswith(prefix) or "/rank" not in name:
        return None
    replica_id, _, rank = name[len(prefix):].rpartition("/rank")
    return (replica_id, int(rank)) if rank.isdigit() and replica_id else None


@dataclass(slots=True)
class RayReplica:
    replica_id: str
    model: str
    role: Role
    version: str
    group: PlacementGroup
    hosts: list[Any]  # actor handles, by rank
    infos: list[dict[str, Any]] = field(default_factory=list)
    supervisor: asyncio.Task[None] | None = None

    @property
    def node_ids(self) -> list[str]:
        return [info["node_id"] for info in self.infos]


# (launcher prefix, model or tool, role) -> the bundles its unplaced replica needs.
_UNPLACED: dict[tuple[str, str, Role], list[dict[str, float]]] = {}


class RayLauncher:
    """``prefix`` names its actors and groups (``ENGINE_PREFIX``, ``TOOL_PREFIX``);
    ``detached``: they outlive the gateway (engines) or go with its Ray job (tools)."""

    def __init__(self, settings: PlacementConfig, prefix: str = ENGINE_PREFIX,
                 detached: bool = True) -> None:
        self.settings, self.prefix = settings, prefix
        self._lifetime = "detached" if detached else None
        self.replicas: dict[str, RayReplica] = {}
        self.phases: dict[str, str] = {}
        self.on_restart: Callable[[str, str], None] = lambda model, replica_id: None
        self.on_lost: Callable[[str, str, str], None] = lambda model, replica_id, why: None
        self.on_phase: Callable[[str, str], None] = lambda replica_id, phase: None
        # Bundles of replicas that could not be placed: kept requested from the cluster
        # autoscaler until a replica of the same pool is placed. One record for every
        # launcher of this process (engines and tool workers): each autoscaler request
        # replaces the last, so it must always carry both launchers' needs.
        self._unplaced = _UNPLACED
        # Replicas being placed: (model, role, the node they were steered to).
        self._targets: dict[str, tuple[str, Role, str | None]] = {}
        self._choosing = asyncio.Lock()
        self._host = ray.remote(EngineHost)

    # --- the cluster ---------------------------------------------------------------

    async def connect(self) -> None:
        """Join the cluster as a driver (a second or less); raises LaunchError when it
        cannot be reached."""
        if ray.is_initialized():
            return
        try:
            await asyncio.to_thread(
                ray.init, address=self.settings.address, namespace=self.settings.namespace,
                log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise LaunchError(f"placement.address {self.settings.address!r}: cannot join the "
                              f"Ray cluster: {exc}") from None
        log.info("joined Ray cluster at %s (namespace %s): %s", self.settings.address,
                 self.settings.namespace, ray.cluster_resources())

    # --- launching -----------------------------------------------------------------

    def local_address(self) -> str:
        """This node's address, where processes on other nodes reach the gateway."""
        return str(ray.util.get_node_ip_address())

    async def launch(self, replica_id: str, unit: ModelConfig, *, role: Role = "mixed",
                     version: str = "") -> ReplicaAddress:
        return await self.launch_process(replica_id, engine_spec(unit), role=role,
                                         version=version)

    async def launch_process(self, replica_id: str, spec: ProcessSpec, *,
                             role: Role = "mixed", version: str = "") -> ReplicaAddress:
        bundles, strategy = spec.bundles, spec.strategy
        async with self._choosing:  # replicas started together see each other's choice
            target = await asyncio.to_thread(self._spread_target, spec.name, role, bundles) \
                if strategy == "STRICT_PACK" else None
            self._targets[replica_id] = (spec.name, role, target)
        log.debug("placing %s (%s) on node %s if it has room", replica_id, bundles, target)
        group = placement_group(bundles, strategy=strategy,
                                name=group_name(replica_id, self.prefix),
                                lifetime=self._lifetime, _soft_target_node_id=target)
        replica = RayReplica(replica_id, spec.name, role, version, group, [])
        try:
            await self._placed(replica, bundles)
            await self._start_hosts(replica, spec)
        except BaseException:
            self.phases.pop(replica_id, None)
            self._targets.pop(replica_id, None)
            await asyncio.shield(self._destroy(replica))
            raise
        self.phases.pop(replica_id, None)
        self._targets.pop(replica_id, None)
        if self._unplaced.pop((self.prefix, spec.name, role), None) is not None:
            # A standing request is a floor the cluster autoscaler keeps: lower it again.
            await asyncio.to_thread(self._request_unplaced)
        self.replicas[replica_id] = replica
        replica.supervisor = asyncio.create_task(self._supervise(replica),
                                                 name=f"supervise-{replica_id}")
        log.info("%s ready at %s (nodes %s)", replica_id, replica.infos[0]["url"],
                 ", ".join(info["node_ip"] for info in replica.infos))
        return self._address(replica)

    async def _placed(self, replica: RayReplica, bundles: list[dict[str, float]]) -> None:
        self._phase(replica.replica_id, f"placing {bundles}")
        timeout = self.settings.placement_timeout_s
        try:
            await result(replica.group.ready(), timeout)
        except TimeoutError:
            self._unplaced[(self.prefix, replica.model, replica.role)] = bundles
            await asyncio.to_thread(self._request_unplaced)
            available = await asyncio.to_thread(ray.available_resources)
            raise Unplaced(
                f"replica {replica.replica_id} could not be placed within {timeout:.0f}s: it "
                f"needs {bundles} ({replica.group.bundle_count} bundle(s)); the cluster has "
                f"{_rounded(available)} available") from None

    async def _start_hosts(self, replica: RayReplica, spec: ProcessSpec) -> None:
        """Rank 0 first (its node is the others' master address), then the others; all
        must be ready within the spec's startup timeout."""
        nodes, timeout_s = len(spec.bundles), spec.startup_timeout_s
        labels = {"model": replica.model, "role": replica.role, "version": replica.version,
                  "nodes": nodes}
        self._phase(replica.replica_id, "starting engine")
        try:
            replica.hosts.append(self._start_host(replica, spec, labels, 0, None))
            first = await result(replica.hosts[0].info.remote(), timeout_s)
            master = (first["master"][0], first["master"][1])
            replica.hosts += [self._start_host(replica, spec, labels, rank, master)
                              for rank in range(1, nodes)]
            replica.infos = list(await asyncio.gather(
                *(result(host.ready.remote(timeout_s), timeout_s + 30)
                  for host in replica.hosts)))
        except TimeoutError:
            raise LaunchError(f"engine {replica.replica_id} not ready after "
                              f"{timeout_s:.0f}s") from None
        except ray.exceptions.RayError as exc:
            raise LaunchError(reason(exc)) from None

    def _start_host(self, replica: RayReplica, spec: ProcessSpec, labels: dict[str, Any],
                    rank: int, master: tuple[str, int] | None) -> Any:
        bundle = spec.bundles[rank]
        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        return self._host.options(
            name=actor_name(replica.replica_id, rank, self.prefix),
            namespace=self.settings.namespace,
            lifetime=self._lifetime, max_restarts=0, max_task_retries=0,
            max_concurrency=_ACTOR_THREADS, num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0), resources=custom,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                replica.group, placement_group_bundle_index=rank),
        ).remote(replica.replica_id, spec, labels, rank, master)

    def _spread_target(self, model: str, role: Role,
                       bundles: list[dict[str, float]]) -> str | None:
        """The alive node that fits the bundle and holds fewest replicas of this pool (a
        soft hint: Ray places elsewhere when that node is full), as Ray Serve spreads
        replicas by default, so one node's loss takes as few of them as possible."""
        held: dict[str, int] = {}
        for replica in self.replicas.values():
            if (replica.model, replica.role) == (model, role):
                for node in replica.node_ids:
                    held[node] = held.get(node, 0) + 1
        for pool_model, pool_role, steered in self._targets.values():  # being placed now
            if (pool_model, pool_role) == (model, role) and steered is not None:
                held[steered] = held.get(steered, 0) + 1
        fits = [node["NodeID"] for node in ray.nodes() if node["Alive"]
                and all(node["Resources"].get(k, 0) >= v for k, v in bundles[0].items())]
        return min(fits, key=lambda node: (held.get(node, 0), node)) if fits else None

    def _request_unplaced(self) -> None:
        """Keep asking the cluster autoscaler for what is still missing (one call holds the
        whole request: each call replaces the previous one)."""
        from ray.autoscaler.sdk import request_resources

        wanted = [b for bundles in self._unplaced.values() for b in bundles]
        with contextlib.suppress(Exception):  # no autoscaler: nothing to tell
            request_resources(bundles=wanted)

    @staticmethod
    def _address(replica: RayReplica) -> ReplicaAddress:
        first = replica.infos[0]
        bootstrap = first.get("bootstrap_port")
        return ReplicaAddress(replica.replica_id, first["url"], first.get("kv_events"),
                              bootstrap if isinstance(bootstrap, int) else None)

    def phase(self, replica_id: str) -> str | None:
        """What a starting replica waits for: its placement, or its engine."""
        return self.phases.get(replica_id)

    def _phase(self, replica_id: str, phase: str) -> None:
        self.phases[replica_id] = phase
        self.on_phase(replica_id, phase)

    # --- supervision ---------------------------------------------------------------

    async def _supervise(self, replica: RayReplica) -> None:
        """Wait for any of the replica's engine processes to end (it exited, or its actor
        died with its node); then free the replica and report it lost."""
        waits = [asyncio.ensure_future(result(host.wait_exit.remote()))
                 for host in replica.hosts]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        ended = next(iter(done))
        error = ended.exception()
        why = f"engine exited with code {ended.result()}" if error is None \
            else f"its actor died: {reason(error)}"
        if self.replicas.pop(replica.replica_id, None) is None:
            return  # being stopped
        log.error("replica %s lost (%s)", replica.replica_id, why)
        await self._destroy(replica)
        self.on_lost(replica.model, replica.replica_id, why)

    # --- stopping ------------------------------------------------------------------

    async def stop(self, replica_id: str) -> None:
        replica = self.replicas.pop(replica_id, None)
        if replica is None:
            return
        if replica.supervisor is not None:
            replica.supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.supervisor
        stops = [result(host.stop.remote(_STOP_GRACE_S), _STOP_GRACE_S + 5)
                 for host in replica.hosts]
        await asyncio.gather(*stops, return_exceptions=True)
        await self._destroy(replica)

    async def _destroy(self, replica: RayReplica) -> None:
        await _remove(replica.hosts, lambda: replica.group)

    async def close(self) -> None:
        """Stop supervising; the engines keep serving (detached) for the next gateway."""
        for replica in self.replicas.values():
            if replica.supervisor is not None:
                replica.supervisor.cancel()
        self.replicas.clear()

    # --- adoption ------------------------------------------------------------------

    async def adoptable(self) -> list[RunningReplica]:
        """Every replica in the namespace whose engine processes all answer; a replica
        with a dead or missing rank, and a group without actors, is removed."""
        by_replica = await self._found()
        found = await asyncio.gather(*(self._adopt(replica_id, hosts)
                                       for replica_id, hosts in sorted(by_replica.items())))
        running = [r for r in found if r is not None]
        await asyncio.to_thread(self._remove_orphan_groups, {r.id for r in running})
        return running

    async def directory(self) -> RayDirectory:
        """The namespace's fleet directory, for gateways sharing the fleet."""
        instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return await asyncio.to_thread(RayDirectory, self.settings.namespace, instance)

    async def _found(self) -> dict[str, dict[int, Any]]:
        """Our actors in the namespace: replica id -> rank -> handle."""
        by_replica: dict[str, dict[int, Any]] = {}
        listed = await asyncio.to_thread(ray.util.list_named_actors, True)
        for name in (a["name"] for a in listed if a["namespace"] == self.settings.namespace):
            parsed = parse_actor_name(name, self.prefix)
            if parsed is None:
                continue
            with contextlib.suppress(ValueError):  # gone since it was listed
                handle = await asyncio.to_thread(ray.get_actor, name, self.settings.namespace)
                by_replica.setdefault(parsed[0], {})[parsed[1]] = handle
        return by_replica

    async def _adopt(self, replica_id: str, ranks: dict[int, Any]) -> RunningReplica | None:
        hosts = [ranks[rank] for rank in sorted(ranks)]
        try:
            infos = list(await asyncio.gather(
                *(result(host.ready.remote(_ADOPT_TIMEOUT_S), _ADOPT_TIMEOUT_S + 5)
                  for host in hosts)))
            group = await asyncio.to_thread(get_placement_group,
                                            group_name(replica_id, self.prefix))
        except (ray.exceptions.RayError, TimeoutError, ValueError) as exc:
            log.warning("replica %s found but not usable (%s); removing it", replica_id,
                        reason(exc))
            await self._destroy_found(replica_id, hosts)
            return None
        first = infos[0]
        nodes = first.get("nodes", 1)
        if sorted(ranks) != list(range(len(hosts))) or len(hosts) != nodes:
            log.warning("replica %s found with ranks %s of %d; removing it", replica_id,
                        sorted(ranks), nodes)
            await self._destroy_found(replica_id, hosts)
            return None
        replica = RayReplica(replica_id, first["model"], first["role"], first["version"],
                             group, hosts, infos)
        self.replicas[replica_id] = replica
        replica.supervisor = asyncio.create_task(self._supervise(replica),
                                                 name=f"supervise-{replica_id}")
        return RunningReplica(replica.model, replica.role, replica.version,
                              self._address(replica))

    async def remove_all(self) -> int:
        """Stop every replica in the namespace, healthy or not (``llmgw down``): the
        engines get SIGTERM and the grace period, then actors and groups go."""
        await self.close()  # nothing of ours is supervised any more: none is "lost"
        by_replica = {replica_id: list(ranks.values())
                      for replica_id, ranks in (await self._found()).items()}
        await asyncio.gather(*(result(host.stop.remote(_STOP_GRACE_S), _STOP_GRACE_S + 5)
                               for hosts in by_replica.values() for host in hosts),
                             return_exceptions=True)
        await asyncio.gather(*(self._destroy_found(replica_id, hosts)
                               for replica_id, hosts in by_replica.items()))
        await asyncio.to_thread(self._remove_orphan_groups, set())
        return len(by_replica)

    async def remove_directory(self) -> None:
        """The shared fleet's directory (``llmgw down``, after the replicas)."""
        with contextlib.suppress(ValueError):
            directory = await asyncio.to_thread(ray.get_actor, DIRECTORY_NAME,
                                                self.settings.namespace)
            await asyncio.to_thread(ray.kill, directory)

    async def _destroy_found(self, replica_id: str, hosts: list[Any]) -> None:
        await _remove(hosts, lambda: get_placement_group(group_name(replica_id, self.prefix)))

    def _remove_orphan_groups(self, adopted: set[str]) -> None:
        """Groups of ours with no replica (a gateway died while it placed one)."""
        for entry in placement_group_table().values():
            name = entry.get("name", "")
            if name.startswith(self.prefix) and entry.get("state") != "REMOVED" \
                    and name[len(self.prefix):] not in adopted:
                with contextlib.suppress(Exception):
                    remove_placement_group(get_placement_group(name))


async def _remove(hosts: list[Any], group: Callable[[], PlacementGroup]) -> None:
    """Kill a replica's actors (and with them every process they started) and remove its
    group; both outlive the gateway otherwise. Either may be gone already."""
    def remove() -> None:
        for host in hosts:
            with contextlib.suppress(Exception):
                ray.kill(host, no_restart=True)
        with contextlib.suppress(Exception):
            remove_placement_group(group())

    await asyncio.to_thread(remove)


def _rounded(resources: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(resources.items())
            if not k.startswith(("node:", "object_store_memory", "memory"))}
