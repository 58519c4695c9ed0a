"""The autoscaling decision: a pure function from a window of load samples to a number of
replicas, with Ray Serve's knobs and meaning so its users map 1:1.

Ray Serve's default policy (``ray/serve/autoscaling_policy.py``), step by step:

1. Cold start: with no running replica, any queued request asks for
   ``max(ceil(upscaling_factor), target)`` replicas at once, with no delay.
2. Desired = total ongoing requests (mean over ``look_back_period_s``) / target per replica.
3. Scaling factors: ``ceil(current + factor * (desired - current))``; a downscale that the
   factor would stall still steps down by one.
4. Bounds: clamped to ``[min_replicas, max_replicas]``.
5. Delay: a change is applied only once the wish has pointed the same way for more than
   ``delay / tick`` consecutive control-loop ticks; a reversal resets the count. Below one
   replica only the 1 -> 0 step exists, with ``downscale_to_zero_delay_s``.

llmgw adds what an LLM replica needs: it saturates on KV cache and on its engine's queue
before the request count says so, so sustained KV pressure or queueing (window means)
also asks for one replica more than are running (configurable, off with ``null``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llmgw.config.autoscaling import AutoscalingConfig

Direction = Literal["up", "down", "none"]


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One tick's view of a pool. ``ongoing`` sums, over its ready replicas, the requests
    each holds (gateway in-flight, or the engine's running + waiting when that is larger:
    other gateways' requests), plus requests waiting at the gateway for a replica."""

    at: float
    ongoing: float
    kv_usage: float | None = None  # mean over ready replicas that report it, 0..1
    engine_waiting: float | None = None  # mean engine-queued requests per ready replica


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What the decision carries from tick to tick: the replicas decided last, and how many
    consecutive ticks wished for more (> 0) or fewer (< 0)."""

    target: int
    counter: int = 0


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    state: ScaleState  # the new target and counter
    wanted: int  # the wish after factors and bounds, before the delay
    direction: Direction  # of the applied change; "none" while a wish waits out its delay
    reason: str  # cold_start | load | kv_pressure | engine_queue | idle | steady


def decide(cfg: AutoscalingConfig, window: Sequence[LoadSample], running: int,
           state: ScaleState, tick_s: float) -> ScaleDecision:
    """The replicas a pool should have after this tick. ``window`` holds the samples of
    the last ``look_back_period_s`` (oldest first); ``running`` counts ready replicas."""
    ongoing = _mean([s.ongoing for s in window]) or 0.0
    if running == 0:  # Ray's cold-start fast path: no delay, no factors
        if ongoing > 0:
            target = max(math.ceil(cfg.upscaling_factor), state.target)
            return _applied(state, target, "cold_start")
        return ScaleDecision(state, state.target, "none", "idle")
    wished, reason = _wish(cfg, window, running, ongoing)
    wanted = max(cfg.min_replicas, min(cfg.max_replicas, _scaled(cfg, wished, running)))
    return _delayed(cfg, state, wanted, reason, tick_s)


def _wish(cfg: AutoscalingConfig, window: Sequence[LoadSample], running: int,
          ongoing: float) -> tuple[float, str]:
    """Replicas the load asks for (fractional), and why."""
    wished = ongoing / cfg.target_ongoing_requests
    reason = "load" if ongoing else "idle"
    kv = _mean([s.kv_usage for s in window if s.kv_usage is not None])
    if cfg.max_kv_usage is not None and kv is not None and kv >= cfg.max_kv_usage \
            and wished < running + 1:
        wished, reason = running + 1, "kv_pressure"
    queued = _mean([s.engine_waiting for s in window if s.engine_waiting is not None])
    if cfg.max_engine_queue is not None and queued is not None \
            and queued >= cfg.max_engine_queue and wished < running + 1:
        wished, reason = running + 1, "engine_queue"
    return wished, reason


def _scaled(cfg: AutoscalingConfig, wished: float, running: int) -> int:
    delta = wished - running
    factor = cfg.upscaling_factor if delta > 0 else cfg.downscaling_factor
    scaled = math.ceil(running + factor * delta)
    if math.ceil(wished) < running and scaled == running:  # a factor must not stall it
        scaled -= 1
    return scaled


def _delayed(cfg: AutoscalingConfig, state: ScaleState, wanted: int, reason: str,
             tick_s: float) -> ScaleDecision:
    if wanted > state.target:
        counter = max(state.counter, 0) + 1
        if counter > int(cfg.upscale_delay_s / tick_s):
            return _applied(state, wanted, reason)
    elif wanted < state.target:
        counter = min(state.counter, 0) - 1
        to_zero = state.target == 1
        delay = cfg.downscale_delay_s
        if to_zero and cfg.downscale_to_zero_delay_s is not None:
            delay = cfg.downscale_to_zero_delay_s
        if not to_zero:
            wanted = max(1, wanted)  # only the last replica may go, and only alone
        if counter < -int(delay / tick_s):
            return _applied(state, wanted, reason)
    else:
        counter = 0
    return ScaleDecision(ScaleState(state.target, counter), wanted, "none",
                         reason if wanted != state.target else "steady")


def _applied(state: ScaleState, target: int, reason: str) -> ScaleDecision:
    direction: Direction = "up" if target > state.target else \
        "down" if target < state.target else "none"
    return ScaleDecision(ScaleState(target, 0), target, direction, reason)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
