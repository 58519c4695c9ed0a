"""``autoscaling:`` and ``rollout:`` of a model (or of one prefill / decode pool).

The autoscaling knobs carry Ray Serve's names and meaning (``AutoscalingConfig``), so a
Ray Serve user's settings map 1:1; llmgw/fleet/autoscale.py says how they are applied.
Defaults differ where Ray Serve LLM's would never scale: its target of 1e9 ongoing
requests per replica becomes a target an LLM replica really reaches.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from llmgw.config.base import _Strict


class AutoscalingConfig(_Strict):
    min_replicas: int = Field(default=1, ge=0, le=256)
    max_replicas: int = Field(default=4, ge=1, le=256)
    # Replicas at start; defaults to min_replicas (0: the model starts scaled to zero).
    initial_replicas: int | None = Field(default=None, ge=0, le=256)
    # Requests each replica should hold (running + queued at its engine). An LLM engine
    # batches: well below its batch size, more replicas only add cost; past it, requests
    # queue. 8 sits under the embedded engine's (16) and vLLM's batch sizes.
    target_ongoing_requests: float = Field(default=8.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    # The 1 -> 0 step only; defaults to downscale_delay_s.
    downscale_to_zero_delay_s: float | None = Field(default=None, ge=0)
    # The window the ongoing requests are averaged over.
    look_back_period_s: float = Field(default=30.0, gt=0)
    upscaling_factor: float = Field(default=1.0, gt=0)
    downscaling_factor: float = Field(default=1.0, gt=0)
    # An LLM replica saturates on KV cache and queues in its engine before its request
    # count says so: sustained mean KV usage (0..1) or engine-queued requests per replica
    # at or above these ask for one replica more. null turns a trigger off.
    max_kv_usage: float | None = Field(default=0.9, gt=0, le=1)
    max_engine_queue: float | None = Field(default=4.0, gt=0)
    # Scale to zero: requests for a model with no ready replica wait (at most this many,
    # this long) while one starts; past either bound the client gets 503 + Retry-After.
    max_queued_requests: int = Field(default=256, ge=1)
    queue_timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas "
                             f"({self.max_replicas})")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas ({initial}) must lie within min_replicas "
                             f"and max_replicas ({self.min_replicas}..{self.max_replicas})")
        return self

    @property
    def start_replicas(self) -> int:
        return self.initial_replicas if self.initial_replicas is not None else self.min_replicas


class RolloutConfig(_Strict):
    """How replicas are replaced (a reload that changes engine settings) and removed
    (scale-down, reload): new ones start before old ones go, and a leaving replica stops
    taking requests but finishes the ones it holds."""

    # Replicas started beyond the wanted count during a rolling replacement.
    max_surge: int = Field(default=1, ge=1, le=64)
    # How long a leaving replica may take to finish its open requests and streams; past
    # it they are cut (the client sees an error) and the engine is stopped.
    drain_timeout_s: float = Field(default=120.0, ge=0)
