"""One pool's autoscaler: samples the pool every control tick, keeps the look-back window
and asks the pure decision (``autoscale.decide``) for the pool's target."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from llmgw.config.autoscaling import AutoscalingConfig
from llmgw.fleet.autoscale import LoadSample, ScaleDecision, ScaleState, decide
from llmgw.pool import Replica


def sample(at: float, replicas: Sequence[Replica], queued: int) -> LoadSample:
    """The pool's load now. Per replica the gateway's in-flight count, or the engine's
    running + waiting when larger (requests other gateways sent it); plus requests waiting
    at this gateway for a replica to exist (scale from zero)."""
    ongoing = float(queued)
    kv: list[float] = []
    waiting: list[float] = []
    for replica in replicas:
        stats = replica.stats
        engine = (stats.running or 0) + (stats.waiting or 0)
        ongoing += max(replica.in_flight, engine)
        if stats.kv_usage is not None:
            kv.append(stats.kv_usage)
        if stats.waiting is not None:
            waiting.append(stats.waiting)
    return LoadSample(at, ongoing, sum(kv) / len(kv) if kv else None,
                      sum(waiting) / len(waiting) if waiting else None)


class Autoscaler:
    def __init__(self, config: AutoscalingConfig, target: int, tick_s: float,
                 clock: Callable[[], float]) -> None:
        self.config, self.tick_s, self._clock = config, tick_s, clock
        self.state = ScaleState(target)
        self._window: deque[LoadSample] = deque()
        self.last: ScaleDecision | None = None
        self.last_change: ScaleDecision | None = None
        self.last_change_at: float | None = None

    def reconfigure(self, config: AutoscalingConfig) -> None:
        """New bounds and knobs (reload): the window and the target carry over, clamped."""
        self.config = config
        clamped = max(config.min_replicas, min(config.max_replicas, self.state.target))
        self.state = ScaleState(clamped)

    def step(self, load: LoadSample, running: int) -> ScaleDecision:
        self._window.append(load)
        horizon = load.at - self.config.look_back_period_s
        while self._window and self._window[0].at < horizon:
            self._window.popleft()
        decision = decide(self.config, self._window, running, self.state, self.tick_s)
        self.state, self.last = decision.state, decision
        if decision.direction != "none":
            self.last_change, self.last_change_at = decision, self._clock()
        return decision
