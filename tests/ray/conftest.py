"""A Ray cluster on this box for the Ray placement tests: a head node that runs nothing
of ours (num_cpus 0, as production heads are) and worker nodes with fake GPUs (Ray only
counts them and sets CUDA_VISIBLE_DEVICES). Node loss is detected in ~3 s instead of
Ray's ~15 s default. One cluster per test module; everything it writes is under one
temporary folder, removed at the end."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group_table

WORKER = {"num_cpus": 4, "num_gpus": 2}
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@contextlib.contextmanager
def local_cluster(workers: int = 2) -> Iterator[Cluster]:
    # Short: Ray's sockets live under it, and a Unix socket path has ~100 characters.
    # RAY_TMPDIR moves all of Ray's files there (sessions, the current-cluster file).
    temp = tempfile.mkdtemp(prefix="llmgw-ray-", dir="/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    os.makedirs(os.path.join(temp, "ray"))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS})
    try:
        for _ in range(workers):
            cluster.add_node(**WORKER)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        # A Ray process still exiting may write its (empty) session folder again.
        atexit.register(shutil.rmtree, temp, True)
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before


def ray_config(cluster: Cluster, namespace: str, models: list[dict[str, Any]],
               **extra: Any) -> dict[str, Any]:
    """A gateway config placing ``models`` on ``cluster`` in its own namespace."""
    return {"placement": {"backend": "ray", "address": cluster.address,
                          "namespace": namespace, **extra.pop("placement", {})},
            "health": {"interval_s": 0.5}, "models": models, **extra}


def settled(status: dict[str, Any]) -> bool:
    """Every launched pool has its target of ready, healthy replicas and none starting
    (on Ray, `llmgw up` serves before its replicas are all placed)."""
    return all(
        pool.get("target") is None or (not pool["starting"] and pool["target"] == sum(
            r["state"] == "ready" and r["healthy"] for r in pool["replicas"]))
        for model in status["models"].values() for pool in model["pools"].values())


def host_info(namespace: str, replica_id: str, rank: int = 0) -> dict[str, Any]:
    """What the actor holding a replica's engine process says of it (node, pid, GPUs)."""
    actor = ray.get_actor(f"llmgw/{replica_id}/rank{rank}", namespace=namespace)
    return ray.get(actor.info.remote(), timeout=30)  # type: ignore[no-any-return]


def actor_names(namespace: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == namespace)


def group_nodes(replica_id: str) -> list[str] | None:
    """The nodes a replica's placement group's bundles are on (None: no live group)."""
    for entry in placement_group_table().values():
        if entry["name"] == f"llmgw/{replica_id}" and entry["state"] != "REMOVED":
            return list(entry["bundles_to_node_id"].values())
    return None
