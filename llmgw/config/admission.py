"""A model's ``admission:``: how many requests its replicas take at once before new ones
wait at the gateway, where they are ordered by priority and shared fairly across keys."""

from __future__ import annotations

from pydantic import Field

from llmgw.config.base import _Strict


class AdmissionConfig(_Strict):
    # Requests at once per routable replica; past replicas x this, requests queue here
    # (interactive before batch, keys by weight) instead of in the engines.
    max_in_flight_per_replica: int = Field(ge=1, le=100_000)
    # Waiting requests; past it the lowest priority, most recent waiter is shed (503).
    max_queued: int = Field(default=256, ge=0)
    # A request waiting longer gets 503 with Retry-After.
    queue_timeout_s: float = Field(default=30.0, gt=0)
