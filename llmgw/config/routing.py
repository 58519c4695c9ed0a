"""The ``policies:`` section: named routing pipelines of filters and scorers."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmgw.config.base import _Strict


class PluginSpec(_Strict):
    """A filter or scorer by registry name; ``params`` are checked by the plugin itself."""

    type: str
    weight: float = Field(default=1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class LoadGuardConfig(_Strict):
    """Affinity yields to load when the busiest replica holds more than ``abs_threshold``
    requests above the idlest and more than ``rel_threshold`` times its load."""

    abs_threshold: int = Field(default=8, ge=0)
    rel_threshold: float = Field(default=1.5, ge=1.0)


class PolicyConfig(_Strict):
    filters: list[PluginSpec] = Field(default_factory=list)
    scorers: list[PluginSpec] = Field(min_length=1)
    load_guard: LoadGuardConfig | None = LoadGuardConfig()
    # The least share of its configured weight a replica's cache affinity keeps when the
    # engine reports fewer cached tokens than the prefix index predicted there (evicted
    # what the index remembers): routing leans toward load instead. 1 turns it off.
    cache_trust_floor: float = Field(default=0.5, ge=0, le=1)
