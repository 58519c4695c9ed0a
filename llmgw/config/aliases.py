"""``aliases:``: a served name over several models with weights (a canary, a traffic
split). A conversation stays on one target: the pick is sticky per session key."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmgw.config.base import _Strict, first_duplicate


class AliasTarget(_Strict):
    model: str = Field(min_length=1)
    weight: float = Field(ge=0)


class AliasConfig(_Strict):
    name: str = Field(min_length=1)
    targets: list[AliasTarget] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _weights(cls, targets: list[AliasTarget]) -> list[AliasTarget]:
        duplicate = first_duplicate([t.model for t in targets])
        if duplicate is not None:
            raise ValueError(f"target {duplicate!r} is listed twice")
        if sum(t.weight for t in targets) <= 0:
            raise ValueError("the weights add up to 0: at least one target needs weight")
        return targets
