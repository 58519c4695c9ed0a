"""Resilience settings: passive outlier ejection (``health.outlier``) and the retry
budget (``models[].retry_budget``). What they do is in README, "Resilience"."""

from __future__ import annotations

from pydantic import Field, model_validator

from llmgw.config.base import _Strict


class OutlierConfig(_Strict):
    """Envoy's outlier detection, passive: requests themselves are the probes.

    ``consecutive_failures`` failures in a row (connect errors, engine 5xx, timeouts to
    the first byte) eject a replica for ``base_ejection_s`` times its number of
    ejections, at most ``max_ejection_s``; then it is half-open (one trial request, or a
    good health check, decides). At most ``max_ejected_percent`` of a model's replicas
    are out at once (rounded down: a model's only replica is never ejected)."""

    consecutive_failures: int = Field(default=5, ge=1, le=1000)
    base_ejection_s: float = Field(default=5.0, gt=0)
    max_ejection_s: float = Field(default=60.0, gt=0)
    max_ejected_percent: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _cap_above_base(self) -> OutlierConfig:
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError(f"max_ejection_s ({self.max_ejection_s:g}) is below "
                             f"base_ejection_s ({self.base_ejection_s:g})")
        return self


class RetryBudgetConfig(_Strict):
    """Retries (attempts after a request's first) per model over a sliding window: at
    most ``min_retries + ratio x requests`` in the last ``window_s`` seconds. The ratio
    keeps a failing fleet from being hit by a retry storm; ``min_retries`` lets a model
    with little traffic still retry."""

    ratio: float = Field(default=0.2, ge=0, le=1)
    min_retries: int = Field(default=10, ge=0)
    window_s: float = Field(default=10.0, gt=0)
