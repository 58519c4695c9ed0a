"""A model's ``lora:`` section: its adapters and how they are multiplexed over replicas."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from llmgw.config.base import _Strict, first_duplicate

DEMO_SOURCE = "demo"
# Demo adapters are built offline on first start, demo-lora-0 up to the highest N named,
# so N is bounded: demo-lora-100000 would build 100 001 adapter directories.
DEMO_ADAPTERS = 64
_DEMO_NAME = re.compile(r"^demo-lora-(0|[1-9][0-9]*)$")


def demo_adapter_index(name: str) -> int | None:
    """N of an adapter named ``demo-lora-N`` (N in 0..DEMO_ADAPTERS-1), else None."""
    match = _DEMO_NAME.match(name)
    index = int(match.group(1)) if match else None
    return index if index is not None and index < DEMO_ADAPTERS else None


class AdapterConfig(_Strict):
    """One LoRA adapter of a base model. ``source``: a local directory in PEFT format, a
    hub id (for users with hub access; the engine fetches it), or ``demo`` for the
    built-in demo adapter of that name (``demo-lora-N``, built offline)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _demo_is_named(self) -> AdapterConfig:
        if self.source == DEMO_SOURCE and demo_adapter_index(self.name) is None:
            raise ValueError(f"adapter {self.name!r}: source 'demo' needs a name demo-lora-N "
                             f"with N in 0..{DEMO_ADAPTERS - 1}")
        return self


class HotnessConfig(_Strict):
    """Pre-loading hot adapters on more replicas before requests queue behind a load."""

    enabled: bool = True
    interval_s: float = Field(default=2.0, gt=0)
    # An adapter is hot above this many requests/s (moving average over `window_s`);
    # it should then be resident on 1 + rate // hot_rate replicas.
    hot_rate: float = Field(default=2.0, gt=0)
    window_s: float = Field(default=30.0, gt=0)


class LoraConfig(_Strict):
    """LoRA multiplexing over this model's replicas."""

    adapters: list[AdapterConfig] = Field(default_factory=list)
    # Adapters each replica holds at once (the engine's --max-loras); the gateway evicts
    # the coldest idle one to load another.
    max_adapters_per_replica: int = Field(default=4, ge=1, le=256)
    max_rank: int = Field(default=16, ge=1)
    # Directories that adapters registered at runtime (admin API) must lie under.
    roots: list[str] = Field(default_factory=list)
    # A failed load is not retried for this long (the request gets the error at once).
    failure_cooldown_s: float = Field(default=30.0, ge=0)
    load_timeout_s: float = Field(default=120.0, gt=0)
    hotness: HotnessConfig = HotnessConfig()

    @field_validator("adapters")
    @classmethod
    def _unique_names(cls, value: list[AdapterConfig]) -> list[AdapterConfig]:
        duplicate = first_duplicate([a.name for a in value])
        if duplicate is not None:
            raise ValueError(f"adapter {duplicate!r} is declared twice")
        return value
