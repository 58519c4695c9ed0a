"""Where engines run: the top-level ``placement:`` (which backend) and each model's
``placement:`` (what one replica needs from a Ray cluster).

The ``local`` backend starts engines as child processes of the gateway and ignores a
model's ``placement:``, so one YAML serves a laptop and a cluster. The ``ray`` backend
gives every replica a placement group with one bundle per engine process (one per node
it spans) and starts each process from an actor in its bundle.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmgw.config.base import _Strict

Strategy = Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"]
# Ray's namespace names: what `ray.init(namespace=...)` accepts and a Kubernetes label can hold.
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class PlacementConfig(_Strict):
    """The top-level ``placement:`` section."""

    backend: Literal["local", "ray"] = "local"
    # The Ray cluster to join: "auto" (the cluster `ray start` runs on this node),
    # "HOST:PORT" (its GCS) or "ray://HOST:PORT" (Ray Client). The gateway joins as a
    # driver and never starts a cluster of its own: engines must outlive the gateway.
    address: str = "auto"
    # Every replica's actors and placement groups are named in this Ray namespace; a
    # gateway started on the same namespace adopts the replicas it finds there.
    namespace: str = "llmgw"
    # How long a replica may wait for its placement group (resources the cluster does not
    # have yet) before its start counts as failed; it is retried with backoff, and the
    # waiting group is the demand a cluster autoscaler (KubeRay) turns into nodes.
    placement_timeout_s: float = Field(default=300.0, gt=0)

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_name(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError("must be 1-63 letters, digits, '_', '.' or '-', starting with a "
                             "letter or digit")
        return value

    @field_validator("address")
    @classmethod
    def _address_is_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be 'auto', HOST:PORT or ray://HOST:PORT")
        return value


class ProcessResources(_Strict):
    """What one process asks a Ray cluster for: a tool's ``placement:``, and the part of a
    model's ``placement:`` that each of its engine processes gets."""

    # GPUs per replica, over all its nodes; default: tensor x pipeline parallel size for
    # vLLM and SGLang (0 for the CPU engines and tool workers; set 0 for a CPU build of
    # vLLM). Below 1, a fraction of one GPU (small models sharing a GPU).
    gpus: float | None = Field(default=None, ge=0)
    # CPUs per process; Ray sets the process's OMP_NUM_THREADS to it.
    cpus: float = Field(default=1.0, gt=0)
    # Only nodes with this accelerator (Ray's accelerator_type, e.g. "H100", "L4").
    accelerator_type: str | None = Field(default=None, min_length=1)
    # Custom Ray resources per process, e.g. {"fast_disk": 1}.
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _custom_resources_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{name!r} has its own key (cpus, gpus); resources are "
                                 "custom ones")
            if amount <= 0:
                raise ValueError(f"{name!r}: amounts must be positive, got {amount}")
        return value


class ReplicaPlacementConfig(ProcessResources):
    """A model's ``placement:``: what each replica asks the Ray cluster for."""

    # Engine processes per replica, one per node: a model too large for one node (vLLM
    # --nnodes/--node-rank, SGLang --nnodes/--node-rank), GPUs split evenly between them.
    nodes: int = Field(default=1, ge=1, le=64)
    # How a replica's bundles (one per engine process) are placed, as Ray places a
    # placement group's bundles; default STRICT_PACK for one node, STRICT_SPREAD (one
    # process per node) for several. Replicas of one pool are spread over nodes either way.
    strategy: Strategy | None = None

    @property
    def bundle_strategy(self) -> Strategy:
        if self.strategy is not None:
            return self.strategy
        return "STRICT_PACK" if self.nodes == 1 else "STRICT_SPREAD"

    @model_validator(mode="after")
    def _gpus_split_over_nodes(self) -> ReplicaPlacementConfig:
        if self.gpus is None or self.nodes == 1:
            return self
        per_node = self.gpus / self.nodes
        if per_node != int(per_node):
            raise ValueError(f"gpus ({self.gpus:g}) must split evenly over nodes "
                             f"({self.nodes}): each node's engine process takes whole GPUs")
        return self
