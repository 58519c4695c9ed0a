"""The autoscaling decision against Ray Serve's default policy (ray/serve/autoscaling_policy.py:
cold start, desired = ongoing / target, scaling factors, bounds, delay counted in control-loop
ticks), table by table, plus llmgw's KV-pressure and engine-queue triggers. Each expected
value is what Ray's rule gives for the same inputs (worked out in the ids)."""

from __future__ import annotations

from typing import Any

import pytest

from llmgw.config import AutoscalingConfig
from llmgw.fleet.autoscale import LoadSample, ScaleDecision, ScaleState, decide

TICK = 0.1  # Ray Serve's CONTROL_LOOP_INTERVAL_S


def cfg(**overrides: Any) -> AutoscalingConfig:
    base: dict[str, Any] = {"min_replicas": 1, "max_replicas": 10, "target_ongoing_requests": 2,
                            "upscale_delay_s": 0, "downscale_delay_s": 0,
                            "max_kv_usage": None, "max_engine_queue": None}
    return AutoscalingConfig(**{**base, **overrides})


def window(*ongoing: float, kv: float | None = None,
           waiting: float | None = None) -> list[LoadSample]:
    return [LoadSample(float(i), o, kv, waiting) for i, o in enumerate(ongoing)]


def once(config: AutoscalingConfig, samples: list[LoadSample], running: int,
         target: int) -> ScaleDecision:
    return decide(config, samples, running, ScaleState(target), TICK)


@pytest.mark.parametrize(("config", "samples", "running", "target", "expected"), [
    (cfg(min_replicas=0), window(1), 0, 0, (1, "up", "cold_start")),
    (cfg(min_replicas=0, upscaling_factor=2.5), window(1), 0, 0, (3, "up", "cold_start")),
    (cfg(min_replicas=0, upscale_delay_s=60), window(5), 0, 0, (1, "up", "cold_start")),
    (cfg(min_replicas=0), window(1), 0, 1, (1, "none", "cold_start")),
    (cfg(min_replicas=0), window(0), 0, 0, (0, "none", "idle")),
    (cfg(), window(8), 2, 2, (4, "up", "load")),
    (cfg(), window(0, 8, 4), 2, 2, (2, "none", "steady")),
    (cfg(), window(0, 16), 2, 2, (4, "up", "load")),
    (cfg(max_replicas=3), window(20), 2, 2, (3, "up", "load")),
    (cfg(upscaling_factor=0.5), window(16), 4, 4, (6, "up", "load")),
    (cfg(downscaling_factor=0.5), window(2), 4, 4, (3, "down", "load")),
    (cfg(downscaling_factor=0.1), window(4), 4, 4, (3, "down", "load")),
    (cfg(min_replicas=2), window(0), 4, 4, (2, "down", "idle")),
    (cfg(min_replicas=0), window(0), 3, 3, (1, "down", "idle")),
    (cfg(min_replicas=0), window(0), 1, 1, (0, "down", "idle")),
    (cfg(max_kv_usage=0.9), window(1, 1, kv=0.95), 2, 2, (3, "up", "kv_pressure")),
    (cfg(max_kv_usage=0.9), window(1, 1, kv=0.5), 2, 2, (1, "down", "load")),
    (cfg(max_engine_queue=2), window(1, waiting=3), 2, 2, (3, "up", "engine_queue")),
    (cfg(max_engine_queue=2, max_replicas=2), window(1, waiting=3), 2, 2,
     (2, "none", "steady")),
], ids=[
    "cold-start-1", "cold-start-factor-ceil(2.5)", "cold-start-ignores-delay",
    "cold-start-already-starting", "zero-idle-stays", "8/2=4", "window-mean-4/2=2",
    "window-mean-8/2=4", "bounded-by-max", "up-factor-ceil(4+0.5*(8-4))",
    "down-factor-ceil(4+0.5*(1-4))", "down-factor-stall-steps-1", "bounded-by-min",
    "down-floor-1-not-0", "last-one-to-zero", "kv-pressure-one-more", "kv-below-threshold",
    "engine-queue-one-more", "engine-queue-at-max",
])
def test_one_tick(config: AutoscalingConfig, samples: list[LoadSample], running: int,
                  target: int, expected: tuple[int, str, str]) -> None:
    decision = once(config, samples, running, target)
    assert (decision.state.target, decision.direction, decision.reason) == expected


def run(config: AutoscalingConfig, loads: list[float], running: int, target: int) -> list[int]:
    """The target after each tick while the load follows ``loads`` (one sample per tick,
    running replicas following the target as if they started at once)."""
    state, targets = ScaleState(target), []
    for tick, load in enumerate(loads):
        decision = decide(config, [LoadSample(tick * TICK, load)], running, state, TICK)
        state = decision.state
        running = state.target
        targets.append(state.target)
    return targets


@pytest.mark.parametrize(("config", "loads", "expected"), [
    # Ray: the count must exceed int(0.4 / 0.1) = 4: the 5th consecutive wish applies.
    (cfg(upscale_delay_s=0.4), [8] * 6, [2, 2, 2, 2, 4, 4]),
    # A tick without the wish resets the count: 3 more ticks past int(0.2 / 0.1) = 2.
    (cfg(upscale_delay_s=0.2, downscale_delay_s=0.2), [8, 8, 4, 8, 8, 8],
     [2, 2, 2, 2, 2, 4]),
    (cfg(downscale_delay_s=0.2), [0, 0, 0, 0], [2, 2, 1, 1]),
    # 1 -> 0 waits for downscale_to_zero_delay_s, not downscale_delay_s.
    (cfg(min_replicas=0, downscale_delay_s=0, downscale_to_zero_delay_s=0.2), [0, 0, 0, 0],
     [1, 1, 0, 0]),
    # Without it, 1 -> 0 waits for downscale_delay_s.
    (cfg(min_replicas=0, downscale_delay_s=0.1), [0, 0, 0], [1, 0, 0]),
    # Ray counts ticks with int(delay / tick): 0.3 / 0.1 is 2.999..., so 3 ticks, not 4.
    (cfg(upscale_delay_s=0.3), [8] * 4, [2, 2, 4, 4]),
], ids=["upscale-delay", "reversal-resets", "downscale-delay", "to-zero-delay",
        "to-zero-default-delay", "float-ticks-as-ray"])
def test_delays_count_ticks_like_ray(config: AutoscalingConfig, loads: list[float],
                                    expected: list[int]) -> None:
    start = 1 if config.min_replicas == 0 else 2
    assert run(config, loads, start, start) == expected


def test_wish_waiting_out_its_delay_is_reported() -> None:
    decision = once(cfg(upscale_delay_s=10), window(8), 2, 2)
    assert (decision.state, decision.wanted, decision.direction, decision.reason) == \
        (ScaleState(2, 1), 4, "none", "load")


@pytest.mark.parametrize(("fields", "message"), [
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) is above max_replicas (2)"),
    ({"initial_replicas": 9}, "initial_replicas (9) must lie within"),
    ({"target_ongoing_requests": 0}, "greater than 0"),
])
def test_bad_bounds_are_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AutoscalingConfig(**fields)
