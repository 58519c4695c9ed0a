"""Filters: drop replicas that must not take a request. Health is a builtin (the pool
hands policies healthy replicas only); these are the optional ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmgw.types import ReplicaView, RequestContext


class CapacityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_load: int = Field(ge=1)


class HasCapacityFilter:
    """Replicas holding fewer than ``max_load`` requests (gateway in-flight + engine
    queue). When all are full, all are kept: queueing somewhere beats refusing."""

    type_name: ClassVar[str] = "has-capacity"
    Params: ClassVar[type[CapacityParams]] = CapacityParams

    def __init__(self, params: CapacityParams) -> None:
        self.max_load = params.max_load

    def filter(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        free = [r for r in replicas if r.load < self.max_load]
        return free or list(replicas)


class RoleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["mixed", "prefill", "decode"]


class RoleFilter:
    """Replicas of one role (prefill / decode / mixed), for disaggregated serving."""

    type_name: ClassVar[str] = "role"
    Params: ClassVar[type[RoleParams]] = RoleParams

    def __init__(self, params: RoleParams) -> None:
        self.role = params.role

    def filter(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        return [r for r in replicas if r.role == self.role]
